"""Default run folders: readable, deterministic, and distinct for runs that train differently.

``train`` without ``--output-dir`` writes to ``runs/<name>-<method>-<model>``, followed by six hex
digits hashing the settings given away from their defaults (method options, seed, epochs, data
files, ...) when there are any: ``runs/rotten_tomatoes-pfeiffer-minilm`` for a run at the
defaults, ``runs/rotten_tomatoes-pfeiffer-minilm-3705e9`` for one with ``--option
reduction_factor=8``. The same command line gives the same folder (so ``--resume`` finds it); runs
that differ in anything that changes what is trained get different folders. Settings that change
only how a run is carried out or reported (``--quiet``, ``--nproc``, ``--store``, ...) are left
out: a run repeated with them meets its earlier folder, which ``--overwrite`` or ``--resume``
must then allow.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

RUNS = Path("runs")
#: Namespace entries that are not settings of the run (set by ``cli.main``, or the subcommand).
_NOT_SETTINGS = ("argv", "func", "command", "_flags", "config_keys")


def changed_settings(
    args: argparse.Namespace, register: Callable[[Any], None], ignored: Iterable[str] = ()
) -> dict[str, Any]:
    """The options of ``args`` whose values differ from the defaults of the subcommand that
    ``register`` adds (a fresh parser is built to read them), less ``ignored``."""
    subparsers = argparse.ArgumentParser().add_subparsers()
    register(subparsers)
    (parser,) = subparsers.choices.values()
    skip = {*_NOT_SETTINGS, *ignored}
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip and v != parser.get_default(k)}


def settings_digest(settings: dict[str, Any]) -> str:
    """Six hex digits of ``settings`` (JSON, keys sorted, paths as given)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def model_tag(model: str) -> str:
    """A bundled model's name, or a model folder's own name, as a file-name part."""
    name = Path(model).expanduser().name or str(model)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "model"


def default_run_dir(stem: str, settings: dict[str, Any]) -> Path:
    """``runs/<stem>``, with ``-<digest>`` of ``settings`` when any setting left its default."""
    return RUNS / (f"{stem}-{settings_digest(settings)}" if settings else stem)
