"""``adapterkit report``: compare finished runs from their ``results.json`` files."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="compare finished runs", description="Table (and plot) of runs' results.json files."
    )
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of `adapterkit train` (or results.json files)")
    parser.add_argument("--style", choices=("markdown", "plain"), default="markdown")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also save test score vs trainable share as a PNG")
    parser.add_argument("--domains", action="store_true",
                        help="also the multi-domain table: methods x tasks, parameters per domain, storage for all "
                        "domains and the Decathlon score (Rebuffi et al. 2017) against --baseline")
    parser.add_argument("--baseline", default="full", help="the method the Decathlon score is relative to (default: full)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training import TrainingResult, format_table, plot_results

    results = [TrainingResult.load(path) for path in args.runs]
    print(format_table(results, args.style))
    if args.domains:
        from ..training.decathlon import domains_table

        print("\n" + domains_table(results, args.baseline))
    if args.plot:
        print(f"\nplot: {plot_results(results, args.plot)}")
    return 0
