"""Generating text with an adapted decoder: prompts (token ids) in, decoded continuations out.

One loop for every generating workflow: translation (``translation.py``), instruction
responses and continuations (``adapterkit generate`` and ``predict``). Prompts are left-padded
in batches (``data/causal_lm.left_padded``) and run through ``AdapterModel.generate``, which keeps
the setup on every step; rows of a batch may go to different adapters (a per-row list of names
runs as ``Routed``). Generation stops at the tokenizer's EOS token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..composition import Routed, Setup
from ..data.causal_lm import left_padded
from ..data.prompts import instruction_prompt_ids
from .perplexity import plain

if TYPE_CHECKING:
    from ..model import AdapterModel


def _row_setup(adapters: str | Setup | Sequence[str | None] | None, start: int, stop: int, total: int) -> str | Setup | None:
    """The setup of rows ``start:stop``: a per-row list becomes ``Routed`` over those rows."""
    if adapters is None or isinstance(adapters, (str, Setup)):
        return adapters
    rows = list(adapters)
    if len(rows) != total:
        raise ValueError(f"{len(rows)} adapter names for {total} sources: give one per source (None for the base)")
    return Routed(rows[start:stop])


@torch.no_grad()
def generate_texts(
    model: AdapterModel,
    prompts: Sequence[Sequence[int]],
    adapters: str | Setup | Sequence[str | None] | None,
    *,
    batch_size: int = 16,
    **options: Any,
) -> list[str]:
    """The text generated after each prompt (special tokens skipped), in order.

    Args:
        prompts: token ids of each prompt.
        adapters: a setup for every row (None: the plain base model), or one adapter name (or
            None) per prompt.
        options: for ``generate``: ``max_new_tokens``, ``num_beams``, ``do_sample``,
            ``temperature``, ``top_p``, ``stop_strings`` (with ``tokenizer``), ...

    Raises:
        ValueError: no tokenizer, a batch size below 1, or a per-row list of the wrong length.
    """
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("generation needs the model's tokenizer; load it with AdapterModel.from_pretrained")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            stop = min(start + batch_size, len(prompts))
            batch = {k: v.to(device) for k, v in left_padded(tokenizer, prompts[start:stop]).items()}
            with plain(model, adapters):
                generated = model.generate(
                    **batch, adapters=_row_setup(adapters, start, stop, len(prompts)),
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **options,
                )
            outputs += tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return outputs


def respond(
    model: AdapterModel,
    messages: Sequence[str],
    adapters: str | Setup | None,
    prompt_format: str,
    *,
    max_length: int = 128,
    batch_size: int = 16,
    **options: Any,
) -> list[str]:
    """The response to each message, stripped: the message written as a prompt of ``prompt_format``
    (``data/prompts.py``: ``simple``, ``chat_template``, or ``text`` to continue it), cut to half
    of ``max_length`` tokens as in training; ``options`` go to :func:`generate_texts`.

    Raises:
        ValueError: an empty message, an unknown format, or ``chat_template`` without one.
    """
    if any(not m.strip() for m in messages):
        raise ValueError("an empty prompt (or whitespace only); give every prompt some text")
    prompts = [instruction_prompt_ids(model.tokenizer, m, prompt_format, max(1, max_length // 2)) for m in messages]
    return [text.strip() for text in generate_texts(model, prompts, adapters, batch_size=batch_size, **options)]
