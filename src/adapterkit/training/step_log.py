"""The per-step log of a run: ``output_dir/log.jsonl`` and, optionally, TensorBoard event files.

Every optimizer step appends one JSON object to ``log.jsonl`` and flushes it (a killed run keeps
the lines it finished, but for one cut short, which :func:`read_log` skips): ``step`` (optimizer steps so far), ``epoch`` (1-based), ``loss``
(the step's mean training loss, over its accumulated batches and all processes),
``learning_rate`` (the rate the step used) and, on a step that validated, ``validation`` (the
metrics) and ``best`` (whether it improved the selection metric). A resumed run first drops the
lines past its checkpoint's step (the interrupted run wrote them, the resumed one writes them
again), so the log reads as one uninterrupted run.

With a ``tensorboard_dir`` the same figures go to ``torch.utils.tensorboard.SummaryWriter``
(``train/loss``, ``train/learning_rate``, ``validation/<metric>``, by step); it resumes with
``purge_step`` so TensorBoard hides the events past the checkpoint too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOG_FILE = "log.jsonl"


class StepLog:
    """Append step records to ``path`` (and TensorBoard under ``tensorboard_dir``).

    ``resume_step`` None starts a new log; an int keeps the records up to that step.

    Raises:
        ModuleNotFoundError: a ``tensorboard_dir`` without the ``tensorboard`` package (the
            message names the install command).
    """

    def __init__(self, path: Path, tensorboard_dir: str | None = None, resume_step: int | None = None):
        self._writer = None
        if tensorboard_dir is not None:
            self._writer = _summary_writer(tensorboard_dir, None if resume_step is None else resume_step + 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = _records_up_to(path, resume_step) if resume_step is not None else []
        with path.open("w", encoding="utf-8") as stream:  # a whole rewrite: the log is small next to a run
            stream.writelines(line + "\n" for line in kept)
        self._stream = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append one step's record (keys as the module says) and flush it to disk."""
        self._stream.write(json.dumps(record, sort_keys=True) + "\n")
        self._stream.flush()
        if self._writer is not None:
            step = record["step"]
            self._writer.add_scalar("train/loss", record["loss"], step)
            self._writer.add_scalar("train/learning_rate", record["learning_rate"], step)
            for name, value in record.get("validation", {}).items():
                self._writer.add_scalar(f"validation/{name}", value, step)
            self._writer.flush()

    def close(self) -> None:
        self._stream.close()
        if self._writer is not None:
            self._writer.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (a last line cut off by a crash is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _records_up_to(path: Path, step: int) -> list[str]:
    return [json.dumps(r, sort_keys=True) for r in read_log(path) if r.get("step", 0) <= step]


def _summary_writer(directory: str, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "TensorBoard logging needs the tensorboard package: pip install 'adapterkit[tensorboard]' "
            "(or pip install tensorboard)"
        ) from error
    return SummaryWriter(log_dir=directory, purge_step=purge_step)
