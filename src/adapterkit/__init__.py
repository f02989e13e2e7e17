"""adapterkit: adapters and other parameter-efficient methods for Hugging Face transformers.

The public names are imported lazily, so ``import adapterkit.data`` or ``adapterkit tasks``
does not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AdapterModel": "model",
    "HeadConfig": "heads",
    "MethodConfig": "registry",
    "REGISTRY": "registry",
    "make_config": "registry",
    "register_method": "registry",
    "PLACEMENTS": "placement",
    "Placement": "placement",
    "register_placement": "placement",
    "Setup": "composition",
    "Stack": "composition",
    "Fuse": "composition",
    "Parallel": "composition",
    "Routed": "composition",
    "AdapterDrop": "composition",
    "setup_from_dict": "composition",
    "MultiTaskOutput": "execution",
    "FusionConfig": "methods.fusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        importlib.import_module(".methods", __name__)  # registers every method
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'adapterkit' has no attribute {name!r}")
