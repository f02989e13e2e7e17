"""Several tasks at once: joint multi-task training (AdapterFusion's MT-A).

Pfeiffer et al. 2021 (Sec. 3.1) train the task adapters of stage one either each alone (ST-A: the
ordinary :class:`~adapterkit.training.Trainer`, one adapter and one task at a time) or jointly
(MT-A): every task keeps its own adapter and head, and all of them are optimised together on a
mixture of the tasks. Here each batch is a shuffled mixture of examples of all tasks; row ``r`` is
routed to its task's adapter and head with :class:`~adapterkit.composition.Routed`, so one forward
pass serves every task in the batch and the loss is the mean over rows of each row's task loss.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch

from ..composition import AdapterDrop, Routed
from ..data.batching import Collator, encode_examples

if TYPE_CHECKING:
    from ..data.task import TaskData
    from ..model import AdapterModel


def mixture_batches(
    model: AdapterModel,
    tasks: Mapping[str, TaskData],
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
    split: str = "train",
) -> Iterator[dict]:
    """Shuffled batches mixing the ``split`` examples of every task (adapter name -> task).

    Each batch holds ``input_ids``, ``attention_mask`` (and ``token_type_ids`` if the tokenizer
    makes them), float ``labels`` (class ids or scores; each head casts its own) and ``adapters``:
    the :class:`Routed` setup naming each row's adapter.
    """

    rows: list[tuple[str, dict]] = []
    max_length = model.token_budget(Routed(list(tasks)), max_length)
    for name, task in tasks.items():
        encoded = encode_examples(model.tokenizer, getattr(task, split), max_length)
        rows += [(name, encoded[i]) for i in range(len(encoded))]
    random.Random(seed).shuffle(rows)
    collate = Collator(model.tokenizer, "regression")  # float labels: class ids and scores side by side
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate([features for _, features in chunk])
        batch["adapters"] = Routed([name for name, _ in chunk])
        yield batch


def train_multitask(
    model: AdapterModel,
    tasks: Mapping[str, TaskData],
    epochs: int = 1,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    max_length: int = 128,
    seed: int = 0,
    adapter_drop: bool = False,
    progress: bool = False,
) -> list[float]:
    """MT-A: train the adapters named by ``tasks`` (each with a head for its task) jointly.

    Only those adapters and their heads require grad; the base model and every other adapter stay
    bit-identical. With ``adapter_drop`` each batch also skips the adapters of a random number of
    lower layers (robust AdapterDrop). Returns the mean training loss of each epoch.
    """
    model.view().require(list(tasks))
    missing = [n for n in tasks if n not in model.heads]
    if missing:
        raise ValueError(
            f"train_multitask: adapters {missing} have no head; an adapter gets its head when added: "
            "model.add_adapter(name, method, task_head(task)) (or add_task_adapter)"
        )
    model.requires_grad_(False)
    for name in tasks:
        model.adapters[name].requires_grad_(True)
        model.heads[name].requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    device = next(model.parameters()).device
    losses = []
    was_training = model.training
    model.train()
    try:
        for epoch in range(epochs):
            total, count = 0.0, 0
            for batch in mixture_batches(model, tasks, batch_size, max_length, seed + epoch):
                setup = batch.pop("adapters")
                setup = AdapterDrop(setup, robust=True) if adapter_drop else setup
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = model(**batch, adapters=setup).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                total, count = total + loss.item(), count + 1
            losses.append(total / max(count, 1))
            if progress:
                print(f"multi-task epoch {epoch + 1}/{epochs}: train loss {losses[-1]:.4f}", file=sys.stderr)
    finally:
        model.train(was_training)
    return losses
