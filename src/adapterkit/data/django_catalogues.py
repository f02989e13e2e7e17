"""Translation tasks from Django's message catalogues: English UI strings and their translations.

The ``django`` wheel ships compiled gettext catalogues (``.mo``) for about 100 languages:
``django/conf/locale/<ll>/LC_MESSAGES/django.mo`` plus one per contrib app
(``django/contrib/<app>/locale/<ll>/LC_MESSAGES/django.mo``), all translating the same English
strings. That makes them multi-way parallel text: about 700 English -> target pairs per language
here, the same English sources for every language. They are read with the standard library's
``gettext.GNUTranslations``; the package is never imported.

What is kept of a catalogue (:func:`read_catalogue`): singular entries only. Plural entries
(keys ``(msgid, n)``) are dropped, as are entries with a context (``"context\\x04msgid"``: the
same English word translated two ways, e.g. ``"alt. month\\x04January"``, which would give one
source two targets), the header (empty msgid), empty translations and entries with a line break
in either text (a translation is one line, which is what generation stops at).

The split is by English source string and the same for every language
(:func:`split_of`): a seeded hash of the source decides train / validation / test (75/10/15), so a
string held out for German is held out for Spanish too, and a model trained on the union of the
languages never sees a test source in another language's training data.

Tasks: ``django_<ll>`` for each language in :data:`LANGUAGES`, and ``django_multi``: the union of
de, es, fr and nl, each example labelled with its target language (one adapter for all languages,
the prompt naming the target language).
"""

from __future__ import annotations

import gettext
import hashlib
from pathlib import Path

from .packages import package_root
from .task import TRANSLATION, Example, TaskData

#: Catalogue code -> the language's English name, which the prompt names (``data/causal_lm.py``).
LANGUAGES = {
    "de": "German",
    "es": "Spanish",
    "fr": "French",
    "nl": "Dutch",
    "it": "Italian",
    "pt": "Portuguese",
}
#: The languages of ``django_multi`` (one shared adapter).
MULTI = ("de", "es", "fr", "nl")
MULTI_TASK = "django_multi"
TASKS = (*(f"django_{code}" for code in LANGUAGES), MULTI_TASK)
SPLITS = ("train", "validation", "test")
#: Validation and test shares; train gets the rest.
_HELD_OUT = (0.1, 0.15)
_CONTEXT_SEPARATOR = "\x04"


def read_catalogue(path: Path) -> dict[str, str]:
    """The singular, context-free, one-line entries of one ``.mo`` file: ``{msgid: msgstr}``.

    Raises:
        ValueError: the file is not a gettext catalogue (naming the file).
    """
    try:
        with open(path, "rb") as stream:
            catalogue = gettext.GNUTranslations(stream)._catalog
    except OSError as error:  # gettext raises OSError for a bad magic number or a truncated file
        raise ValueError(f"{path}: not a readable gettext .mo catalogue ({error})") from error
    kept: dict[str, str] = {}
    for key, value in catalogue.items():
        if not isinstance(key, str) or not key or _CONTEXT_SEPARATOR in key:
            continue  # plural forms ((msgid, n) keys), the header, entries with a context
        source, target = key.strip(), value.strip()
        if source and target and "\n" not in source and "\n" not in target:
            kept[source] = target
    return kept


def catalogue_files(root: Path, code: str) -> list[Path]:
    """Django's core catalogue of language ``code`` and its contrib apps' (sorted, existing only)."""
    core = root / "conf" / "locale" / code / "LC_MESSAGES" / "django.mo"
    contrib = sorted(root.glob(f"contrib/*/locale/{code}/LC_MESSAGES/django.mo"))
    return [path for path in (core, *contrib) if path.is_file()]


def read_pairs(root: Path, code: str) -> dict[str, str]:
    """All English -> ``code`` pairs under Django's package folder ``root`` (the first catalogue
    that translates a source wins: the core catalogue, then the contrib apps in name order).

    Raises:
        ValueError: no catalogue of ``code`` there.
    """
    files = catalogue_files(root, code)
    if not files:
        raise ValueError(f"no Django catalogue for language {code!r} under {root}; is django installed in full?")
    pairs: dict[str, str] = {}
    for path in files:
        for source, target in read_catalogue(path).items():
            pairs.setdefault(source, target)
    return pairs


def split_of(source: str, seed: int) -> str:
    """``train``, ``validation`` or ``test`` for English ``source``: a seeded hash, so the same for
    every language and every run with the same seed (75/10/15 in expectation: about 110 test strings per language)."""
    digest = hashlib.sha256(f"{seed}\x00{source}".encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2**64
    validation, test = _HELD_OUT
    return "test" if share < test else "validation" if share < test + validation else "train"


def translation_task(
    name: str, pairs_by_language: dict[str, dict[str, str]], seed: int = 0, max_examples: int | None = None
) -> TaskData:
    """A translation :class:`TaskData` from ``{code: {source: target}}``: texts ``(source, target)``,
    label the target language's index in ``label_names`` (English language names). Within a split,
    examples are ordered by source then language; ``max_examples`` keeps the first that many
    sources of each split (all their languages), a deterministic subset."""
    codes = sorted(pairs_by_language)
    splits: dict[str, list[Example]] = {split: [] for split in SPLITS}
    sources = sorted(set().union(*(pairs.keys() for pairs in pairs_by_language.values())))
    by_split: dict[str, list[str]] = {split: [] for split in SPLITS}
    for source in sources:
        by_split[split_of(source, seed)].append(source)
    for split, chosen in by_split.items():
        if max_examples is not None:
            # a seeded but stable subset: order by the same hash, then keep the first N
            chosen = sorted(chosen, key=lambda s: hashlib.sha256(f"{seed}\x01{s}".encode()).digest())[:max_examples]
        for source in chosen:
            for index, code in enumerate(codes):
                target = pairs_by_language[code].get(source)
                if target is not None:
                    splits[split].append(Example((source, target), index))
    names = tuple(LANGUAGES.get(code, code) for code in codes)
    return TaskData(name, TRANSLATION, ("source", "target"), names, splits["train"], splits["validation"], splits["test"])


def load_django_task(name: str, seed: int = 0, max_examples: int | None = None) -> TaskData:
    """Bundled task ``django_<ll>`` or ``django_multi`` (see the module docstring).

    Raises:
        ValueError: an unknown name (listing the known ones) or a bad ``max_examples``.
    """
    if name not in TASKS:
        raise ValueError(f"unknown Django translation task {name!r}; available: {', '.join(TASKS)}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive count or None, got {max_examples}")
    root = package_root("django", name)
    codes = MULTI if name == MULTI_TASK else (name.removeprefix("django_"),)
    return translation_task(name, {code: read_pairs(root, code) for code in codes}, seed, max_examples)
