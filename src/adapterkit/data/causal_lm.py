"""Causal-LM task forms: token ids and labels for translation prompts and for plain text.

Translation (Bapna & Firat 2019, "Simple, Scalable Adaptation for Neural Machine Translation",
here on a decoder-only model): a source -> target pair becomes one sequence

    English: <source>\\n<Language>: <target><eos>
    └──────── prompt (label -100) ──────┘└ labels ┘

and the loss is on the target tokens and the end-of-sequence token only: every prompt position
and every padding position has label ``-100`` (transformers' ignore index), so the model learns to
translate, not to reproduce English. Generation feeds the same prompt and reads the continuation
up to the end-of-sequence token or the first line break (:func:`cut_translation`). Naming the
target language in the prompt lets one adapter serve several languages (``django_multi``).

Language modelling: the text, after the tokenizer's BOS token when it has one, with a label on
every text token (the loss and the perplexity cover all of them).

Instructions: the prompt (``data/prompts.py``: the simple ``### Instruction:`` / ``### Response:``
format or the tokenizer's chat template), then the response and the EOS token; as for
translation, only the response and the EOS token carry labels.

The pieces of a prompt are tokenised separately (the few-shot examples and ``English: ``, the
source, ``\\n<Language>:``) so that only the source is ever truncated; training and generation
build prompts with the same function, so they see the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .batching import EncodedDataset
from .prompts import SIMPLE, instruction_prompt_ids
from .task import GENERATION_KINDS, INSTRUCTION, LANGUAGE_MODEL, TRANSLATION, Example, require_text

IGNORE_INDEX = -100
#: The source's language, named in every prompt (Django's catalogues translate from English).
SOURCE_LANGUAGE = "English"


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def few_shot_text(pairs: Sequence[tuple[str, str]], language: str) -> str:
    """The prompt lines of solved examples put before the source (few-shot prompting)."""
    return "".join(f"{SOURCE_LANGUAGE}: {source}\n{language}: {target}\n\n" for source, target in pairs)


def prompt_ids(
    tokenizer: Any, source: str, language: str, max_source_tokens: int, few_shot: Sequence[tuple[str, str]] = ()
) -> list[int]:
    """Token ids of ``[few-shot examples] English: <source>\\n<language>:``, the source cut to
    ``max_source_tokens`` tokens.

    Raises:
        ValueError: an empty source text.
    """
    require_text((source,), "translation source")
    return (
        _ids(tokenizer, few_shot_text(few_shot, language) + f"{SOURCE_LANGUAGE}: ")
        + _ids(tokenizer, source)[:max_source_tokens]
        + _ids(tokenizer, f"\n{language}:")
    )


def cut_translation(text: str) -> str:
    """A generated continuation up to its first line break, stripped (a translation is one line;
    a model prompted with examples goes on with the next ``English:`` line)."""
    return text.split("\n", 1)[0].strip()


def encode_translation(
    tokenizer: Any, examples: Sequence[Example], languages: Sequence[str], max_length: int
) -> EncodedDataset:
    """Token ids, attention masks and labels (``-100`` on the prompt) of translation examples.

    The source gets at most half of ``max_length`` tokens; the target (then the EOS token) fills
    what the prompt leaves, so a sequence never exceeds ``max_length``.

    Args:
        examples: texts ``(source, target)``, label the index of the target language in ``languages``.
        languages: the task's ``label_names`` (English names of the target languages).

    Raises:
        ValueError: a tokenizer without an EOS token, an example that is not a pair, an empty
            text, or a label outside ``languages``.
    """
    _require_eos(tokenizer, "translation")
    features = []
    for index, example in enumerate(examples):
        _require_pair(example, index, "a translation example has two texts (source, target)")
        if not 0 <= int(example.label) < len(languages):
            raise ValueError(f"examples[{index}]: target language {example.label} is not an index into {list(languages)}")
        source, target = example.texts
        prompt = prompt_ids(tokenizer, source, languages[int(example.label)], max(1, max_length // 2))
        features.append(_answered(tokenizer, prompt, " " + target, max_length, f"examples[{index}]"))
    return EncodedDataset(features, None)


def encode_instructions(tokenizer: Any, examples: Sequence[Example], prompt_format: str, max_length: int) -> EncodedDataset:
    """Token ids, attention masks and labels (``-100`` on the prompt) of instruction examples:
    the prompt of ``prompt_format`` (``data/prompts.py``), then the response and the EOS token,
    which alone carry labels. The instruction gets at most half of ``max_length`` tokens, the
    response what the prompt leaves.

    Args:
        examples: texts ``(instruction, response)`` (an input already joined to the instruction).

    Raises:
        ValueError: a tokenizer without an EOS token (or without a chat template for
            ``chat_template``), an example that is not a pair, or an empty text.
    """
    _require_eos(tokenizer, "instruction tuning")
    features = []
    for index, example in enumerate(examples):
        _require_pair(example, index, "an instruction example has two texts (instruction, response)")
        prompt = instruction_prompt_ids(tokenizer, example.texts[0], prompt_format, max(1, max_length // 2))
        features.append(_answered(tokenizer, prompt, example.texts[1], max_length, f"examples[{index}]"))
    return EncodedDataset(features, None)


def _require_eos(tokenizer: Any, what: str) -> None:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{what} needs a tokenizer with an end-of-sequence token (tokenizer.eos_token)")


def _require_pair(example: Example, index: int, what: str) -> None:
    if len(example.texts) != 2:
        raise ValueError(f"examples[{index}]: {what}, got {len(example.texts)}")
    require_text(example.texts, f"examples[{index}]")


def _answered(tokenizer: Any, prompt: list[int], answer_text: str, max_length: int, where: str) -> dict[str, list[int]]:
    """The features of ``prompt`` then ``answer_text`` and EOS, cut to ``max_length``, labels on the answer only."""
    answer = (_ids(tokenizer, answer_text) + [tokenizer.eos_token_id])[: max(0, max_length - len(prompt))]
    if not answer:
        raise ValueError(f"{where}: max_length {max_length} leaves no room for the answer after the prompt; raise it")
    ids = prompt + answer
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * len(prompt) + answer}


def encode_language_model(tokenizer: Any, examples: Sequence[Example], max_length: int) -> EncodedDataset:
    """Token ids of plain texts (BOS first when the tokenizer has one), cut to ``max_length``;
    labels are the ids themselves (the model shifts them: every text token is predicted).

    Raises:
        ValueError: an empty text, or ``max_length`` < 2 (nothing to predict).
    """
    if max_length < 2:
        raise ValueError(f"language modelling needs max_length >= 2 (a token to predict from), got {max_length}")
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    features = []
    for index, example in enumerate(examples):
        require_text(example.texts[:1], f"examples[{index}]")
        ids = (start + _ids(tokenizer, example.texts[0]))[:max_length]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(ids)})
    return EncodedDataset(features, None)


def encode_for(
    kind: str, tokenizer: Any, examples: Sequence[Example], languages: Sequence[str], max_length: int,
    prompt_format: str | None = None,
) -> EncodedDataset:
    """:func:`encode_translation`, :func:`encode_language_model` or :func:`encode_instructions`
    (in ``prompt_format``, default ``simple``) by task ``kind``."""
    if kind == TRANSLATION:
        return encode_translation(tokenizer, examples, languages, max_length)
    if kind == LANGUAGE_MODEL:
        return encode_language_model(tokenizer, examples, max_length)
    if kind == INSTRUCTION:
        return encode_instructions(tokenizer, examples, prompt_format or SIMPLE, max_length)
    raise ValueError(f"{kind!r} is not a causal-LM task kind ({', '.join(GENERATION_KINDS)})")


class CausalLMCollator:
    """Pads ``input_ids`` (pad id), ``attention_mask`` (0) and ``labels`` (``-100``) on the right,
    to the longest sequence of the batch: ``(batch, seq)`` long tensors. Right padding keeps every
    row's positions ``0..n-1`` in a plain forward pass (no position ids needed)."""

    def __init__(self, tokenizer: Any):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
        self.pad = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        return {
            name: torch.tensor([list(item[name]) + [pad] * (width - len(item[name])) for item in items], dtype=torch.long)
            for name, pad in self.pad.items()
        }


def left_padded(tokenizer: Any, sequences: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``(batch, longest)`` padded on the left, as generation
    wants them (every row's last token is then the one generation continues from)."""
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
    width = max(len(ids) for ids in sequences)
    ids = [[tokenizer.pad_token_id] * (width - len(s)) + list(s) for s in sequences]
    mask = [[0] * (width - len(s)) + [1] * len(s) for s in sequences]
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}
