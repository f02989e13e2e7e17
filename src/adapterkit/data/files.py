"""Loading a task from the user's own CSV, TSV or JSON Lines files.

Every problem with a file is a ValueError naming the file, the line and the fix: a cryptic
KeyError deep inside training, or rows skipped without a word, costs a user far more time.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from adapterkit.data.labels import LabelCodec, as_number, class_name, infer_kind
from adapterkit.data.splitting import split_examples
from adapterkit.data.tables import CONVERT_HINT, Row, decode_text, field_text, read_delimited, read_json_lines, require_columns
from adapterkit.data.task import CLASSIFICATION, KINDS, MASKED_LM, Example, TaskData, require_text
from adapterkit.errors import ParameterError

_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_JSON_LINES = (".jsonl", ".json")
#: Share of the train file split off as validation or test when that file is not given.
_HELD_OUT = 0.1
#: Below this many train rows a label column with a value per row is not taken for text.
_FEW_ROWS = 20


class _Raw(NamedTuple):
    """An example before its label is encoded, with its location for error messages."""

    texts: tuple[str, ...]
    label: object
    where: str


def read_rows(path: Path, encoding: str = "utf-8", fix: str = CONVERT_HINT) -> list[Row]:
    """The rows of a .csv, .tsv or .jsonl/.json file, with their line numbers.

    Raises:
        ValueError: the file is missing, has another extension, is not ``encoding`` text (naming
            the line and ``fix``), is malformed, or holds no rows.
    """
    if not path.is_file():
        raise ValueError(f"{path}: file not found; check the path (relative to {Path.cwd()})")
    suffix = path.suffix.lower()
    if suffix not in _DELIMITERS and suffix not in _JSON_LINES:
        raise ValueError(
            f"{path}: unknown extension {suffix!r}; use .csv, .tsv, or .jsonl/.json with one "
            "JSON object per line"
        )
    stream = io.StringIO(decode_text(path.read_bytes(), str(path), encoding, fix), newline="")
    if suffix in _JSON_LINES:
        rows = read_json_lines(stream, str(path))
    else:
        rows = read_delimited(stream, str(path), _DELIMITERS[suffix])[1]
    if not rows:
        raise ValueError(f"{path} is empty: it holds no examples; add one example per row")
    return rows


def _read_examples(path: Path, text_columns: tuple[str, ...], label_column: str) -> list[_Raw]:
    examples = []
    for row in read_rows(path):
        where = f"{path} line {row.line}"
        require_columns(
            row.fields,
            (*text_columns, label_column),
            where,
            "Name the file's columns with {text_columns:=} and {label_column:=}.",
        )
        texts = tuple(field_text(row.fields[column]) for column in text_columns)
        require_text(texts, where, text_columns)
        if not field_text(row.fields[label_column]):
            raise ValueError(f"{where}: empty label in column {label_column!r}; fill it in or remove the row")
        examples.append(_Raw(texts, row.fields[label_column], where))
    return examples


def _require_label_column(path: Path, column: str, labels: list[object], inferred: bool) -> None:
    """Refuse a label column that holds a value of its own in most rows: text (a text column named
    as the label column) or, when the kind was inferred, numbers that look like a score.

    Raises:
        ParameterError: naming the column, its distinct values and the fix.
    """
    distinct = len({class_name(label) for label in labels})
    if len(labels) < _FEW_ROWS or distinct * 2 <= len(labels):
        return
    counts = {"path": path, "column": column, "distinct": distinct, "rows": len(labels)}
    if any(as_number(label) is None for label in labels):
        raise ParameterError(
            "{path}: column {column!r} looks like text ({distinct} distinct values in {rows} rows), not labels; "
            "name the label column with {label_column:=}", **counts
        )
    if inferred:
        raise ParameterError(
            "{path}: column {column!r} holds {distinct} distinct whole numbers in {rows} rows, too many for class "
            "labels; for a score give {kind:='regression'}, or name the label column with {label_column:=}", **counts
        )


def _encode(examples: list[_Raw], codec: LabelCodec) -> list[Example]:
    return [Example(raw.texts, codec.encode(raw.label, raw.where)) for raw in examples]


def load_files(
    train_file: str | os.PathLike[str],
    validation_file: str | os.PathLike[str] | None = None,
    test_file: str | os.PathLike[str] | None = None,
    text_columns: Sequence[str] = ("text",),
    label_column: str = "label",
    kind: str | None = None,
    seed: int = 0,
) -> TaskData:
    """Load a task from CSV (.csv), TSV (.tsv) or JSON Lines (.jsonl, .json) files.

    `text_columns` names one text column, or two for pair tasks. `kind=None` infers the task:
    regression when every train label is a number and some are fractional, otherwise
    classification, with the train file's labels (strings or integers) as class names, sorted.
    A missing validation or test file is replaced by a seeded, stratified 10% of the train file.
    The task is named after the train file.
    """
    columns = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    if not 1 <= len(columns) <= 2:
        raise ParameterError(
            "{text_columns:=} names {count} columns {columns}: a task takes one text column or a pair; join the "
            "extra columns into one text column first", count=len(columns), columns=list(columns)
        )
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be None (to infer it) or one of {KINDS}, got {kind!r}")
    if kind == MASKED_LM:
        raise ValueError(
            "masked_lm files are not read yet: load them as classification and convert with "
            "adapterkit.data.masking.as_masked_lm(task), or use a bundled mlm_<task>"
        )
    train_path = Path(train_file)
    train_raw = _read_examples(train_path, columns, label_column)
    labels = [raw.label for raw in train_raw]
    codec = LabelCodec.fit(kind or infer_kind(labels), labels)
    if codec.kind == CLASSIFICATION:
        _require_label_column(train_path, label_column, labels, inferred=kind is None)

    def read(file: str | os.PathLike[str]) -> list[Example]:
        return _encode(_read_examples(Path(file), columns, label_column), codec)

    fractions = (
        _HELD_OUT if validation_file is None else 0.0,
        _HELD_OUT if test_file is None else 0.0,
    )
    train, validation, test = split_examples(
        _encode(train_raw, codec), fractions, seed, stratify=codec.kind == CLASSIFICATION
    )
    validation = validation if validation_file is None else read(validation_file)
    test = test if test_file is None else read(test_file)
    for split, examples in (("validation", validation), ("test", test)):
        if not examples:  # a given file is never empty, so this split was carved from train
            raise ParameterError(
                "{path} has too few examples per label ({count} in all) to split off a {split} set; add "
                f"examples or pass {{{split}_file:=}}", path=train_path, count=len(train_raw), split=split
            )
    return TaskData(train_path.stem, codec.kind, columns, codec.names, train, validation, test)
