"""The plot of a report: each run's test score against the share of the base model it saves.

The question every parameter-efficient method answers is "how much quality for how few
parameters", and what a method costs to keep per task is what it *saves* (a prefix trained through
an MLP is folded into far fewer values), so the x axis is the saved share of the base model, on a
log axis (0.01 % for BitFit to 100 % for full fine-tuning). One panel per task, in a grid of at
most three columns; the y scale is shared when every task has the same metric (each panel names
its metric otherwise). Runs are told apart by colour and marker, named in one legend beside the
grid (no labels on the points to overlap), and each panel carries reference lines: the full
fine-tuning score where a full run of the task is in the report, and the majority-class accuracy
of the task's test split where recorded. Drawn with matplotlib's object API (``Figure`` +
``savefig``), never ``pyplot``: no global state, no display backend needed on a headless machine.
"""

from __future__ import annotations

import errno
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .report import run_label
from .result import TrainingResult

COLUMNS = 3
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_FULL = "full"  # the full fine-tuning method


def plot_format(path: str | Path) -> str:
    """The format a plot is written in: its suffix when matplotlib writes that (``.pdf``,
    ``.svg``, ...), else PNG (the file keeps exactly the name given)."""
    from matplotlib.figure import Figure

    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in Figure().canvas.get_supported_filetypes() else "png"


def check_plot_path(path: str | Path) -> None:
    """Fail before any work if the plot cannot be written at ``path``: it is a folder, or it
    cannot be created there (tried, and removed again; where its folder does not exist yet, a
    temporary file in the nearest folder that does, which the plot's folders will be made in).

    Raises:
        ValueError: saying which, and what to give instead.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--plot {path} is a folder; give a file name, such as {path / 'report.png'}")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists() or p == Path(p.anchor or "."))
    existed = path.exists()
    try:
        if existing != path.parent:
            if not existing.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            tempfile.TemporaryFile(dir=existing).close()
        else:
            with open(path, "ab"):
                pass
    except OSError as error:
        raise ValueError(f"--plot {path} cannot be written ({error.strerror}); give a path in a folder you can write to") from None
    finally:
        if not existed and path.is_file() and os.path.getsize(path) == 0:
            path.unlink()


def _styles(labels: Sequence[str]) -> dict[str, tuple[str, str]]:
    """A (colour, marker) per run label, distinct for up to 80 labels."""
    return {label: (f"C{i % 10}", _MARKERS[(i // 10) % len(_MARKERS)]) for i, label in enumerate(labels)}


def _reference_lines(axes, runs: Sequence[TrainingResult], metric: str) -> None:
    full = [r.test_metrics[metric] for r in runs if r.method == _FULL and metric in r.test_metrics]
    if full:
        axes.axhline(sum(full) / len(full), color="0.25", linestyle="--", linewidth=1, label="full fine-tuning")
    majority = next((r.majority_accuracy for r in runs if r.majority_accuracy is not None), None)
    if majority is not None and metric == "accuracy":
        axes.axhline(majority, color="0.55", linestyle=":", linewidth=1.2, label="majority class")


def plot_results(results: Sequence[TrainingResult], path: str | Path, title: str | None = None) -> Path:
    """Save the plot (module docstring) of ``results`` at exactly ``path``, in the format its
    suffix names (:func:`plot_format`); returns the path.

    Raises:
        ValueError: no results, or the file cannot be written.
    """
    figure = report_figure(results, title)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format=plot_format(path))
    except OSError as error:
        raise ValueError(f"cannot write the plot {path} ({error.strerror or error})") from None
    return path


def report_figure(results: Sequence[TrainingResult], title: str | None = None):
    """The plot of ``results`` as a matplotlib ``Figure`` (module docstring): one visible panel
    per task, in task order.

    Raises:
        ValueError: no results.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    if not results:
        raise ValueError("no results to plot")
    tasks = list(dict.fromkeys(r.task for r in results))
    metrics = {task: next(r.main_metric for r in results if r.task == task) for task in tasks}
    shared = len(set(metrics.values())) == 1
    columns = min(COLUMNS, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    styles = _styles(list(dict.fromkeys(run_label(r) for r in results)))
    figure = Figure(figsize=(4.2 * columns + 2.4, 3.4 * rows + 0.6), dpi=120, layout="constrained")
    grid = figure.subplots(rows, columns, sharex=True, sharey=shared, squeeze=False)
    references: dict[str, Line2D] = {}
    for index, axes in enumerate(grid.flat):
        if index >= len(tasks):  # an empty cell of the last row: the panel above shows the x ticks
            axes.set_visible(False)
            grid.flat[index - columns].xaxis.set_tick_params(labelbottom=True)
            continue
        task = tasks[index]
        runs = [r for r in results if r.task == task]
        for result in runs:
            colour, marker = styles[run_label(result)]
            share = max(100 * result.saved_share, 1e-6)
            score = result.test_metrics.get(metrics[task], float("nan"))
            axes.scatter(share, score, s=42, color=colour, marker=marker, edgecolors="black", linewidths=0.4, zorder=3)
        _reference_lines(axes, runs, metrics[task])
        references.update({line.get_label(): line for line in axes.get_lines()})
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}%"))
        axes.margins(x=0.2, y=0.12)
        axes.set_title(f"{task} ({len(runs)} run{'s' if len(runs) > 1 else ''})", fontsize=10)
        if not shared:
            axes.set_ylabel(f"test {metrics[task]}")
        axes.grid(True, which="both", alpha=0.3)
    figure.supxlabel("saved parameters (share of the base model, log scale)", fontsize=10)
    if shared:
        figure.supylabel(f"test {metrics[tasks[0]]} (same scale in every panel)", fontsize=10)
    handles = [
        Line2D([], [], linestyle="", marker=marker, color=colour, markeredgecolor="black", markeredgewidth=0.4, label=label)
        for label, (colour, marker) in styles.items()
    ] + list(references.values())
    figure.legend(handles=handles, loc="outside right upper", fontsize=8, title="runs", title_fontsize=9)
    figure.suptitle(title or "quality vs saved parameters")
    return figure
