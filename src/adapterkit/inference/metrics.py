"""Evaluation metrics in plain numpy (scikit-learn is not a dependency).

Classification reports accuracy and macro-F1: accuracy is the headline number of the papers
compared against, macro-F1 exposes a model that ignores a small class (on a 90/10 split,
always answering the majority class scores 0.90 accuracy but about 0.47 macro-F1). Regression
reports Pearson's r (the STS-B convention, invariant to the scale of the predictions) and the
mean squared error. :func:`class_report` adds per-class precision, recall and F1 with the
confusion matrix (``adapterkit eval`` prints it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.task import REGRESSION
from ..spelling import did_you_mean

#: The metric early stopping and model selection optimise, per task kind (causal-LM tasks:
#: held-out perplexity, ``inference/perplexity.py``, which is minimised).
MAIN_METRIC = {"classification": "accuracy", "regression": "pearson", "translation": "perplexity", "language_model": "perplexity",
               "instruction": "perplexity", "masked_lm": "masked_accuracy"}
#: The validation metrics of each task kind: any of them can select the best adapter
#: (``TrainingConfig.metric``, ``adapterkit train --metric``).
METRICS = {"classification": ("accuracy", "macro_f1"), "regression": ("pearson", "mse"),
           "translation": ("perplexity", "nll"), "language_model": ("perplexity", "nll"),
           "instruction": ("perplexity", "nll"),
           "masked_lm": ("masked_accuracy", "loss", "perplexity")}
LOWER_IS_BETTER = frozenset({"perplexity", "nll", "mse", "loss"})


def check_metric(name: str, kind: str | None = None) -> str:
    """``name`` if it is a validation metric (of task ``kind``, when given).

    Raises:
        ValueError: an unknown name, or one ``kind`` does not report; the message lists the metrics.
    """
    known = METRICS[kind] if kind is not None else tuple(dict.fromkeys(m for names in METRICS.values() for m in names))
    if name not in known:
        of = f"{kind} tasks" if kind is not None else "any task"
        raise ValueError(f"unknown metric {name!r} for {of}{did_you_mean(name, known)}; choose from {', '.join(known)}")
    return name


def improves(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` (None: nothing yet)."""
    return best is None or (value < best if metric in LOWER_IS_BETTER else value > best)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels)) if len(labels) else 0.0


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions.

    A class that appears in neither contributes nothing: never predicting a class that never
    occurs is not a mistake (scikit-learn's default behaves the same way).
    """
    classes = np.union1d(np.unique(labels), np.unique(predictions))
    if len(classes) == 0:
        return 0.0
    scores = []
    for c in classes:
        tp = np.sum((predictions == c) & (labels == c))
        fp = np.sum((predictions == c) & (labels != c))
        fn = np.sum((predictions != c) & (labels == c))
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def pearson(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Pearson's r; 0.0 when either side is constant (no linear relation can be measured)."""
    p = predictions.astype(np.float64) - predictions.mean() if len(predictions) else predictions
    t = targets.astype(np.float64) - targets.mean() if len(targets) else targets
    denominator = np.sqrt(np.sum(p * p) * np.sum(t * t))
    return float(np.sum(p * t) / denominator) if denominator > 0 else 0.0


def mse(predictions: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean((predictions.astype(np.float64) - targets) ** 2)) if len(targets) else 0.0


def compute_metrics(kind: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics of a task kind; ``predictions`` are class ids or regression scores."""
    if kind == REGRESSION:
        return {"pearson": pearson(predictions, labels), "mse": mse(predictions, labels)}
    return {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels)}


def class_report(predictions: np.ndarray, labels: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support, and the confusion matrix.

    ``predictions`` and ``labels`` are class ids ``0..k-1`` of ``label_names`` (``k`` names).
    Returns ``{"per_class": {name: {"precision", "recall", "f1", "support"}}, "confusion_matrix":
    {"labels": names, "matrix": rows}}`` where ``matrix[i][j]`` counts examples of true class ``i``
    predicted as ``j``. A ratio with a zero denominator (a class never predicted, or absent) is 0.
    """
    k = len(label_names)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    per_class = {}
    for index, name in enumerate(label_names):
        tp, predicted, actual = matrix[index, index], matrix[:, index].sum(), matrix[index].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(actual)}
    return {"per_class": per_class, "confusion_matrix": {"labels": list(label_names), "matrix": matrix.tolist()}}


def format_class_report(report: dict[str, Any]) -> str:
    """:func:`class_report` as two small plain-text tables: per class, then the confusion matrix
    (rows: true class, columns: predicted, as headed ``true/pred``)."""
    names = report["confusion_matrix"]["labels"]
    width = max(9, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  precision  recall      f1  support"]
    for name, row in report["per_class"].items():
        lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}  {row['support']:7d}")
    cell = max(6, *(len(n) for n in names))
    lines += ["", f"{'true/pred':<{width}}  " + "  ".join(f"{n:>{cell}}" for n in names)]
    for name, counts in zip(names, report["confusion_matrix"]["matrix"]):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c:>{cell}d}" for c in counts))
    return "\n".join(lines)
