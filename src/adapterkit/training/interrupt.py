"""Ctrl-C during training: finish the optimizer step, checkpoint it, then stop.

:class:`StopRequest` replaces the SIGINT handler while a single-process run trains: the first
Ctrl-C only sets :attr:`StopRequest.requested`, which the loop reads after each optimizer step,
writes the checkpoint and raises :class:`TrainingInterrupted`; a second Ctrl-C interrupts at once
(``KeyboardInterrupt``, the last checkpoint on disk stays the one to resume from). Distributed runs
keep the default handler: the processes would not all see the request at the same step, and one
stopping while the others wait for it in a collective would hang the run.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from .checkpoint import STATE_FILE, read_checkpoint_state


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C. ``checkpoint``: the folder to resume from (None: none was
    written); ``epoch`` (1-based) and ``step`` (optimizer steps) it holds; ``message`` says so."""

    def __init__(self, message: str, checkpoint: Path | None, epoch: int | None, step: int | None):
        super().__init__(message)
        self.message, self.checkpoint, self.epoch, self.step = message, checkpoint, epoch, step


class StopRequest:
    """A context manager; while active (and ``enabled``, on the main thread) a first Ctrl-C sets
    :attr:`requested` instead of raising."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("interrupted: stopping after this optimizer step to write a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)


def position(epoch: int, batches: int, step: int, per_epoch: int | None = None) -> str:
    """Where a run stands, in words, from its completed ``epoch``s, the ``batches`` used of the
    next one and its optimizer ``step``: ``step 12 (end of epoch 2)``, ``step 14 (epoch 3,
    batch 4 of 20)``."""
    if not batches:
        return f"step {step} (end of epoch {epoch})" if epoch else f"step {step} (start)"
    return f"step {step} (epoch {epoch + 1}, batch {batches}" + (f" of {per_epoch})" if per_epoch else ")")


def interrupted_without_checkpoint(checkpoint: Path | None) -> TrainingInterrupted:
    """The :class:`TrainingInterrupted` of a run stopped at once (a second Ctrl-C, or several
    processes): it names the checkpoint already on disk, if any."""
    if checkpoint is None or not (checkpoint / STATE_FILE).is_file():
        return TrainingInterrupted("stopped before any checkpoint was written", None, None, None)
    saved = read_checkpoint_state(checkpoint)["progress"]
    epoch, batches, step = saved["epoch"], saved.get("batches_in_epoch", 0), saved["global_step"]
    return TrainingInterrupted(
        f"stopped; the checkpoint in {checkpoint} holds {position(epoch, batches, step)}",
        checkpoint, epoch + (1 if batches else 0), step,
    )
