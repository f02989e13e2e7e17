"""Inputs to token ids, request by request, and rows of many requests to one padded batch.

Each request's inputs are tokenised on their own, without padding, against that request's token
budget (``AdapterModel.token_budget``: the positions the model reads less the setup's prompts):
an input over the budget is cut to it when the request says ``truncate``, and refused otherwise,
naming the input. Rows of several requests are then padded together (right padding for encoders
and pooled heads; left padding for generation, so every prompt ends where decoding starts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import InputTooLong, InvalidRequest
from .requests import Text

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def encode_inputs(tokenizer: Any, inputs: Sequence[Text], budget: int, truncate: bool) -> list[dict[str, list[int]]]:
    """Token ids (with the tokenizer's special tokens) of each input, unpadded.

    Args:
        inputs: texts, or pairs of texts; a request's inputs are all of one kind.
        budget: the most tokens one input may take (>= 1).
        truncate: cut longer inputs to ``budget`` (pairs: longest first) instead of refusing.

    Raises:
        InvalidRequest: an empty text (field ``inputs[i]``).
        InputTooLong: an input over ``budget`` tokens with ``truncate`` off (field ``inputs[i]``).
    """
    for index, item in enumerate(inputs):
        texts = (item,) if isinstance(item, str) else item
        if any(not text.strip() for text in texts):
            raise InvalidRequest(f"inputs[{index}]", "an input text is empty; send at least one non-space character")
    first = [item if isinstance(item, str) else item[0] for item in inputs]
    second = None if isinstance(inputs[0], str) else [item[1] for item in inputs]
    # one token over the budget tells "too long" apart without tokenising twice
    encoded = tokenizer(first, second, truncation=True, max_length=budget + 1, padding=False)
    keep = [name for name in _MODEL_INPUTS if name in encoded]
    rows = [{name: encoded[name][i] for name in keep} for i in range(len(inputs))]
    long = [i for i, row in enumerate(rows) if len(row["input_ids"]) > budget]
    if long and not truncate:
        raise InputTooLong(
            f"inputs[{long[0]}]",
            f"longer than the {budget} tokens this model and setup read ({len(long)} such inputs); "
            'shorten it, or send "truncate": true to cut it',
        )
    if long:
        again = tokenizer(
            [first[i] for i in long], None if second is None else [second[i] for i in long],
            truncation=True, max_length=budget, padding=False,
        )
        for k, i in enumerate(long):
            rows[i] = {name: again[name][k] for name in keep}
    return rows


def encode_prompts(tokenizer: Any, prompts: Sequence[str], budget: int, truncate: bool) -> list[dict[str, list[int]]]:
    """Token ids of prompts for generation: ``budget`` is the most prompt tokens (the model's
    positions less the new tokens); a longer prompt keeps its last ``budget`` tokens when
    ``truncate``, else it is refused.

    Raises:
        InvalidRequest: an empty prompt, or no room for any prompt token.
        InputTooLong: a prompt over ``budget`` tokens with ``truncate`` off.
    """
    if budget < 1:
        raise InvalidRequest("max_tokens", "leaves no position for the prompt; ask for fewer tokens")
    rows = []
    for index, prompt in enumerate(prompts):
        if not prompt.strip():
            raise InvalidRequest(f"inputs[{index}]", "the prompt is empty; send at least one non-space character")
        ids = tokenizer(prompt, padding=False)["input_ids"]
        if len(ids) > budget:
            if not truncate:
                raise InputTooLong(
                    f"inputs[{index}]",
                    f"the prompt has {len(ids)} tokens but only {budget} fit beside max_tokens; "
                    'shorten it, ask for fewer tokens, or send "truncate": true to keep its end',
                )
            ids = ids[-budget:]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return rows


def pad_rows(tokenizer: Any, rows: Sequence[dict[str, list[int]]], side: str = "right") -> dict[str, torch.Tensor]:
    """One batch ``(len(rows), longest)`` of ``input_ids``, ``attention_mask`` (and
    ``token_type_ids`` when the rows have them), padded on ``side``."""
    return dict(tokenizer.pad(list(rows), padding=True, padding_side=side, return_tensors="pt"))
