"""Seeded, stratified splitting shared by the bundled tasks and user files.

Results are only comparable across methods if every method sees the same split, so the split
depends on nothing but the examples and the seed. Each label is split on its own (stratification)
and its share is rounded half up, so a label with fewer than five examples stays entirely in
train instead of making a split fail or leaving train without it.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from adapterkit.data.task import Example


def _share(count: int, fraction: float) -> int:
    """How many of `count` examples a split with this fraction gets (rounded half up)."""
    return int(count * fraction + 0.5)


def split_examples(
    examples: list[Example], fractions: tuple[float, float], seed: int, stratify: bool
) -> tuple[list[Example], list[Example], list[Example]]:
    """Split into (train, validation, test), with `fractions` = (validation, test) shares.

    With `stratify` every label keeps its proportion in each split (for classification);
    otherwise the examples are split as one group (for regression). Each returned split is in a
    seeded random order, so any prefix of it is itself a random sample: that is how
    ``load_task(max_examples=...)`` subsamples without changing which split an example is in.
    """
    rng = np.random.default_rng(seed)
    groups: dict[int | float, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        groups[example.label if stratify else 0].append(index)
    train: list[int] = []
    validation: list[int] = []
    test: list[int] = []
    for key in sorted(groups):
        members = rng.permutation(groups[key]).tolist()
        n_validation = _share(len(members), fractions[0])
        n_test = _share(len(members), fractions[1])
        validation += members[:n_validation]
        test += members[n_validation : n_validation + n_test]
        train += members[n_validation + n_test :]
    train_examples, validation_examples, test_examples = (
        [examples[i] for i in rng.permutation(part).tolist()] for part in (train, validation, test)
    )
    return train_examples, validation_examples, test_examples


def hold_out_groups(
    examples: list[Example], group_of: list[str], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split into (kept, held out) with whole groups held out, about ``fraction`` of the groups.

    For data whose examples share a source (SNLI's several hypotheses per premise): an example of
    a held-out group never has a sibling in the kept part. ``group_of[i]`` names example ``i``'s
    group. The groups are drawn in a seeded order (of the sorted names, so the draw does not
    depend on the examples' order), and both parts come back in a seeded random order.
    """
    rng = np.random.default_rng(seed)
    names = sorted(set(group_of))
    held_names = {names[i] for i in rng.permutation(len(names))[: _share(len(names), fraction)].tolist()}
    kept = [i for i, group in enumerate(group_of) if group not in held_names]
    held = [i for i, group in enumerate(group_of) if group in held_names]
    kept_examples, held_examples = ([examples[i] for i in rng.permutation(part).tolist()] for part in (kept, held))
    return kept_examples, held_examples
