"""Per-epoch checkpoints: everything needed to continue a run exactly where it stopped.

``output_dir/checkpoint/`` holds

* ``adapter/``: the adapter being trained, in the ordinary adapter format (``save_adapter``);
* ``optimizer.{safetensors,json}``, ``scheduler.{safetensors,json}``, ``rng.{safetensors,json}``:
  their state trees (see :mod:`adapterkit.training.state`; no pickle anywhere);
* ``trainer_state.json``: epochs completed, optimizer steps, best validation score and epoch,
  the patience counter, the per-epoch history, time and memory so far, and the config.

The folder is written with :func:`adapterkit.atomic.atomic_directory`, so a run killed while
saving leaves the previous complete checkpoint in place, never a mixture of two epochs.
"""

from __future__ import annotations

import dataclasses
import json
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

    ``epoch`` counts completed epochs, so a resumed run starts with epoch index ``epoch``.
    ``bad_evaluations`` is the patience counter (validations in a row without improvement).
    """

    epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
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
) -> tuple[Progress, dict[str, Any]]:
    """Restore adapter weights, optimizer, scheduler and RNG states; return (progress, saved config).

    Restores the random generators too, so call it right before the training loop continues.
    """
    state = read_checkpoint_state(directory)
    restore_adapter_weights(model, name, directory / "adapter")
    optimizer.load_state_dict(load_tree(directory, "optimizer"))
    scheduler.load_state_dict(load_tree(directory, "scheduler"))
    restore_rng_state(load_tree(directory, "rng"))
    return Progress(**state["progress"]), state["config"]
