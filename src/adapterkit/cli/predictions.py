"""``predict --output FILE``: predictions as JSON Lines or a CSV/TSV table, and ``--scores`` lines.

Each prediction is a flat record: the input (its text column(s), or the image path), ``label``
(or ``value`` for regression, ``output`` for generated text, one column per task for several
adapters) and ``scores``, the probability of each class. JSON Lines writes one object per input
with ``scores`` as an object; a table writes ``score_<class>`` columns.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .paths import writable_file

FORMATS = {".jsonl": None, ".csv": ",", ".tsv": "\t"}


def output_file(path: str | os.PathLike | None) -> Path | None:
    """``--output``, checked before any work: a writable file with a known extension.

    Raises:
        ValueError: another extension, or a path that cannot be written (see ``paths.writable_file``).
    """
    if path is None:
        return None
    checked = writable_file(path, "--output")  # first: a folder is not a file of an unknown extension
    if checked.suffix.lower() not in FORMATS:
        raise ValueError(f"--output {path}: unknown extension; use .jsonl (JSON Lines), .csv or .tsv")
    return checked


def prediction_record(inputs: Mapping[str, Any], prediction) -> dict[str, Any]:
    """One record of a :class:`~adapterkit.inference.predict.Prediction`: the inputs, then
    ``value`` (regression) or ``label`` and ``scores``."""
    if not prediction.scores:
        return {**inputs, "value": prediction.label}
    return {**inputs, "label": prediction.label, "scores": {name: round(p, 6) for name, p in prediction.scores.items()}}


def scores_line(prediction) -> str:
    """``LABEL<TAB>class=p class=p ...`` (a regression value alone) for ``--scores`` on stdout."""
    if not prediction.scores:
        return f"{prediction.label:.6g}"
    return f"{prediction.label}\t" + " ".join(f"{name}={p:.4f}" for name, p in prediction.scores.items())


def write_records(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``records`` to ``path`` as JSON Lines or a table, by its extension (see the module
    docstring); nested ``scores`` become ``score_<class>`` columns in a table."""
    delimiter = FORMATS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as stream:
        if delimiter is None:
            for record in records:
                stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        rows = [_flat(record) for record in records]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(stream, columns, delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


def _flat(record: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update({f"score_{name}": p for name, p in value.items()})
        else:
            flat[key] = value
    return flat
