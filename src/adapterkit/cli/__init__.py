"""The ``adapterkit`` command line: ``train``, ``fuse``, ``eval``, ``predict``, ``generate``, ``convert``, ``serve``,
``methods``, ``tasks``, ``models``, ``report``.

Each subcommand is one module with ``register(subparsers)`` and ``run(args)``. Mistakes a user
can fix (a bad option, a missing file, an unknown task, a task's data package not installed) reach
the library as ``ValueError``, ``FileNotFoundError`` or ``ModuleNotFoundError`` with a message that
says what to do, and file-system errors (``OSError``: a folder that cannot be written, a full disk)
name their path; here they become one line on stderr and exit status 2, like argparse's own usage
errors, instead of a traceback. A ``ParameterError`` names the library's parameters: here it names
the command's flags instead (``--text-column``, not ``text_columns=``). Output piped into a reader that
stops early (``adapterkit methods | head``) ends quietly with status 141. Set ``ADAPTERKIT_DEBUG=1`` to get the traceback anyway.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..bundled_models import ModelInstallError
from ..errors import ParameterError
from .console import one_line_warnings
from .parsing import CliParser, flag_names
from .paths import describe_os_error
from .run_config import apply_run_config


def package_version() -> str:
    """The installed distribution's version, or the package's own ``__version__`` when run from
    a source tree that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("adapterkit")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(prog="adapterkit", description="Train, evaluate and use adapters on Hugging Face transformers.")
    parser.add_argument("--version", action="version", version=f"adapterkit {package_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CliParser)
    # imported here: `import adapterkit.cli` (and `python -m adapterkit.cli.describe`) loads no subcommand
    from . import convert, evaluate, fuse, generate, methods, models, predict, report, serve, tasks, train

    for module in (train, fuse, evaluate, predict, generate, convert, serve, methods, tasks, models, report):
        module.register(subparsers)
    for subparser in subparsers.choices.values():  # errors name this command's flags
        subparser.set_defaults(_flags=flag_names(subparser))
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
        with one_line_warnings(args.command):
            return args.func(args)
    except BrokenPipeError:  # `adapterkit methods | head`: the reader has what it wanted
        return reader_gone()
    except (ValueError, OSError, ModelInstallError, ModuleNotFoundError) as error:
        if os.environ.get("ADAPTERKIT_DEBUG"):
            raise
        if isinstance(error, ParameterError):
            spelt = error.spell(args._flags)
        else:
            spelt = describe_os_error(error) if isinstance(error, OSError) else str(error)
        message = " ".join(spelt.split())
        print(f"adapterkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adapterkit {args.command}: interrupted", file=sys.stderr)
        return 130


def reader_gone() -> int:
    """The exit status when stdout's reader closed the pipe (141, as if killed by SIGPIPE), with
    stdout pointed at the null device so that flushing it at exit does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (a test's StringIO)
        pass
    return 141


__all__ = ["build_parser", "main"]
