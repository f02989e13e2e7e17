"""What the subcommands show on stderr besides their results: progress bars and library chatter.

``--quiet`` turns off adapterkit's own bars and lines and silences the libraries below it:
transformers' loading bars ("Loading weights") and its warnings. In a distributed run the
processes other than rank 0 are always silenced that way and their Python warnings are dropped,
since they repeat rank 0's word for word; with ``--quiet`` the processes a run launches also keep
torch's C++ warnings to themselves (DDP's reducer warns from every rank). Bars are shown only on a
terminal (not in a log file). Python warnings raised while a subcommand runs are shown as one line
each (:func:`one_line_warnings`), not with the file, line number and source line of their origin.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings


def quiet_libraries(quiet: bool) -> None:
    """Silence transformers' bars and warnings when ``quiet`` or on a non-main rank; on a non-main
    rank drop Python warnings too. Process-wide (a command line runs once per process)."""
    from ..distributed import is_main_process

    main = is_main_process()
    if quiet or not main:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
    if not main:
        warnings.simplefilter("ignore")


def show_progress(quiet: bool) -> bool:
    """Whether to draw progress bars: not ``quiet`` and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


def quiet_children(quiet: bool) -> None:
    """Before launching worker processes: with ``quiet``, torch's C++ warnings off in them
    (``TORCH_CPP_LOG_LEVEL=ERROR``, read when torch starts; a value the user set is kept)."""
    if quiet:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")


@contextlib.contextmanager
def one_line_warnings(command: str):
    """While the body runs, Python shows each warning as ``adapterkit COMMAND: warning: MESSAGE``
    (through ``warnings.formatwarning``: warnings recorded by a caller stay recorded)."""

    def one_line(message, category, filename, lineno, line=None) -> str:
        return f"adapterkit {command}: warning: {' '.join(str(message).split())}\n"

    before, warnings.formatwarning = warnings.formatwarning, one_line
    try:
        yield
    finally:
        warnings.formatwarning = before
