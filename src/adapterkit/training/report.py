"""Comparing runs: a table of results, as text, CSV or JSON records.

One row per run: the method, the task, the test metrics, the parameters trained and saved (a
folded prefix saves far fewer than it trains), time and memory, and the run (its folder's name),
so that two runs that read the same (seeds, settings) can still be told apart. The plot of the
same runs is ``report_plot.py``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .result import TrainingResult

_COLUMNS = ("method", "task", "test", "trainable params", "share", "saved params", "train time", "peak memory", "run")
FORMATS = ("table", "csv", "json")


def format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_count(count: int) -> str:
    if count >= 1_000_000:
        return f"{count / 1e6:.2f}M"
    if count >= 1_000:
        return f"{count / 1e3:.1f}K"
    return str(count)


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_label(result: TrainingResult) -> str:
    """The method, and the adapter's name when it says more (``prompt (prompt-text)``)."""
    return result.method if result.adapter in (result.method, result.task) else f"{result.method} ({result.adapter})"


def default_run_names(results: Sequence[TrainingResult]) -> list[str]:
    """The folder names of the runs' recorded output folders ("-" where none was kept)."""
    return [Path(r.output_dir).name if r.output_dir else "-" for r in results]


def _row(result: TrainingResult, run: str) -> list[str]:
    test = ", ".join(f"{name} {value:.4f}" for name, value in result.test_metrics.items())
    return [
        run_label(result),
        result.task,
        test,
        format_count(result.trainable_params),
        f"{100 * result.trainable_share:.3f}%",
        format_count(result.trainable_params if result.saved_params is None else result.saved_params),
        format_seconds(result.train_time_s),
        format_bytes(result.peak_memory_bytes),
        run,
    ]


def format_table(results: Sequence[TrainingResult], style: str = "markdown", runs: Sequence[str] | None = None) -> str:
    """Results as a ``markdown`` (pipe) table or a ``plain`` aligned-columns table; ``runs`` names
    each run (default: :func:`default_run_names`)."""
    if style not in ("markdown", "plain"):
        raise ValueError(f"table style must be 'markdown' or 'plain', got {style!r}")
    rows = [list(_COLUMNS)] + [_row(r, n) for r, n in zip(results, runs or default_run_names(results))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        if style == "markdown":
            lines.append("| " + " | ".join(cells) + " |")
            if index == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        else:
            lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def result_records(results: Sequence[TrainingResult], runs: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One flat record per run, for CSV and JSON: names, each test metric as ``test_<metric>``,
    raw counts and shares (fractions), seconds and bytes, and the majority-class accuracy."""
    records = []
    for result, run in zip(results, runs or default_run_names(results)):
        records.append({
            "run": run, "method": result.method, "adapter": result.adapter, "task": result.task, "kind": result.kind,
            "main_metric": result.main_metric,
            **{f"test_{name}": value for name, value in result.test_metrics.items()},
            "trainable_params": result.trainable_params, "trainable_share": result.trainable_share,
            "saved_params": result.saved_params, "saved_share": result.saved_share, "base_params": result.base_params,
            "train_time_s": result.train_time_s, "peak_memory_bytes": result.peak_memory_bytes,
            "majority_accuracy": result.majority_accuracy, "output_dir": result.output_dir,
        })  # fmt: skip
    return records


def format_records(records: Sequence[dict[str, Any]], format: str) -> str:
    """``records`` as ``csv`` (columns in order of first appearance; blank where a run has no such
    value) or ``json`` (a list of objects).

    Raises:
        ValueError: another format.
    """
    if format == "json":
        return json.dumps(list(records), indent=2)
    if format != "csv":
        raise ValueError(f"records are written as csv or json, not {format!r}")
    columns = list(dict.fromkeys(key for record in records for key in record))
    stream = io.StringIO()
    writer = csv.DictWriter(stream, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return stream.getvalue().rstrip("\n")
