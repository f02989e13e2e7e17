"""Facts as relation-classification examples: marked entity pairs, held-out groups, negatives.

Every knowledge task here is relation classification over a pair of marked spans, in the form the
released K-Adapter code feeds its factual adapter: the subject between ``@`` markers, the object
between ``#`` markers. A fact belongs to a *group* fixed by a hash of its anchor entity (a country,
a WordNet synset; never by the seed), so the pretraining facts, the held-out entities that
evaluate pretraining, and the downstream pairs never overlap whatever seed a run uses:
``pretrain`` (60%), ``heldout`` (20%), ``downstream`` (20%).
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

GROUPS = ("pretrain", "heldout", "downstream")
NO_RELATION = "no_relation"


@dataclass(frozen=True)
class Fact:
    """``relation(subject, object)``; ``anchor`` names the entity whose group the fact takes;
    ``kind`` tells which entity types the pair has (negatives are drawn with the same kinds);
    ``context`` formats the marked pair into a text (None: the task's templates do)."""

    subject: str
    object: str
    relation: str
    anchor: str
    kind: str
    context: str | None = None


def group_of(anchor: str) -> str:
    """The fixed group of an anchor entity: a hash, so it does not depend on any seed."""
    bucket = int(hashlib.sha1(anchor.encode("utf-8")).hexdigest(), 16) % 10
    return GROUPS[0] if bucket < 6 else GROUPS[1] if bucket < 8 else GROUPS[2]


def mark(subject: str, obj: str, template: str = "@ {s} @ ; # {o} # .") -> str:
    """The pair in a text: ``template`` with ``{s}`` and ``{o}`` (markers included in it)."""
    return template.format(s=subject, o=obj)


def negatives(facts: Sequence[Fact], share: float, rng: random.Random) -> list[Fact]:
    """``no_relation`` pairs: for a ``share`` of the facts, the subject with the object of
    another fact of the same kind that does not hold between them (in any relation)."""
    holding = {(f.subject, f.object) for f in facts}
    objects: dict[str, list[Fact]] = defaultdict(list)
    for fact in facts:
        objects[fact.kind].append(fact)
    drawn = []
    for fact in rng.sample(list(facts), round(share * len(facts))):
        for _ in range(10):
            other = rng.choice(objects[fact.kind])
            if (fact.subject, other.object) not in holding and other.object != fact.subject:
                drawn.append(Fact(fact.subject, other.object, NO_RELATION, fact.anchor, fact.kind, _swap(fact, other)))
                break
    return drawn


def _swap(fact: Fact, other: Fact) -> str | None:
    """A negative's context: the subject's half of the fact's and the object's of the other's."""
    if fact.context is None or other.context is None:
        return None
    return f"{fact.context.split(' | ')[0]} | {other.context.split(' | ')[-1]}"


def by_group(facts: Iterable[Fact]) -> dict[str, list[Fact]]:
    grouped: dict[str, list[Fact]] = {g: [] for g in GROUPS}
    for fact in facts:
        grouped[group_of(fact.anchor)].append(fact)
    return grouped


def capped(facts: Sequence[Fact], per_relation: int, rng: random.Random) -> list[Fact]:
    """At most ``per_relation`` facts of each relation (a seeded sample), so no relation swamps the rest."""
    by_relation: dict[str, list[Fact]] = defaultdict(list)
    for fact in facts:
        by_relation[fact.relation].append(fact)
    kept = []
    for relation in sorted(by_relation):
        found = by_relation[relation]
        kept += found if len(found) <= per_relation else rng.sample(found, per_relation)
    return kept


def texts(facts: Sequence[Fact], templates: Sequence[str], rng: random.Random) -> list[tuple[str, str]]:
    """(text, relation) per fact: its own context, or one of ``templates`` drawn per fact."""
    return [(f.context if f.context is not None else mark(f.subject, f.object, rng.choice(templates)), f.relation) for f in facts]


Builder = Callable[[], list[Fact]]
