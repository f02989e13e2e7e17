"""Strict readers for delimited text and JSON lines, used for bundled corpora and user files alike.

They keep the line number of every row and refuse malformed input with a message that names the
source, the line and the fix, because a silently skipped or mis-split row corrupts a dataset
without anyone noticing (a stray quote in a tab-separated file can swallow hundreds of rows).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, TextIO

from adapterkit.errors import ParameterError

#: How to fix text in another encoding, for the messages of :func:`decode_text`.
CONVERT_HINT = "convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT` (for Latin-1 text)"


class Row(NamedTuple):
    """A row's fields by column name, with the line it starts on (1-based) for error messages."""

    line: int
    fields: Mapping[str, Any]


def decode_text(data: bytes, source: str, encoding: str = "utf-8", fix: str = CONVERT_HINT) -> str:
    """``data`` decoded from ``encoding`` (a UTF-8 byte-order mark dropped).

    Raises:
        ValueError: a byte sequence that is not ``encoding``, naming ``source``, the line, the column
            and the byte, then ``fix``.
    """
    utf8 = encoding.replace("_", "-").lower() in ("utf-8", "utf8")
    try:
        return data.decode("utf-8-sig" if utf8 else encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ValueError(
            f"{source} line {line}: not {'UTF-8' if utf8 else encoding} text (byte 0x{data[error.start]:02x} at column {column}); {fix}"
        ) from error


def read_delimited(
    stream: TextIO, source: str, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL
) -> tuple[tuple[str, ...], list[Row]]:
    """Read a delimited table whose first row is the header; return (columns, rows).

    Blank lines are skipped. `quoting=csv.QUOTE_NONE` reads files that never quote and whose
    texts may begin with a quote character.
    """
    reader = csv.reader(stream, delimiter=delimiter, quoting=quoting)
    rows: list[Row] = []
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{source} is empty: expected a header row, then one row per example")
        columns = tuple(name.strip() for name in header)
        start = reader.line_num + 1
        for values in reader:
            if values:
                if len(values) != len(columns):
                    raise ValueError(
                        f"{source} line {start}: expected {len(columns)} fields {list(columns)}, "
                        f"found {len(values)}; quote fields that contain {delimiter!r}, quotes "
                        "or line breaks"
                    )
                rows.append(Row(start, dict(zip(columns, values))))
            start = reader.line_num + 1
    except csv.Error as error:
        raise ValueError(f"{source} line {reader.line_num}: malformed row ({error})") from error
    return columns, rows


def read_json_lines(stream: Iterable[str], source: str) -> list[Row]:
    """Read JSON Lines: one JSON object per line, blank lines skipped."""
    rows: list[Row] = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{source} line {number}: not valid JSON ({error.msg}); write one JSON object "
                "per line (JSON Lines), not a JSON array or an object spread over several lines"
            ) from error
        if not isinstance(value, dict):
            raise ValueError(
                f"{source} line {number}: expected a JSON object with one field per column, "
                f"got a JSON {type(value).__name__}"
            )
        rows.append(Row(number, value))
    return rows


def field_text(value: Any) -> str:
    """A field's value as text, stripped; a missing value (JSON ``null``) is the empty text."""
    return "" if value is None else str(value).strip()


def require_columns(present: Iterable[str], needed: Iterable[str], where: str, fix: str) -> None:
    """Unless every needed column is present, fail listing the columns there and how to `fix` it.

    Raises:
        ParameterError: a column is missing; ``fix`` is its template's last sentence, so it may name
            parameters as ``{text_columns:=}`` (see ``adapterkit.errors``).
    """
    present = list(present)
    missing = [name for name in needed if name not in present]
    if missing:
        raise ParameterError(
            "{where}: missing column(s) {missing}; columns present: {present}. " + fix, where=where, missing=missing, present=present
        )
