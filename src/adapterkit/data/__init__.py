"""Datasets for adapter training: bundled offline tasks and the user's own files.

Both paths return a :class:`TaskData` with fixed, seeded train/validation/test splits, so every
method in a comparison trains and is evaluated on exactly the same examples.

The names below are imported on first use: the bundled image tasks and masking import torch, and
``import adapterkit.data.task`` (the command line checking its input before the heavy imports)
should not pay for that.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "available_tasks": "catalog",
    "knowledge_tasks": "catalog",
    "load_task": "catalog",
    "load_files": "files",
    "Example": "task",
    "TaskData": "task",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"adapterkit.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'adapterkit.data' has no attribute {name!r}")
