"""Translating with an adapted decoder, and scoring translations with sacrebleu (BLEU, chrF).

Bapna & Firat (2019) add one small adapter per language pair to a frozen translation model; here
the frozen model is a decoder prompted as in ``data/causal_lm.py``. :func:`translate` decodes
greedily (``num_beams=1``) or with beam search (transformers' ``generate``), through
``AdapterModel.generate``, which keeps the setup on every step, cached decoding included. Rows of
one batch may go to different adapters (one per target language): a per-row list of adapter
names runs as ``Routed(rows)`` in one pass per batch.

Scores are sacrebleu's corpus-level BLEU (13a tokenisation) and chrF (character 6-grams,
beta 2), 0-100, against one reference per source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..composition import Setup
from ..data.causal_lm import cut_translation, prompt_ids
from ..data.task import Example
from .generating import generate_texts

if TYPE_CHECKING:
    from ..model import AdapterModel


@torch.no_grad()
def translate(
    model: AdapterModel,
    sources: Sequence[str],
    languages: str | Sequence[str],
    adapters: str | Setup | Sequence[str | None] | None,
    *,
    max_length: int = 128,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    batch_size: int = 16,
    few_shot: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """One translation per source.

    Args:
        sources: English texts.
        languages: the target language's English name (``"German"``), one for all or one per source.
        adapters: a setup for every row (an adapter name, a block, None for the plain base model,
            whatever setup is active), or
            one adapter name (or None) per source, which routes each row to its own adapter.
        max_length: the source is cut to half of it, as in training.
        max_new_tokens: the longest translation, in tokens.
        num_beams: 1 decodes greedily, more runs beam search.
        few_shot: solved (source, target) pairs put before every prompt (prompting the base).

    Raises:
        ValueError: no tokenizer, an empty source, or per-row lists of the wrong length.
    """
    if model.tokenizer is None:
        raise ValueError("translate needs the model's tokenizer; load it with AdapterModel.from_pretrained")
    if num_beams < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"num_beams, max_new_tokens and batch_size must be >= 1, got {num_beams}, {max_new_tokens}, {batch_size}")
    tokenizer = model.tokenizer
    targets = [languages] * len(sources) if isinstance(languages, str) else list(languages)
    if len(targets) != len(sources):
        raise ValueError(f"{len(targets)} target languages for {len(sources)} sources: give one, or one per source")
    prompts = [prompt_ids(tokenizer, s, lang, max(1, max_length // 2), few_shot) for s, lang in zip(sources, targets)]
    texts = generate_texts(
        model, prompts, adapters, batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
        stop_strings=["\n"], tokenizer=tokenizer,  # a translation is one line (cut_translation): stop each row there
    )
    return [cut_translation(text) for text in texts]


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{"bleu", "chrf"}``: sacrebleu's corpus BLEU and chrF (0-100) of ``hypotheses`` against
    one reference each.

    Raises:
        ValueError: different numbers of hypotheses and references, or none.
        ModuleNotFoundError: sacrebleu is not installed (with the pip command).
    """
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"need one hypothesis per reference and at least one; got {len(hypotheses)} and {len(references)}")
    try:
        import sacrebleu
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("translation scores need sacrebleu: pip install 'sacrebleu>=2.4'", name="sacrebleu") from error
    refs = [list(references)]
    return {
        "bleu": float(sacrebleu.corpus_bleu(list(hypotheses), refs).score),
        "chrf": float(sacrebleu.corpus_chrf(list(hypotheses), refs).score),
    }


def evaluate_translation(
    model: AdapterModel,
    examples: Sequence[Example],
    languages: Sequence[str],
    adapters: str | Setup | Sequence[str | None] | None,
    **options,
) -> dict[str, float]:
    """:func:`translation_scores` of :func:`translate` on translation ``examples`` (texts
    ``(source, target)``, label an index into ``languages``), plus ``examples``: their number.
    ``options`` go to :func:`translate`."""
    sources = [e.texts[0] for e in examples]
    hypotheses = translate(model, sources, [languages[int(e.label)] for e in examples], adapters, **options)
    return {**translation_scores(hypotheses, [e.texts[1] for e in examples]), "examples": float(len(examples))}
