"""The K-Adapter tasks: two knowledge (pretraining) tasks and two downstream tasks.

* ``kfacts`` (factual adapter): relation classification over country/city facts (``geo.py``) and
  WordNet relations with their glosses (``wordnet.py``), plus ``no_relation`` pairs; trained on the
  ``pretrain`` group of entities and evaluated on the ``heldout`` group (``relations.py``).
* ``kdeps`` (linguistic adapter): dependency arcs of silver parses (``parses.py``); sentences
  split 80/10/10 by a hash of their position.
* ``krel`` (downstream): relation classification over the ``downstream`` group: entity pairs never
  seen in pretraining, in other templates, with fewer training examples.
* ``ktyping`` (downstream): the lexicographer class of a marked noun in a WordNet example sentence
  (``downstream`` synsets only).

The groups never depend on the seed; the seed draws negatives, templates, samples and the order
(and, for ``krel``/``ktyping``, the stratified 60/20/20 split).
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Callable, Sequence

from ..splitting import split_examples
from ..task import CLASSIFICATION, Example, TaskData
from . import geo, parses, wordnet
from .relations import Fact, by_group, capped, group_of, negatives, texts

PRETRAIN_TEMPLATES = ("@ {s} @ ; # {o} # .", "# {o} # , @ {s} @ .", "@ {s} @ and # {o} # .")
DOWNSTREAM_TEMPLATES = ("They talked about @ {s} @ and # {o} # .", "A note on @ {s} @ ( # {o} # ) .", "Both @ {s} @ and # {o} # came up .")
NEGATIVE_SHARE = 0.25
PRETRAIN_PER_RELATION = 1500  # WordNet has tens of thousands of hypernyms: cap every relation
HELDOUT_PER_RELATION = 150
DOWNSTREAM_PER_RELATION = 150
TYPING_MIN_EXAMPLES = 40
PARSED_SENTENCES = 2500
RELATIONS_KEPT = 12


@functools.cache
def _synsets() -> dict[str, wordnet.Synset]:
    return wordnet.read()


def all_facts() -> list[Fact]:
    return geo.load() + wordnet.relation_facts(_synsets())


def _examples(pairs: Sequence[tuple[str, str]], names: Sequence[str]) -> list[Example]:
    index = {name: k for k, name in enumerate(names)}
    return [Example((text,), index[label]) for text, label in pairs]


def facts_task(facts: Sequence[Fact], seed: int) -> TaskData:
    """``kfacts`` from ``facts``: train on the pretrain group, validate and test on held-out entities."""
    rng = random.Random(seed)
    grouped = by_group(facts)
    train = capped(grouped["pretrain"], PRETRAIN_PER_RELATION, rng)
    heldout = capped(grouped["heldout"], HELDOUT_PER_RELATION, rng)
    train += negatives(train, NEGATIVE_SHARE, rng)
    heldout += negatives(heldout, NEGATIVE_SHARE, rng)
    rng.shuffle(train)
    rng.shuffle(heldout)
    names = tuple(sorted({f.relation for f in train + heldout}))
    half = len(heldout) // 2
    return TaskData(
        "kfacts", CLASSIFICATION, ("text",), names,
        _examples(texts(train, PRETRAIN_TEMPLATES, rng), names),
        _examples(texts(heldout[:half], PRETRAIN_TEMPLATES, rng), names),
        _examples(texts(heldout[half:], PRETRAIN_TEMPLATES, rng), names),
    )  # fmt: skip


def _split(name: str, pairs: Sequence[tuple[str, str]], seed: int) -> TaskData:
    names = tuple(sorted({label for _, label in pairs}))
    train, validation, test = split_examples(_examples(pairs, names), (0.2, 0.2), seed, stratify=True)
    return TaskData(name, CLASSIFICATION, ("text",), names, train, validation, test)


def relation_task(facts: Sequence[Fact], seed: int) -> TaskData:
    """``krel`` from ``facts``: the downstream group's pairs in downstream templates."""
    rng = random.Random(seed)
    chosen = capped(by_group(facts)["downstream"], DOWNSTREAM_PER_RELATION, rng)
    chosen += negatives(chosen, NEGATIVE_SHARE, rng)
    return _split("krel", texts(chosen, DOWNSTREAM_TEMPLATES, rng), seed)


def typing_task(examples: Sequence[tuple[str, str, str]], seed: int) -> TaskData:
    """``ktyping`` from (marked sentence, class, anchor): downstream anchors, classes with at least
    ``TYPING_MIN_EXAMPLES`` examples."""
    chosen = [(text, label) for text, label, anchor in examples if group_of(anchor) == "downstream"]
    counts = Counter(label for _, label in chosen)
    return _split("ktyping", [(t, label) for t, label in chosen if counts[label] >= TYPING_MIN_EXAMPLES], seed)


def dependency_task(sentences: Sequence[parses.Sentence], seed: int) -> TaskData:
    """``kdeps`` from parsed sentences: arcs and non-arcs, sentences split 80/10/10 (fixed)."""
    rng = random.Random(seed)
    examples = parses.arc_examples(sentences, 2, RELATIONS_KEPT, rng)
    names = tuple(sorted({label for _, label, _ in examples}))
    splits: dict[str, list[tuple[str, str]]] = {g: [] for g in ("pretrain", "heldout", "downstream")}
    for text, label, index in examples:
        splits[group_of(" ".join(w for w, _, _ in sentences[index]))].append((text, label))
    train = splits["pretrain"] + splits["downstream"]  # sentences carry no entity: 80% train
    rng.shuffle(train)
    held = splits["heldout"]
    return TaskData(
        "kdeps", CLASSIFICATION, ("text",), names, _examples(train, names),
        _examples(held[: len(held) // 2], names), _examples(held[len(held) // 2 :], names),
    )  # fmt: skip


def _dependency_sentences() -> list[parses.Sentence]:
    from ..bundled import task_texts

    return parses.parse(task_texts("rotten_tomatoes"), PARSED_SENTENCES)


KNOWLEDGE_TASKS: dict[str, Callable[[int], TaskData]] = {
    "kfacts": lambda seed: facts_task(all_facts(), seed),
    "kdeps": lambda seed: dependency_task(_dependency_sentences(), seed),
    "krel": lambda seed: relation_task(all_facts(), seed),
    "ktyping": lambda seed: typing_task(list(wordnet.typing_examples(_synsets())), seed),
}
"""The K-Adapter tasks by name: ``build(seed) -> TaskData``."""
