"""The ``adapterkit`` command line: ``train``, ``fuse``, ``eval``, ``predict``, ``convert``, ``serve``, ``methods``, ``tasks``, ``report``.

Each subcommand is one module with ``register(subparsers)`` and ``run(args)``. Mistakes a user
can fix (a bad option, a missing file, an unknown task, a task's data package not installed) reach
the library as ``ValueError``, ``FileNotFoundError`` or ``ModuleNotFoundError`` with a message that
says what to do; here they become one line on stderr and exit status 2, like argparse's own usage
errors, instead of a traceback. Set ``ADAPTERKIT_DEBUG=1`` to get the traceback anyway.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..bundled_models import ModelInstallError
from . import convert, evaluate, fuse, methods, predict, report, serve, tasks, train
from .run_config import apply_run_config

_SUBCOMMANDS = (train, fuse, evaluate, predict, convert, serve, methods, tasks, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adapterkit", description="Train, evaluate and use adapters on Hugging Face transformers."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 usage or input error)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if apply_run_config(build_parser, parser, argv) is not None:  # `train --config FILE`: its values become defaults
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2): argparse already printed
        return exit_.code if isinstance(exit_.code, int) else 0
    args.argv = argv  # `train --nproc N` relaunches itself with it
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ModelInstallError, ModuleNotFoundError) as error:
        if os.environ.get("ADAPTERKIT_DEBUG"):
            raise
        message = " ".join(str(error).split())
        print(f"adapterkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adapterkit {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
