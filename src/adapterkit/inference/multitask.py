"""Several tasks' predictions for the same inputs, from one forward pass per batch (``Parallel``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..composition import Parallel, Setup, as_setup
from ..data.batching import Collator, EncodedDataset, encode_texts, make_loader
from ..execution import MultiTaskOutput
from .predict import refuse_tagging

if TYPE_CHECKING:
    from ..model import AdapterModel


@torch.no_grad()
def predict_tasks(
    model: AdapterModel,
    texts: Sequence[str | tuple[str, ...]],
    adapters: Setup,
    max_length: int = 128,
    batch_size: int = 64,
) -> dict[str, list[str | float]]:
    """Several tasks' predictions for every input in one forward pass per batch.

    ``adapters`` is a :class:`~adapterkit.composition.Parallel` (possibly inside ``AdapterDrop``);
    returns, per task, one prediction per input: the class name (or id) or the regression score.

    Raises:
        ValueError: a task has a tagging head (``predict.refuse_tagging``), or the setup gives no
            head output per task.
    """
    for block in as_setup(adapters).walk():
        for task in block.task_names() if isinstance(block, Parallel) else ():
            if task in model.heads:
                refuse_tagging(model.heads[task].config, task)
    inputs = [(t,) if isinstance(t, str) else tuple(t) for t in texts]
    dataset = EncodedDataset(encode_texts(model.tokenizer, inputs, model.token_budget(adapters, max_length)), None)
    loader = make_loader(dataset, Collator(model.tokenizer, "classification"), batch_size)
    device = next(model.parameters()).device
    predictions: dict[str, list[str | float]] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            output = model(**{k: v.to(device) for k, v in batch.items()}, adapters=adapters)
            if not isinstance(output, MultiTaskOutput):
                raise ValueError(f"predict_tasks needs a setup with one head per task (Parallel), got {adapters!r}")
            for task, result in output.tasks.items():
                config = model.heads[task].config
                if config.kind == "regression":
                    values: list[str | float] = [float(v) for v in result.logits.float()]
                else:
                    ids = result.logits.argmax(-1).tolist()
                    values = [config.label_names[i] if config.label_names else str(i) for i in ids]
                predictions.setdefault(task, []).extend(values)
    finally:
        model.train(was_training)
    return predictions
