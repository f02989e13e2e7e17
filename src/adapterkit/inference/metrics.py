"""Evaluation metrics in plain numpy (scikit-learn is not a dependency).

Classification reports accuracy and macro-F1: accuracy is the headline number of the papers
compared against, macro-F1 exposes a model that ignores a small class (on a 90/10 split,
always answering the majority class scores 0.90 accuracy but about 0.47 macro-F1). Regression
reports Pearson's r (the STS-B convention, invariant to the scale of the predictions) and the
mean squared error.
"""

from __future__ import annotations

import numpy as np

from ..data.task import REGRESSION

#: The metric early stopping and model selection optimise, per task kind (causal-LM tasks:
#: held-out perplexity, ``inference/perplexity.py``, which is minimised).
MAIN_METRIC = {"classification": "accuracy", "regression": "pearson", "translation": "perplexity", "language_model": "perplexity",
               "instruction": "perplexity", "masked_lm": "masked_accuracy"}
LOWER_IS_BETTER = frozenset({"perplexity"})


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
