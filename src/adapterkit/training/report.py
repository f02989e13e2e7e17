"""Comparing runs: a table of results and a plot of accuracy against trainable parameters.

The question every parameter-efficient method answers is "how much quality for how few trained
parameters", so the plot puts the test score against the trained share of the base model on a
log axis (shares span 0.01 % for BitFit to 100 % for full fine-tuning). The figure is drawn with
matplotlib's object API (``Figure`` + ``savefig``), never ``pyplot``: no global state, no
display backend needed on a headless machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .result import TrainingResult

_COLUMNS = ("method", "task", "test", "trainable params", "share", "saved params", "train time", "peak memory")


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


def _row(result: TrainingResult) -> list[str]:
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
    ]


def format_table(results: Sequence[TrainingResult], style: str = "markdown") -> str:
    """Results as a ``markdown`` (pipe) table or a ``plain`` aligned-columns table."""
    if style not in ("markdown", "plain"):
        raise ValueError(f"table style must be 'markdown' or 'plain', got {style!r}")
    rows = [list(_COLUMNS)] + [_row(r) for r in results]
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


def plot_results(results: Sequence[TrainingResult], path: str | Path, title: str | None = None) -> Path:
    """Save a PNG of each run's main test metric against its trainable share (log x axis), one
    panel per task, each run labelled as in the table and coloured by label across panels."""
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("no results to plot")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(r.task for r in results))
    labels = list(dict.fromkeys(run_label(r) for r in results))
    colours = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    figure = Figure(figsize=(5.6 * len(tasks), 4.4), dpi=120, layout="constrained")
    panels = figure.subplots(1, len(tasks), sharex=True, squeeze=False)[0]
    for axes, task in zip(panels, tasks):
        runs = [r for r in results if r.task == task]
        metric = runs[0].main_metric
        for result in runs:
            share = max(100 * result.trainable_share, 1e-6)
            score = result.test_metrics.get(result.main_metric, float("nan"))
            axes.scatter(share, score, s=40, color=colours[run_label(result)])
            axes.annotate(run_label(result), (share, score), textcoords="offset points", xytext=(5, 4), fontsize=8)
        axes.set_xscale("log")
        axes.margins(x=0.15)  # room for the labels of the rightmost points
        axes.set_xlabel("trainable parameters (% of the base model, log scale)")
        axes.set_ylabel(f"test {metric}")
        axes.set_title(task)
        axes.grid(True, which="both", alpha=0.3)
    figure.suptitle(title or "quality vs trained parameters")
    figure.savefig(path)
    return path
