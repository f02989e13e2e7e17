"""Held-out perplexity of a causal LM (with or without adapters) on causal-LM task examples.

Perplexity is ``exp`` of the token-weighted mean negative log-likelihood: the summed NLL (nats)
of every labelled token of every example, divided by the number of those tokens (not a mean of
per-example or per-batch means, which would weight short texts up). For translation examples
the labelled tokens are the target's (``data/causal_lm.py``), so this is the target's perplexity
given the prompt.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..composition import Setup
from ..data.batching import make_loader
from ..data.causal_lm import IGNORE_INDEX, CausalLMCollator, encode_for
from ..data.task import Example

if TYPE_CHECKING:
    from ..model import AdapterModel


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL in nats, number of predicted tokens) of next-token ``logits (batch, seq, vocab)``
    against ``labels (batch, seq)``: position ``t`` predicts ``labels[:, t + 1]``; labels
    ``-100`` count for nothing."""
    predicted = logits[:, :-1].float().flatten(0, 1)
    target = labels[:, 1:].flatten()
    total = torch.nn.functional.cross_entropy(predicted, target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (target != IGNORE_INDEX).sum()


def plain(model: torch.nn.Module, adapters: str | Setup | None):
    """A context in which a pass that names no setup runs the plain base model: ``adapters=None``
    means no adapter here, where ``AdapterModel.forward`` would take the active setup (after
    training, the trained adapter)."""
    return model.using(None) if adapters is None and hasattr(model, "using") else contextlib.nullcontext()


def summarize(total: float, count: int) -> dict[str, float]:
    """``{"nll": mean NLL per token (nats), "perplexity": exp(nll), "tokens": count}``.

    Raises:
        ValueError: no token to score.
    """
    if count < 1:
        raise ValueError("no labelled tokens to score: give texts of at least one token (and max_length >= 2)")
    nll = total / count
    return {"nll": nll, "perplexity": math.exp(nll), "tokens": float(count)}


@torch.no_grad()
def loader_perplexity(model: torch.nn.Module, loader: Iterable[dict[str, torch.Tensor]], adapters: str | Setup | None,
                      accelerator: Any = None) -> dict[str, float]:
    """:func:`summarize` over every batch of ``loader`` (``input_ids``, ``attention_mask``,
    ``labels``), run with ``adapters`` (None: the plain base model, not the active setup); sums are added across processes
    when an ``accelerator`` is given. The model is put in eval mode and handed back as found."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.long, device=device)
    try:
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            with plain(model, adapters):
                nll, tokens = token_nll(model(**batch, adapters=adapters).logits, labels)
            total += nll.double()
            count += tokens
    finally:
        model.train(was_training)
    if accelerator is not None:
        total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    return summarize(float(total), int(count))


def perplexity(
    model: AdapterModel,
    examples: Sequence[Example],
    kind: str,
    adapters: str | Setup | None,
    languages: Sequence[str] = (),
    max_length: int = 128,
    batch_size: int = 16,
    prompt_format: str | None = None,
) -> dict[str, float]:
    """Held-out perplexity of ``model`` run with ``adapters`` on ``examples`` of task ``kind``
    (``translation``: ``languages`` are the task's target languages; ``language_model``;
    ``instruction``: the responses' perplexity, prompts in ``prompt_format``)."""
    if model.tokenizer is None:
        raise ValueError("perplexity needs the model's tokenizer; load it with AdapterModel.from_pretrained")
    encoded = encode_for(kind, model.tokenizer, examples, languages, max_length, prompt_format)
    loader = make_loader(encoded, CausalLMCollator(model.tokenizer), batch_size)
    return loader_perplexity(model, loader, adapters)
