"""From :class:`~adapterkit.data.TaskData` examples to padded tensor batches.

Texts are tokenised once, up front, without padding (a fast tokenizer does a whole split in one
call); each batch is then padded only to its own longest example ("dynamic padding"), which on
short texts such as reviews or questions makes a batch several times cheaper than padding
everything to ``max_length``. One text column is a single sequence; two are a tokenizer pair
(``[CLS] a [SEP] b [SEP]`` with segment ids for BERT), truncated longest-first.

Shuffling is a pure function of ``(seed, epoch)`` (:class:`EpochShuffleSampler`), like
``DistributedSampler``: every process of a distributed run draws the same order, which
``accelerate`` then shards by batch, and a resumed run replays exactly the order the
interrupted run would have used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .task import REGRESSION, Example, require_text

#: Tokenizer outputs a batch carries to the model, when the tokenizer produces them.
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_CHUNK = 1024


class EncodedDataset(Dataset):
    """Token ids (unpadded) and labels of a list of examples."""

    def __init__(self, features: list[dict[str, list[int]]], labels: list[int | float] | None):
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = dict(self.features[index])
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def encode_texts(
    tokenizer: Any, texts: Sequence[tuple[str, ...]], max_length: int, source: str = "texts"
) -> list[dict[str, list[int]]]:
    """Tokenise one-text or two-text inputs (all of one arity) without padding.

    ``source`` names the inputs in errors: ``texts[3]`` (``predict``), ``examples[3]``.

    Raises:
        ValueError: inputs of mixed arity, or an input with an empty (or whitespace-only) text
            (see :func:`adapterkit.data.task.require_text`).
    """
    if not texts:
        return []
    arity = {len(t) for t in texts}
    if len(arity) != 1 or arity - {1, 2}:
        raise ValueError(f"every input must have the same number of texts, 1 or 2; got {sorted(arity)}")
    for index, item in enumerate(texts):
        require_text(item, f"{source}[{index}]")
    keep = [name for name in _MODEL_INPUTS if name in tokenizer.model_input_names]
    features: list[dict[str, list[int]]] = []
    for start in range(0, len(texts), _CHUNK):
        chunk = texts[start : start + _CHUNK]
        first = [t[0] for t in chunk]
        second = [t[1] for t in chunk] if len(chunk[0]) == 2 else None
        encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
        features += [{name: encoded[name][i] for name in keep if name in encoded} for i in range(len(chunk))]
    return features


def encode_examples(tokenizer: Any, examples: Sequence[Example], max_length: int) -> EncodedDataset:
    return EncodedDataset(
        encode_texts(tokenizer, [e.texts for e in examples], max_length, "examples"), [e.label for e in examples]
    )


class Collator:
    """Pads a list of encoded examples to the longest one; labels become long or float tensors.

    Padding follows ``tokenizer.padding_side`` (decoders are often padded on the left) and
    uses the tokenizer's pad id; attention masks and segment ids are padded with 0.
    """

    def __init__(self, tokenizer: Any, kind: str):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
        self.pad_values = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        self.left = getattr(tokenizer, "padding_side", "right") == "left"
        self.label_dtype = torch.float32 if kind == REGRESSION else torch.long

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in items)
        batch: dict[str, torch.Tensor] = {}
        for name, pad in self.pad_values.items():
            if name not in items[0]:
                continue
            rows = []
            for item in items:
                fill = [pad] * (width - len(item[name]))
                rows.append(fill + list(item[name]) if self.left else list(item[name]) + fill)
            batch[name] = torch.tensor(rows, dtype=torch.long)
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([item["labels"] for item in items], dtype=self.label_dtype)
        return batch


class EpochShuffleSampler(Sampler[int]):
    """A random permutation of ``range(n)`` that depends only on ``(seed, epoch)``.

    Call :meth:`set_epoch` before each epoch (``accelerate``'s prepared loaders forward their
    own ``set_epoch`` to it). It holds no generator between epochs, so there is no sampler state
    to checkpoint.
    """

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def make_loader(
    dataset: EncodedDataset, collator: Collator, batch_size: int, shuffle_seed: int | None = None
) -> DataLoader:
    """A DataLoader over ``dataset``; shuffled per epoch when ``shuffle_seed`` is given."""
    sampler = EpochShuffleSampler(len(dataset), shuffle_seed) if shuffle_seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator)
