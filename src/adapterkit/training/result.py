"""``TrainingResult``: what a run produced, in the form reports and comparisons consume.

It is written as ``results.json`` next to the best adapter, so a comparison across methods can be
rebuilt from the run folders alone (``adapterkit report runs/*``) without re-running anything.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..data.task import CLASSIFICATION, TaskData
from ..inference.metrics import MAIN_METRIC


@dataclass
class TrainingResult:
    """Args:
        adapter: the adapter's name; method: its method; model: the base model's name or path.
        task: the task's name; kind: classification or regression.
        test_metrics: metrics on the test split, computed with the best adapter.
        validation_metrics: the best validation metrics (those that selected the adapter).
        trainable_params: parameters the adapter trains (its head included).
        saved_params: parameters of the saved best adapter (head included); fewer than
            ``trainable_params`` when a training-only reparameterisation was folded away (a
            prefix's MLP). None in results written before this field existed.
        majority_accuracy: the test accuracy of always answering the test split's most frequent
            label (the floor a classifier must beat); None for other kinds and older results.
        base_params: parameters of the base model.
        train_time_s: wall-clock time of the training epochs, summed over resumed sessions
            (validation included; checkpoint writing and the test evaluation not).
        peak_memory_bytes: see :mod:`adapterkit.training.memory`; memory_measure says which kind.
        epochs_run: epochs trained; best_epoch: the epoch of the best validation score.
        stopped_early: whether patience ran out before ``epochs``.
        learning_rate: the peak learning rate used.
        output_dir: where the best adapter (``best/``) and checkpoint live (None: not kept).
        history: one record per epoch (train loss, learning rate, validation metrics).
        config: the TrainingConfig as a dict; method_config: the adapter's options.
    """

    adapter: str
    method: str
    model: str | None
    task: str
    kind: str
    test_metrics: dict[str, float]
    validation_metrics: dict[str, float]
    trainable_params: int
    base_params: int
    train_time_s: float
    peak_memory_bytes: int
    memory_measure: str
    epochs_run: int
    best_epoch: int | None
    stopped_early: bool
    learning_rate: float
    saved_params: int | None = None
    majority_accuracy: float | None = None
    output_dir: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    method_config: dict[str, Any] = field(default_factory=dict)

    @property
    def trainable_share(self) -> float:
        """Trained parameters as a fraction of the base model's."""
        return self.trainable_params / self.base_params if self.base_params else 0.0

    @property
    def saved_share(self) -> float:
        """Saved parameters (trained ones where not recorded) as a fraction of the base model's."""
        saved = self.trainable_params if self.saved_params is None else self.saved_params
        return saved / self.base_params if self.base_params else 0.0

    @property
    def main_metric(self) -> str:
        """The metric that selected the best adapter (``TrainingConfig.metric``, else the kind's)."""
        return self.config.get("metric") or MAIN_METRIC[self.kind]

    @property
    def main_test_score(self) -> float:
        return self.test_metrics[self.main_metric]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "trainable_share": self.trainable_share, "saved_share": self.saved_share}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingResult:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> TrainingResult:
        path = Path(path)
        if path.suffix != ".json":  # a run's output folder
            path = path / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is this the output folder of a finished training run?")
        return cls.from_dict(json.loads(path.read_text()))


def majority_accuracy(task: TaskData) -> float | None:
    """The accuracy of always answering the most frequent label of ``task``'s test split (for a
    classification task with a test split; else None)."""
    if task.kind != CLASSIFICATION or not task.test:
        return None
    return max(Counter(example.label for example in task.test).values()) / len(task.test)
