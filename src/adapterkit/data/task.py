"""The in-memory form of a dataset: what every loader returns and every trainer consumes.

Keeping one small, plain structure (texts plus an int or float label) lets the training code stay
independent of where the data came from: a bundled corpus or a user's CSV/JSONL files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CLASSIFICATION = "classification"
REGRESSION = "regression"
MASKED_LM = "masked_lm"
"""Texts alone, for a masked-LM objective (``data/masking.py``): the examples' labels are unused."""
KINDS = (CLASSIFICATION, REGRESSION, MASKED_LM)
#: Causal-LM task forms (``data/causal_lm.py``): a translation example's texts are (source,
#: target), its label the index of its target language in ``label_names``; a language-modelling
#: example is one text whose label (0) is unused.
TRANSLATION = "translation"
LANGUAGE_MODEL = "language_model"
#: An instruction example's texts are (instruction, response), its label (0) unused; the loss is on
#: the response (``data/causal_lm.py``), the prompt written in the task's ``prompt_format``.
INSTRUCTION = "instruction"
GENERATION_KINDS = (TRANSLATION, LANGUAGE_MODEL, INSTRUCTION)
MODALITIES = ("text", "image")

#: How many labels :meth:`TaskData.describe` spells out before it only gives the count.
_LABELS_SHOWN = 6


def require_text(texts: Sequence[str], where: str, columns: Sequence[str] = ()) -> None:
    """Refuse an input whose text, or either text of a pair, is empty or whitespace only.

    Such an input tokenises to nothing (a decoder then fails deep inside the model, "cannot
    reshape a tensor of 0 elements") or to special tokens alone, and next to other inputs it
    silently gets a label. Every reader of texts (files, the CLI's inputs, the tokenisation
    behind ``predict``/``evaluate``/training) calls this one check.

    Args:
        texts: one input: one text, or two for a pair task.
        where: names the input in the message, e.g. ``"texts[3]"`` or ``"data.csv line 4"``.
        columns: the columns ``texts`` came from, named in the message when given.

    Raises:
        ValueError: e.g. ``"data.csv line 4: empty text in column 'review' (or whitespace only);
            give every input some text, or drop the row"``.
    """
    for position, text in enumerate(texts):
        if not text.strip():
            if columns:
                which = f" in column {columns[position]!r}"
            elif len(texts) > 1:
                which = f" (text {position + 1} of the pair)"
            else:
                which = ""
            raise ValueError(
                f"{where}: empty text{which} (or whitespace only); give every input some text, or drop the row"
            )


@dataclass(frozen=True)
class Example:
    """One input: one text, or two for pair tasks, and its label.

    The label is a class id (an index into :attr:`TaskData.label_names`) for classification and
    a float score for regression.
    """

    texts: tuple[str, ...]
    label: int | float


@dataclass(frozen=True)
class TaskData:
    """A task with fixed train/validation/test splits.

    Frozen so a task cannot be relabelled by accident after loading; the split lists themselves
    are plain lists so trainers can index and slice them cheaply. ``modality`` is ``text``
    (examples are :class:`Example`) or ``image`` (``images.ImageExample``, one column ``image``).
    ``prompt_format`` is how an instruction task's prompts are written (``data/prompts.py``).
    """

    name: str
    kind: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    modality: str = "text"
    prompt_format: str | None = None

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"task {self.name!r}: modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.kind not in KINDS + GENERATION_KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS + GENERATION_KINDS}, got {self.kind!r}")
        if not 1 <= len(self.text_columns) <= 2:
            raise ValueError(
                f"task {self.name!r}: a task has one text column or a pair, "
                f"got {len(self.text_columns)}: {self.text_columns}"
            )
        if (self.kind in (CLASSIFICATION, TRANSLATION)) != bool(self.label_names):
            raise ValueError(
                f"task {self.name!r}: classification needs label names (translation: its target languages) and "
                f"regression and language modelling must have "
                f"none; got kind={self.kind!r} with label_names={self.label_names}"
            )

    @property
    def num_labels(self) -> int:
        """Output size of the prediction head: the number of classes, or 1 for regression."""
        return len(self.label_names) if self.kind == CLASSIFICATION else 1

    def describe(self) -> str:
        """A one-line summary for logs and reports."""
        if self.kind in (REGRESSION, LANGUAGE_MODEL):
            target = self.kind.replace("_", " ")
        elif self.kind == INSTRUCTION:
            target = f"responses to instructions (prompt format {self.prompt_format})"
        elif self.kind == TRANSLATION:
            target = f"translation into {', '.join(self.label_names)}"
        elif self.kind == MASKED_LM:
            target = "masked-LM texts"
        elif len(self.label_names) <= _LABELS_SHOWN:
            target = f"{self.num_labels}-way classification ({', '.join(self.label_names)})"
        else:
            target = f"{self.num_labels}-way classification"
        texts = " + ".join(self.text_columns)
        return (
            f"{self.name}: {target} from {texts}; train/validation/test = "
            f"{len(self.train)}/{len(self.validation)}/{len(self.test)}"
        )
