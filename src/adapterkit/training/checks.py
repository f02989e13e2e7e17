"""What the trainer checks before a run: the model reads the task's modality, the head fits the task."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..composition import Setup
from ..data.task import GENERATION_KINDS, TaskData
from ..inference.predict import head_config

if TYPE_CHECKING:
    from ..model import AdapterModel


def check_modality(model: AdapterModel, task: TaskData) -> None:
    """Refuse a task the model cannot read: images need a CNN with its preprocessor, texts a tokenizer."""
    if task.modality == "image" and model.processor is None:
        raise ValueError(
            f"task {task.name!r} is images, but this {model.parts.model_type!r} model reads text; "
            "train it on an image model (e.g. --model efficientnet-lite0)"
        )
    if task.modality == "text" and model.processor is not None:
        raise ValueError(
            f"task {task.name!r} is text, but this {model.parts.model_type!r} model reads images; "
            "train it on a text model (e.g. --model minilm), or give this one an image task"
        )
    if task.modality == "text" and model.tokenizer is None:
        raise ValueError(
            "the model has no tokenizer; load it with AdapterModel.from_pretrained or pass tokenizer= to AdapterModel"
        )


def check_head(model: AdapterModel, adapter: str, setup: str | Setup, task: TaskData) -> None:
    """Refuse a head that does not fit ``task``: another kind, another number of labels, other label names or order.

    Raises:
        ValueError: naming the mismatch and how to add a fitting head.
    """
    head = head_config(model, setup)
    if (head.kind == "causal_lm") != (task.kind in GENERATION_KINDS):
        raise ValueError(
            f"adapter {adapter!r} has a {head.kind} head, but task {task.name!r} is {task.kind}; "
            + ("causal-LM tasks train an adapter with a causal_lm head (add_task_adapter gives it one)"
               if task.kind in GENERATION_KINDS else "a causal_lm head trains on translation or language-modelling tasks")
        )
    if head.kind == "causal_lm":
        return
    if head.kind != task.kind:
        raise ValueError(f"adapter {adapter!r} has a {head.kind} head, but task {task.name!r} is {task.kind}")
    if head.outputs != task.num_labels:
        raise ValueError(
            f"adapter {adapter!r} has a head with {head.outputs} outputs, but task {task.name!r} has "
            f"{task.num_labels} labels; add the adapter with head=task_head(task) (or add_task_adapter)"
        )
    if head.label_names and tuple(head.label_names) != tuple(task.label_names):
        raise ValueError(
            f"adapter {adapter!r} predicts labels {list(head.label_names)}, but task {task.name!r} has "
            f"{list(task.label_names)} (names and order must match)"
        )
