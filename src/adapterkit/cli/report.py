"""``adapterkit report``: compare finished runs from their ``results.json`` files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """Table (and plot) of runs' results.json files, one row per run with the run's folder
name. A run folder brings the runs one level down with it (the pruned fusion `fuse --prune` saves in
OUTPUT_DIR/pruned); unfinished or crashed runs (no readable results.json) are skipped with a note on
stderr. --format csv or json prints the table's values as records instead."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="compare finished runs", description=DESCRIPTION)
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of `adapterkit train` (or results.json files)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="table (default; see --style), or the values as csv or json records on stdout")
    parser.add_argument("--style", choices=("markdown", "plain"), default="markdown", help="the table's style")
    parser.add_argument("--plot", type=Path, metavar="FILE",
                        help="also save test score vs saved share of the base model, under exactly this name (the format "
                        "its suffix names: .png, .pdf, .svg ...; PNG without one), one panel per task")
    parser.add_argument("--domains", action="store_true",
                        help="also the multi-domain table: methods x tasks, parameters per domain, storage for all "
                        "domains and the Decathlon score (Rebuffi et al. 2017) against --baseline")
    parser.add_argument("--baseline", default="full", help="the method the Decathlon score is relative to (default: full)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.report import format_records, format_table, result_records
    from ..training.report_plot import check_plot_path, plot_format, plot_results
    from ..training.runs import load_runs

    if args.domains and args.format != "table":
        raise ValueError("--domains prints a markdown table: use it with --format table (the default)")
    if args.plot:
        check_plot_path(args.plot)  # before reading anything
    runs, notes = load_runs(args.runs)
    for note in notes:
        print(f"adapterkit report: {note}", file=sys.stderr)
    if not runs:
        raise ValueError("no finished run to report among the paths given (see the notes above)")
    results, names = [r.result for r in runs], [r.name for r in runs]
    if args.format == "table":
        print(format_table(results, args.style, names))
    else:
        print(format_records(result_records(results, names), args.format))
    if args.domains:
        from ..training.decathlon import domains_table

        print("\n" + domains_table(results, args.baseline))
    if args.plot:
        written = plot_results(results, args.plot)
        line = f"plot ({plot_format(written).upper()}): {written}"
        if args.format == "table":
            print("\n" + line)
        else:  # stdout holds only the records
            print(f"adapterkit report: {line}", file=sys.stderr)
    return 0
