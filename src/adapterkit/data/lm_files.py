"""Causal-LM training files: instructions with responses, or plain texts (JSON Lines, CSV or TSV).

A row is one of these column sets (an extra or a missing column is an error, never ignored):

- ``instruction`` and ``response``, optionally ``input`` (Alpaca's data: joined to the instruction
  after a blank line, ``prompts.user_message``): instruction tuning, the loss on the response;
- ``prompt`` and ``completion``, optionally ``input``: the same under other names;
- ``text`` alone: plain language modelling, the loss on every token.

Every row of a file has the form of its first row. A missing validation or test file is a seeded
10% of the train file, as for labelled files (``files.py``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from adapterkit.data.files import read_rows
from adapterkit.data.prompts import SIMPLE, user_message
from adapterkit.data.splitting import split_examples
from adapterkit.data.tables import Row, field_text
from adapterkit.data.task import INSTRUCTION, LANGUAGE_MODEL, Example, TaskData, require_text

#: The forms of a row: (required columns, optional columns, task kind).
FORMS = {
    "instruction/response": (("instruction", "response"), ("input",), INSTRUCTION),
    "prompt/completion": (("prompt", "completion"), ("input",), INSTRUCTION),
    "text": (("text",), (), LANGUAGE_MODEL),
}
#: ``--kind`` values that read a file as causal-LM data, and the task kind each gives.
FILE_KINDS = {"instruction": INSTRUCTION, "text": LANGUAGE_MODEL}
ACCEPTED = "instruction + response (+ optional input), prompt + completion (+ optional input), or text alone"
_HELD_OUT = 0.1


def first_columns(path: Path) -> list[str] | None:
    """The columns of a file's first row (a JSON Lines object's keys, a CSV/TSV header), or None
    when that cannot be read (the loaders then say why)."""
    delimiter = {".csv": ",", ".tsv": "\t"}.get(path.suffix.lower())
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            if delimiter is not None:
                return [name.strip() for name in next(csv.reader(stream, delimiter=delimiter), [])]
            line = next((line for line in stream if line.strip()), "")
            value = json.loads(line) if line else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error):
        return None
    return list(value) if isinstance(value, dict) else None


def is_lm_file(path: Path, label_column: str) -> bool:
    """Whether a train file given without ``--kind`` is meant as causal-LM data: its first row
    has no ``label_column`` but a column of :data:`FORMS` (then read, and refused with the
    accepted columns unless its columns are one form)."""
    columns = first_columns(path)
    names = {name for required, optional, _ in FORMS.values() for name in (*required, *optional)}
    return columns is not None and label_column not in columns and bool(names & set(columns))


def _form_of(columns: list[str]) -> str | None:
    present = set(columns)
    for name, (required, optional, _) in FORMS.items():
        if set(required) <= present <= {*required, *optional}:
            return name
    return None


def read_lm_file(path: Path, kind: str | None) -> tuple[str, list[Example]]:
    """(task kind, examples) of a file whose rows all have one form (of task kind ``kind`` when
    given: ``instruction`` or ``language_model``).

    Raises:
        ValueError: a missing or empty file, or a row of other columns or with an empty text.
    """
    first: tuple[str, Row] | None = None
    examples = []
    for row in read_rows(path):
        where = f"{path} line {row.line}"
        form = _form_of(list(row.fields))
        if form is None or (kind is not None and FORMS[form][2] != kind):
            wanted = ACCEPTED if kind is None else " or ".join(n for n, f in FORMS.items() if f[2] == kind)
            raise ValueError(
                f"{where}: columns {sorted(row.fields)} are not causal-LM data; the accepted columns are {wanted} "
                "(for classification, name the columns with --text-column and --label-column)"
            )
        if first is None:
            first = form, row
        elif form != first[0]:
            raise ValueError(
                f"{where}: columns {sorted(row.fields)} ({form}), but line {first[1].line} is {first[0]}; "
                "use one form for every row of a file"
            )
        required, _, _ = FORMS[form]
        texts = tuple(field_text(row.fields[column]) for column in required)
        require_text(texts, where, required)
        if len(texts) == 2:
            texts = (user_message(texts[0], field_text(row.fields.get("input"))), texts[1])
        examples.append(Example(texts, 0))
    assert first is not None  # read_rows refuses an empty file
    return FORMS[first[0]][2], examples


def prompt_of(fields: dict, where: str) -> str:
    """The message of an input row for generation: ``instruction`` or ``prompt`` with an optional
    ``input`` joined; a ``response`` or ``completion`` (a training row) is ignored.

    Raises:
        ValueError: neither column, other columns, or an empty text.
    """
    for required, optional, kind in FORMS.values():
        if kind == INSTRUCTION and required[0] in fields:
            extra = sorted(set(fields) - {*required, *optional})
            if not extra:
                require_text((field_text(fields[required[0]]),), where, required[:1])
                return user_message(field_text(fields[required[0]]), field_text(fields.get("input")))
    raise ValueError(
        f"{where}: columns {sorted(fields)} are not a prompt; give instruction (or prompt), with an optional input"
    )


def load_lm_files(
    train_file: str | os.PathLike[str],
    validation_file: str | os.PathLike[str] | None = None,
    test_file: str | os.PathLike[str] | None = None,
    kind: str | None = None,
    prompt_format: str = SIMPLE,
    seed: int = 0,
) -> TaskData:
    """An ``instruction`` or ``language_model`` task from files of the rows above, named after
    the train file.

    Args:
        kind: ``instruction`` or ``text`` (``--kind``), or None for the train file's form.
        prompt_format: how the instruction task's prompts are written (``data/prompts.py``).

    Raises:
        ValueError: a missing or empty file, a row of unknown or mixed columns or with an empty
            text, files of different kinds, or too few examples to split off a validation or
            test set.
    """
    if kind is not None and kind not in FILE_KINDS:
        raise ValueError(f"kind must be None or one of {', '.join(FILE_KINDS)}, got {kind!r}")
    train_path = Path(train_file)
    task_kind, examples = read_lm_file(train_path, FILE_KINDS.get(kind))
    fractions = (_HELD_OUT if validation_file is None else 0.0, _HELD_OUT if test_file is None else 0.0)
    train, validation, test = split_examples(examples, fractions, seed, stratify=False)
    if validation_file is not None:
        validation = read_lm_file(Path(validation_file), task_kind)[1]
    if test_file is not None:
        test = read_lm_file(Path(test_file), task_kind)[1]
    for split, held in (("validation", validation), ("test", test)):
        if not held:
            raise ValueError(
                f"{train_path} has too few examples ({len(examples)}) to split off a {split} set; "
                f"add examples or give --{split}-file"
            )
    columns = ("instruction", "response") if task_kind == INSTRUCTION else ("text",)
    return TaskData(
        train_path.stem, task_kind, columns, (), train, validation, test,
        prompt_format=prompt_format if task_kind == INSTRUCTION else None,
    )
