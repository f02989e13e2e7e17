"""Scoring a masked-LM head (a MAD-X language adapter's): masked-token accuracy and perplexity.

The texts are masked as in training (``data/masking.py``: BERT's 15% with 80/10/10, seeded, so
every evaluation of the same texts masks the same positions). Reported, over the masked positions
of all texts together:

* ``masked_accuracy``: the share whose original token is the head's top prediction;
* ``loss``: the mean cross-entropy of the original tokens (nats);
* ``perplexity``: ``exp(loss)``, the *masked-LM-loss perplexity* of these masks. It is not the
  pseudo-perplexity of Salazar et al. 2020 (which masks every token once, one at a time, and
  costs one pass per token); both compare models on the same texts, this one at one pass per batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..composition import Setup, as_setup
from ..data.batching import encode_examples, make_loader
from ..data.masking import IGNORE_INDEX, MaskedLMCollator
from ..data.task import Example

if TYPE_CHECKING:
    from ..model import AdapterModel

MAIN = "masked_accuracy"
"""The metric model selection maximises for a masked-LM adapter."""


def require_masked_lm_head(model: AdapterModel, adapters: str | Setup) -> str:
    """The name of the setup's head adapter, checked to have a ``masked_lm`` head.

    Raises:
        ValueError: it has no head, or another kind of head.
    """
    name = as_setup(adapters).head_name()
    kind = model.heads[name].config.kind if name in model.heads else None
    if kind != "masked_lm":
        raise ValueError(
            f"adapter {name!r} has {'a ' + kind if kind else 'no'} head; masked-LM scores need a masked_lm head "
            "(HeadConfig(kind='masked_lm'), which `adapterkit train --task mlm_...` adds)"
        )
    return name


@torch.no_grad()
def masked_lm_metrics(
    model: torch.nn.Module, loader: Iterable[dict[str, torch.Tensor]], adapters: str | Setup, accelerator: Any = None
) -> dict[str, float]:
    """Masked accuracy, loss and perplexity (module docstring) of batches from a
    :class:`~adapterkit.data.masking.MaskedLMCollator`; with an ``accelerator`` the loader is a
    prepared (sharded) one and the sums are added over the processes."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            targets = batch["labels"][batch["labels"] != IGNORE_INDEX]
            logits = model(**batch, adapters=adapters).logits  # (n_masked, vocab)
            loss = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            sums += torch.stack([loss.double(), (logits.argmax(-1) == targets).sum().double(), torch.tensor(float(targets.numel()), device=device, dtype=torch.float64)])
    finally:
        model.train(was_training)
    if accelerator is not None:
        sums = accelerator.reduce(sums, "sum")
    loss, correct, count = sums.tolist()
    if not count:
        return {MAIN: 0.0, "loss": math.nan, "perplexity": math.nan}
    return {MAIN: correct / count, "loss": loss / count, "perplexity": math.exp(loss / count)}


def evaluate_masked_lm(
    model: AdapterModel,
    examples: Sequence[Example],
    adapters: str | Setup,
    *,
    max_length: int = 128,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """:func:`masked_lm_metrics` of ``adapters`` on the texts of ``examples`` (labels unused),
    masked with ``seed``; inputs truncated as in ``predict.evaluate``. ``progress``: a bar of
    batches on stderr.

    Raises:
        ValueError: no examples, or the setup's head is not a ``masked_lm`` head.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    require_masked_lm_head(model, adapters)
    dataset = encode_examples(model.tokenizer, examples, model.token_budget(adapters, max_length))
    loader = make_loader(dataset, MaskedLMCollator(model.tokenizer, seed), batch_size)
    return masked_lm_metrics(model, tqdm(loader, desc="evaluating", unit="batch", leave=False, disable=not progress), adapters)
