"""Adding an adapter whose head fits a task: the one step between loading data and training.

The head must agree with the data (kind, number of classes, class order); deriving it from the
:class:`~adapterkit.data.TaskData` instead of typing it in keeps them from drifting apart, and the
class names saved with the head let ``predict`` answer with labels rather than ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from accelerate.utils import set_seed

from ..data.task import GENERATION_KINDS, TaskData
from ..heads import HeadConfig

if TYPE_CHECKING:
    from ..methods.base import AdapterMethod
    from ..model import AdapterModel
    from ..registry import MethodConfig


def default_pooling(model: AdapterModel) -> str:
    """``last`` for decoders (only the last token has seen the whole input), else ``mean``."""
    return "last" if model.is_decoder else "mean"


def task_head(task: TaskData, pooling: str = "mean", mlp: bool = False, dropout: float = 0.1) -> HeadConfig:
    """The classification or regression head for ``task``, carrying its class names; the
    model's own LM head (``causal_lm``, no parameters) for translation and language modelling."""
    if task.kind in GENERATION_KINDS:
        return HeadConfig(kind="causal_lm", num_labels=1)
    return HeadConfig(
        kind=task.kind,
        num_labels=task.num_labels,
        pooling=pooling,
        mlp=mlp,
        dropout=dropout,
        label_names=task.label_names,
    )


def add_task_adapter(
    model: AdapterModel,
    name: str,
    method: str | MethodConfig,
    task: TaskData,
    options: dict[str, Any] | None = None,
    pooling: str | None = None,
    mlp: bool = False,
    seed: int = 0,
) -> AdapterMethod:
    """Seed, then add adapter ``name`` of ``method`` with a head for ``task``.

    Seeding first makes the adapter's random initialisation (and the head's) a function of
    ``seed``, so two runs with the same seed start from identical weights.
    """
    set_seed(seed)
    head = task_head(task, pooling or default_pooling(model), mlp)
    return model.add_adapter(name, method, head, **(options or {}))
