"""The in-memory form of a dataset: what every loader returns and every trainer consumes.

Keeping one small, plain structure (texts plus an int or float label) lets the training code stay
independent of where the data came from: a bundled corpus or a user's CSV/JSONL files.
"""

from __future__ import annotations

from dataclasses import dataclass

CLASSIFICATION = "classification"
REGRESSION = "regression"
KINDS = (CLASSIFICATION, REGRESSION)

#: How many labels :meth:`TaskData.describe` spells out before it only gives the count.
_LABELS_SHOWN = 6


@dataclass(frozen=True)
class Example:
    """One input: one text, or two for pair tasks, and its label.

    The label is a class id (an index into :attr:`TaskData.label_names`) for classification and
    a float score for regression.
    """

    texts: tuple[str, ...]
    label: int | float


@dataclass(frozen=True)
class TaskData:
    """A task with fixed train/validation/test splits.

    Frozen so a task cannot be relabelled by accident after loading; the split lists themselves
    are plain lists so trainers can index and slice them cheaply.
    """

    name: str
    kind: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    train: list[Example]
    validation: list[Example]
    test: list[Example]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if not 1 <= len(self.text_columns) <= 2:
            raise ValueError(
                f"task {self.name!r}: a task has one text column or a pair, "
                f"got {len(self.text_columns)}: {self.text_columns}"
            )
        if (self.kind == CLASSIFICATION) != bool(self.label_names):
            raise ValueError(
                f"task {self.name!r}: classification needs label names and regression must have "
                f"none; got kind={self.kind!r} with label_names={self.label_names}"
            )

    @property
    def num_labels(self) -> int:
        """Output size of the prediction head: the number of classes, or 1 for regression."""
        return len(self.label_names) if self.kind == CLASSIFICATION else 1

    def describe(self) -> str:
        """A one-line summary for logs and reports."""
        if self.kind == REGRESSION:
            target = "regression"
        elif len(self.label_names) <= _LABELS_SHOWN:
            target = f"{self.num_labels}-way classification ({', '.join(self.label_names)})"
        else:
            target = f"{self.num_labels}-way classification"
        texts = " + ".join(self.text_columns)
        return (
            f"{self.name}: {target} from {texts}; train/validation/test = "
            f"{len(self.train)}/{len(self.validation)}/{len(self.test)}"
        )
