"""Class weights for imbalanced classification: the weight vector and the weighted loss.

``"balanced"`` gives class ``c`` the weight ``n / (k * count_c)`` over the ``n`` training
examples of ``k`` classes (scikit-learn's ``compute_class_weight("balanced")``): every class
then carries the same total weight in an epoch. A class without training examples gets 0 (no
example of it is ever weighted). The weighted cross-entropy is the weighted mean over the batch,
as ``torch.nn.functional.cross_entropy(weight=...)`` computes it, but 0 rather than NaN for a
batch whose labels all weigh 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional

from ..data.task import CLASSIFICATION, TaskData
from ..errors import ParameterError


def task_class_weights(spec: str | Sequence[float] | None, task: TaskData) -> torch.Tensor | None:
    """The class weights ``spec`` names for ``task`` (None: unweighted), from its training split.

    Raises:
        ValueError: weights for a task that is not classification, or a list whose length is
            not its number of labels.
    """
    if spec is None:
        return None
    if task.kind != CLASSIFICATION:
        raise ParameterError(
            "{class_weights} weight a classification loss, but task {name!r} is {kind}", name=task.name, kind=task.kind
        )
    return class_weight_vector(spec, [e.label for e in task.train], task.label_names)


def class_weight_vector(spec: str | Sequence[float], labels: Sequence[int], label_names: Sequence[str]) -> torch.Tensor:
    """The weights ``spec`` names for a task with ``label_names`` whose training labels are ``labels``.

    Raises:
        ValueError: an explicit list whose length is not the number of labels.
    """
    k = len(label_names)
    if spec == "balanced":
        counts = torch.bincount(torch.tensor(list(labels), dtype=torch.long), minlength=k).double()
        weights = torch.where(counts > 0, len(labels) / (k * counts.clamp(min=1)), torch.zeros_like(counts))
        return weights.float()
    if len(spec) != k:
        raise ParameterError(
            "{class_weights} has {n} weight(s), but the task has {k} labels {names}; give one per label, "
            "in that order (or 'balanced')", n=len(spec), k=k, names=list(label_names),
        )
    return torch.tensor([float(w) for w in spec])


def reweighted_loss(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``loss`` (a model's: its cross-entropy plus any regulariser, such as a fusion's) with the
    cross-entropy of ``logits (B, C)`` against ``labels (B,)`` replaced by the class-weighted one."""
    logits, labels = logits.float(), labels.reshape(-1).long()
    each = functional.cross_entropy(logits, labels, reduction="none")
    weight = weights.to(logits.device)[labels]
    weighted = (each * weight).sum() / weight.sum().clamp(min=torch.finfo(torch.float32).tiny)
    return loss - each.mean() + weighted
