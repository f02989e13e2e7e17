"""WordNet 3.0 from Debian's ``wordnet-base`` (``/usr/share/wordnet/data.*``), read directly.

Each line of a ``data.<pos>`` file is one synset (``wndb(5)``): offset, lexicographer file
number, type, its words, its pointers (symbol, target offset, target part of speech, and for a
lexical pointer such as an antonym which word of each synset), then ``|`` and the gloss, whose
quoted parts are example sentences. The lexicographer file numbers name the 45 classes of
``lexnames(5)``, which Debian does not ship as a file (nltk's reader wants one); they are here.

Relations used for the factual adapter (subject, object): ``hypernym`` (``@``: a dog is a kind of
canine), ``part_of`` (``#p``), ``member_of`` (``#m``) between nouns, and ``antonym`` (``!``) between
adjectives; the context of a pair is the two glosses (the paper's factual adapter reads sentences
about the pair too). Entity typing reads the example sentences of noun synsets: the synset's word
marked in its own example, labelled with the synset's lexicographer class (``noun.person`` ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .relations import Fact

ROOT = Path("/usr/share/wordnet")
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)  # fmt: skip
"""``lexnames(5)``: the lexicographer class of each file number."""
RELATIONS = {"@": "hypernym", "#p": "part_of", "#m": "member_of", "!": "antonym"}
_FILES = {"n": "noun", "a": "adj", "s": "adj"}


@dataclass(frozen=True)
class Synset:
    """One synset: ``key`` (``n:02084071``), its lexicographer class, words, pointers
    ``(symbol, target key, source word, target word)`` (word numbers from 1; 0: the synsets as a
    whole), definition and example sentences."""

    key: str
    lexname: str
    words: tuple[str, ...]
    pointers: tuple[tuple[str, str, int, int], ...]
    definition: str
    examples: tuple[str, ...]


def parse_line(line: str) -> Synset | None:
    """One line of a ``data.<pos>`` file (None for the licence lines at the top)."""
    if line.startswith(" ") or not line.strip():
        return None
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    offset, lexfile, pos, count = fields[0], int(fields[1]), fields[2], int(fields[3], 16)
    words = tuple(re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(count))
    at = 4 + 2 * count
    pointers = []
    for i in range(int(fields[at])):
        symbol, target, target_pos, numbers = fields[at + 1 + 4 * i : at + 5 + 4 * i]
        pointers.append((symbol, f"{_FILES.get(target_pos, target_pos)[0]}:{target}", int(numbers[:2], 16), int(numbers[2:], 16)))
    examples = tuple(re.findall(r'"([^"]+)"', gloss))
    definition = gloss.split('"')[0].strip().rstrip(";").strip()
    return Synset(f"{_FILES[pos][0]}:{offset}", LEXNAMES[lexfile], words, tuple(pointers), definition, examples)


def read(root: Path = ROOT, parts: Iterable[str] = ("noun", "adj")) -> dict[str, Synset]:
    """The synsets of ``data.noun``, ``data.adj`` ... under ``root``, by key."""
    synsets: dict[str, Synset] = {}
    for part in parts:
        path = root / f"data.{part}"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; install WordNet 3.0 from Debian: apt-get install -y wordnet-base wordnet-sense-index"
            )
        with open(path, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                synset = parse_line(line)
                if synset is not None:
                    synsets[synset.key] = synset
    return synsets


def relation_facts(synsets: dict[str, Synset]) -> list[Fact]:
    """The ``RELATIONS`` between the synsets, each with the two glosses as its context."""
    facts = []
    for synset in synsets.values():
        for symbol, target_key, source, target in synset.pointers:
            relation, other = RELATIONS.get(symbol), synsets.get(target_key)
            if relation is None or other is None:
                continue
            subject = synset.words[source - 1] if source else synset.words[0]
            obj = other.words[target - 1] if target else other.words[0]
            context = f"@ {subject} @ : {synset.definition} | # {obj} # : {other.definition}"
            kind = "adj-adj" if synset.key[0] == "a" else "noun-noun"
            facts.append(Fact(subject, obj, relation, f"wn:{synset.key}", kind, context))
    return facts


def typing_examples(synsets: dict[str, Synset]) -> Iterator[tuple[str, str, str]]:
    """(example sentence with the synset's word marked ``@ word @``, lexicographer class, anchor)
    for every example of a noun synset that contains one of its words."""
    for synset in synsets.values():
        if not synset.key.startswith("n:"):
            continue
        for example in synset.examples:
            for word in synset.words:
                found = re.search(rf"\b{re.escape(word)}\b", example, flags=re.IGNORECASE)
                if found:
                    marked = f"{example[: found.start()]}@ {found.group(0)} @{example[found.end():]}"
                    yield marked, synset.lexname, f"wn:{synset.key}"
                    break
