"""Finding the finished runs a report compares, and naming them so that equal rows differ.

A run is a training output folder with ``results.json`` (``adapterkit train``, ``fuse``); a folder
may hold runs of its own one level down (``fuse --prune`` writes the pruned fusion's run in
``OUTPUT_DIR/pruned``), which come with it. A folder without ``results.json`` is an unfinished or
crashed run: it is skipped with a note rather than failing the whole report, and so is a
``results.json`` that cannot be read. A path that does not exist is a mistake, and an error.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..formats.native import WEIGHTS_FILE, count_saved_values
from .checkpoint import BEST_DIR, CHECKPOINT_DIR, RESULTS_FILE
from .result import TrainingResult


@dataclass(frozen=True)
class Run:
    """A finished run: its name in a report (its folder's name, with as many parent folders as
    tell it apart from the others) and its result."""

    name: str
    result: TrainingResult


def _result_files(path: Path) -> tuple[list[Path], str | None]:
    """The results.json files ``path`` names, or a note saying why it holds none."""
    if path.is_file():
        return [path], None
    if not path.exists():
        raise FileNotFoundError(
            f"{path / RESULTS_FILE} not found: {path} does not exist; give the output folders of training runs"
        )
    own = [path / RESULTS_FILE] if (path / RESULTS_FILE).is_file() else []
    nested = sorted(p / RESULTS_FILE for p in path.iterdir() if p.is_dir() and (p / RESULTS_FILE).is_file())
    if own or nested:
        return own + nested, None
    if (path / CHECKPOINT_DIR).is_dir():
        return [], f"skipped {path}: unfinished (a checkpoint but no {RESULTS_FILE}; `train --resume` finishes it)"
    return [], f"skipped {path}: no {RESULTS_FILE} (an unfinished or crashed run, or not a run folder)"


def _read(path: Path) -> tuple[TrainingResult | None, str | None]:
    try:
        result = TrainingResult.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as error:
        return None, f"skipped {path}: not a results file this adapterkit reads ({type(error).__name__})"
    best = path.parent / BEST_DIR
    if result.saved_params is None and (best / WEIGHTS_FILE).is_file():  # written before it was recorded
        result = dataclasses.replace(result, saved_params=count_saved_values(best))
    return result, None


def unique_names(folders: Sequence[Path]) -> list[str]:
    """Each folder's name, with as many parent folders as make it differ from the others'."""
    parts = [folder.resolve().parts for folder in folders]
    depth = [1] * len(folders)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashing = [i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(parts[i])]
        if not clashing:
            return names
        for i in clashing:
            depth[i] += 1


def load_runs(paths: Sequence[str | Path]) -> tuple[list[Run], list[str]]:
    """The finished runs among ``paths`` (run folders or results.json files; each once), named,
    and one note per path or file skipped (module docstring).

    Raises:
        FileNotFoundError: a path does not exist.
    """
    files: list[Path] = []
    notes: list[str] = []
    for path in map(Path, paths):
        found, note = _result_files(path)
        files += [f for f in found if f.resolve() not in {g.resolve() for g in files}]
        notes += [note] if note else []
    results = []
    for file in files:
        result, note = _read(file)
        if result is None:
            notes.append(note)
        else:
            results.append((file.parent, result))
    names = unique_names([folder for folder, _ in results])
    return [Run(name, result) for name, (_, result) in zip(names, results)], notes
