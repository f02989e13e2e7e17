"""Checkpoints: everything needed to continue a run exactly where it stopped.

Written after every epoch, every ``save_steps`` optimizer steps, and when Ctrl-C stops a run
(``interrupt.py``); a checkpoint taken mid-epoch records how many batches of the epoch were used,
so the resumed run skips them (the shuffle order is a function of seed and epoch) and continues
with the random generators as they were at that step.

``output_dir/checkpoint/`` holds

* ``adapter/``: the adapter being trained, in the ordinary adapter format (``save_adapter``);
* ``optimizer.{safetensors,json}``, ``scheduler.{safetensors,json}``, ``rng.{safetensors,json}``:
  their state trees (see :mod:`adapterkit.training.state`; no pickle anywhere);
* ``trainer_state.json``: epochs completed, batches used of the current one, optimizer steps
  (and the run's planned total), best validation score, epoch and step, the patience counter,
  the per-epoch history, time and memory so far, and the config.

The folder is written with :func:`adapterkit.atomic.atomic_directory`, so a run killed while
saving leaves the previous complete checkpoint in place, never a mixture of two epochs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_directory
from ..formats.native import read_adapter_config, read_adapter_weights, read_format_json
from .rng import capture_rng_state, restore_rng_state
from .state import load_tree, save_tree

if TYPE_CHECKING:
    from ..model import AdapterModel

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
RESULTS_FILE = "results.json"
STATE_FILE = "trainer_state.json"
FORMAT = "adapterkit.checkpoint/1"


@dataclass
class Progress:
    """The trainer's counters: what a checkpoint restores besides weights and optimizer.

    ``epoch`` counts completed epochs, so a resumed run starts with epoch index ``epoch``, after
    its first ``batches_in_epoch`` batches (whose summed training loss is ``epoch_loss_sum``).
    ``global_step`` counts optimizer steps, of ``planned_steps`` in the run. ``bad_evaluations``
    is the patience counter (validations in a row without improvement). ``best_epoch`` (1-based)
    and ``best_step`` locate the best validation, whose metrics are ``best_validation``.
    """

    epoch: int = 0
    global_step: int = 0
    batches_in_epoch: int = 0
    epoch_loss_sum: float = 0.0
    planned_steps: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    best_validation: dict[str, float] = field(default_factory=dict)
    bad_evaluations: int = 0
    stopped_early: bool = False
    train_time_s: float = 0.0
    peak_memory_bytes: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def json_form(data: Any) -> Any:
    """As it reads back from JSON (tuples become lists), for comparing configs."""
    return json.loads(json.dumps(data))


def restore_adapter_weights(model: AdapterModel, name: str, directory: str | Path) -> None:
    """Copy the weights saved in ``directory`` into the existing adapter ``name`` of ``model``.

    Unlike :meth:`AdapterModel.load_adapter` this adds nothing: the live parameters (which an
    optimizer and a DDP wrapper already refer to) keep their identity and get new values. The
    saved adapter must be of the same base model and have the same method and head configs.
    """
    directory = Path(directory)
    meta = read_adapter_config(directory)
    model.check_base(meta["base_model"], directory)
    current_head = model.heads[name].config.to_dict() if name in model.heads else None
    for what, saved, current in (
        ("method config", meta["config"], model.adapters[name].config.to_dict()),
        ("head", meta["head"], current_head),
    ):
        if json_form(saved) != json_form(current):
            raise ValueError(
                f"{directory} holds an adapter with {what} {saved}, but adapter {name!r} has {current}; "
                "resume with the same method, options and head, or start a fresh output directory"
            )
    model.load_adapter_state(name, read_adapter_weights(directory), directory)


def save_checkpoint(
    directory: Path,
    model: AdapterModel,
    name: str,
    optimizer: Any,
    scheduler: Any,
    progress: Progress,
    config: dict[str, Any],
) -> None:
    """Write the checkpoint atomically (call on the main process only)."""
    with atomic_directory(directory) as tmp:
        model.save_adapter(name, tmp / "adapter")
        save_tree(optimizer.state_dict(), tmp, "optimizer")
        save_tree(scheduler.state_dict(), tmp, "scheduler")
        save_tree(capture_rng_state(), tmp, "rng")
        state = {"format": FORMAT, "progress": dataclasses.asdict(progress), "config": config}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")


def read_checkpoint_state(directory: Path) -> dict[str, Any]:
    return read_format_json(directory, STATE_FILE, FORMAT, "a training checkpoint")


def load_checkpoint(
    directory: Path, model: AdapterModel, name: str, optimizer: Any, scheduler: Any
) -> tuple[Progress, dict[str, Any], Callable[[], None]]:
    """Restore adapter weights, optimizer and scheduler states.

    Returns (progress, saved config, restore_rng): call ``restore_rng()`` where the checkpoint
    was taken: at an epoch boundary before the next epoch's data iterator is made (making one
    draws from torch's generator), mid-epoch after the new iterator has skipped the used batches.
    """
    state = read_checkpoint_state(directory)
    restore_adapter_weights(model, name, directory / "adapter")
    optimizer.load_state_dict(load_tree(directory, "optimizer"))
    scheduler.load_state_dict(load_tree(directory, "scheduler"))
    rng = load_tree(directory, "rng")
    return Progress(**state["progress"]), state["config"], lambda: restore_rng_state(rng)
