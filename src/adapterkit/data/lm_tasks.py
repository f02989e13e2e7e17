"""The causal-LM tasks ``load_task`` knows: translation (Django's catalogues, the Bible in English
and Spanish) and domain language modelling.

Domain language modelling (``<corpus>_lm``): the texts of a bundled English corpus of one domain
(parliament speeches, news articles, health tweets, film reviews) with the corpus's own seeded
80/10/10 split (``bundled.load_task``), the labels dropped; the loss is on every token
(``data/causal_lm.py``), evaluation the held-out perplexity (``inference/perplexity.py``).
"""

from __future__ import annotations

import dataclasses

from adapterkit.data import bundled
from adapterkit.data.bible import TASKS as BIBLE_TASKS
from adapterkit.data.bible import load_bible_task
from adapterkit.data.django_catalogues import TASKS as DJANGO_TASKS
from adapterkit.data.django_catalogues import load_django_task
from adapterkit.data.task import LANGUAGE_MODEL, Example, TaskData

#: English corpora of four domains, as language-modelling tasks ``<name>_lm``.
DOMAINS = ("parlspeech_en", "news_articles", "health_tweets", "rotten_tomatoes")
DOMAIN_TASKS = tuple(f"{domain}_lm" for domain in DOMAINS)


def generation_tasks() -> list[str]:
    """Names of the causal-LM tasks (translation and domain language modelling), sorted."""
    return sorted([*DJANGO_TASKS, *BIBLE_TASKS, *DOMAIN_TASKS])


def language_model_task(task: TaskData, name: str) -> TaskData:
    """``task``'s texts (first text column) with its splits, as a language-modelling task."""
    def texts(split: list[Example]) -> list[Example]:
        return [Example((example.texts[0],), 0) for example in split]

    return dataclasses.replace(
        task, name=name, kind=LANGUAGE_MODEL, text_columns=("text",), label_names=(),
        train=texts(task.train), validation=texts(task.validation), test=texts(task.test),
    )


def load_generation_task(name: str, seed: int = 0, max_examples: int | None = None) -> TaskData:
    """A task of :func:`generation_tasks` with its seeded split (see the modules named above).

    Raises:
        ValueError: an unknown name, or a bad ``max_examples``.
    """
    if name in DJANGO_TASKS:
        return load_django_task(name, seed, max_examples)
    if name in BIBLE_TASKS:
        return load_bible_task(name, seed, max_examples)
    if name not in DOMAIN_TASKS:
        raise ValueError(f"unknown causal-LM task {name!r}; available: {', '.join(generation_tasks())}")
    return language_model_task(bundled.load_task(name.removesuffix("_lm"), seed, max_examples), name)
