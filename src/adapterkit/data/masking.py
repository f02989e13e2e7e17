"""BERT's masking for the masked-LM objective, and the masked-LM form of a text task.

Devlin et al. 2019 (BERT, section 3.1 and appendix A.1): choose 15% of the tokens; of those,
replace 80% with ``[MASK]``, 10% with a random token and keep 10% unchanged; predict the original
token at the chosen positions only. Special tokens (``[CLS]``, ``[SEP]``, ...) and padding are
never chosen. MAD-X (Pfeiffer et al. 2020, arXiv 2005.00052) trains its language adapters with
this objective.

Masks are a pure function of a seed and the token ids, so a rerun and a resumed run draw exactly
the same ones. For evaluation each text is masked on its own (a generator seeded by ``(seed, its
token ids)``): the same masks whatever the batch size or order, so any two evaluations of the same
texts compare on the same masked tokens. For training (``dynamic=True``) one generator per batch
is seeded by ``(seed, the batch's token ids)``: a shuffled epoch groups the examples differently
and masks them anew (RoBERTa's "dynamic masking").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .batching import Collator
from .task import MASKED_LM, Example, TaskData

IGNORE_INDEX = -100
"""The label of every position that was not chosen: no loss there."""
MASK_PROBABILITY = 0.15
"""Share of the (non-special, non-padding) tokens chosen for prediction."""
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1
"""Of the chosen tokens: replaced by ``[MASK]``, replaced by a random token (the rest kept)."""


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    generator: torch.Generator,
    probability: float = MASK_PROBABILITY,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of a batch (see module docstring).

    Args:
        input_ids: ``(batch, seq)`` token ids.
        maskable: ``(batch, seq)`` bool, False at special tokens and padding (never chosen).
        mask_token_id: the ``[MASK]`` id.
        vocab_size: random replacements are drawn from ``range(vocab_size)``.
        generator: the source of randomness (CPU).
        probability: the share of maskable tokens chosen.

    Returns:
        (masked ids, labels): both ``(batch, seq)``; labels hold the original id at the chosen
        positions and :data:`IGNORE_INDEX` elsewhere.

    Raises:
        ValueError: ``maskable`` does not have the shape of ``input_ids``, or ``probability`` is
            outside ``(0, 1]``.
    """
    if maskable.shape != input_ids.shape:
        raise ValueError(f"maskable {tuple(maskable.shape)} must have the shape of input_ids {tuple(input_ids.shape)}")
    if not 0 < probability <= 1:
        raise ValueError(f"the masking probability must be in (0, 1], got {probability}")
    draw = torch.rand(input_ids.shape, generator=generator)
    chosen = maskable & (draw < probability)
    # one more uniform draw per position splits the chosen ones 80/10/10
    split = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (split < MASK_SHARE)
    to_random = chosen & (split >= MASK_SHARE) & (split < MASK_SHARE + RANDOM_SHARE)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked = input_ids.masked_fill(to_mask, mask_token_id)
    masked = torch.where(to_random, random_ids, masked)
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    return masked, labels


def batch_seed(seed: int, input_ids: torch.Tensor) -> int:
    """A 63-bit seed from ``seed`` and the batch's token ids (position-weighted, so reordering
    the rows changes it)."""
    weights = torch.arange(1, input_ids.numel() + 1, dtype=torch.int64)
    mixed = int((input_ids.flatten().to(torch.int64) * weights).sum()) % (2**61 - 1)
    return (seed * 1_000_003 + mixed) % (2**63 - 1)


class MaskedLMCollator:
    """Pads like :class:`~adapterkit.data.batching.Collator`, then masks (:func:`mask_tokens`):
    each text on its own, or with ``dynamic`` the whole batch at once (module docstring).

    The batch's ``labels`` become the masked-LM targets ``(batch, seq)`` (the examples' own labels
    are dropped); ``input_ids`` the masked ids.

    Raises:
        ValueError: the tokenizer has no mask token.
    """

    def __init__(self, tokenizer: Any, seed: int = 0, probability: float = MASK_PROBABILITY, dynamic: bool = False):
        if tokenizer.mask_token_id is None:
            raise ValueError("the masked-LM objective needs a tokenizer with a mask token ([MASK]); this one has none")
        self.pad = Collator(tokenizer, MASKED_LM)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.seed = seed
        self.probability = probability
        self.dynamic = dynamic

    def _mask(self, ids: torch.Tensor, maskable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(batch_seed(self.seed, ids))
        return mask_tokens(ids, maskable, self.mask_token_id, self.vocab_size, generator, self.probability)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        items = [{k: v for k, v in item.items() if k != "labels"} for item in items]
        batch = self.pad(items)
        ids = batch["input_ids"]
        maskable = ~torch.isin(ids, self.special)
        if "attention_mask" in batch:
            maskable &= batch["attention_mask"].bool()
        if self.dynamic:
            batch["input_ids"], batch["labels"] = self._mask(ids, maskable)
            return batch
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, item in enumerate(items):  # each text alone, on its unpadded ids
            own = torch.tensor(item["input_ids"], dtype=torch.long)
            where = ids.shape[1] - len(own) if self.pad.left else 0
            span = slice(where, where + len(own))
            ids[row, span], labels[row, span] = self._mask(own.unsqueeze(0), maskable[row, span].unsqueeze(0))
        batch["input_ids"], batch["labels"] = ids, labels
        return batch


def as_masked_lm(task: TaskData, name: str | None = None) -> TaskData:
    """The texts of ``task`` as a masked-LM task with the same splits (labels dropped), so a
    language adapter trained on its train split never reads the original task's test texts."""
    def strip(examples: list[Example]) -> list[Example]:
        return [Example(example.texts, 0) for example in examples]

    return dataclasses.replace(
        task, name=name or f"mlm_{task.name}", kind=MASKED_LM, label_names=(),
        train=strip(task.train), validation=strip(task.validation), test=strip(task.test),
    )  # fmt: skip
