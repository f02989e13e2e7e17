"""adapterkit's own adapter format: a folder with ``adapter_config.json`` and ``adapter.safetensors``.

The JSON holds the method config (with its type tag), the head config, and the identity of the
base model the adapter was trained on (``fingerprint.py``). Tensors are stored with safetensors (no
pickle), keys prefixed ``adapter.`` (the method's modules), ``head.`` and, for full/partial
fine-tuning, ``base.``. Writes are atomic: a crash leaves the previous folder, never half of one.

This module reads and writes folders only; it knows no model (``AdapterModel.save_adapter`` and
``load_adapter`` turn a model's adapter into these pieces and back). Reading the config JSON needs
no torch (the command line checks a folder before importing it); the weights' functions import it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_directory

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
FORMAT = "adapterkit.adapter/1"


def write_adapter(directory: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` (the config JSON, ``format`` added) to ``directory``
    atomically; returns the directory."""
    from safetensors.torch import save_file

    tensors = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=2, sort_keys=True) + "\n")
    return directory


def read_format_json(directory: str | Path, filename: str, expected_format: str, what: str) -> dict[str, Any]:
    """Read ``directory/filename`` and check its ``format`` tag (an adapter, a checkpoint, ...).

    Raises:
        FileNotFoundError: the folder does not exist, or the file is missing (the folder is not ``what``).
        ValueError: the file is not JSON, or has another format tag.
    """
    if not Path(directory).exists():
        raise FileNotFoundError(f"{directory} does not exist; check the path of {what}")
    path = Path(directory) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not {what}: {filename} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); was it written completely?") from error
    if not isinstance(data, dict) or data.get("format") != expected_format:
        found = data.get("format") if isinstance(data, dict) else None
        raise ValueError(f"{path} has format {found!r}; this adapterkit reads {expected_format!r}")
    return data


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The config JSON of a saved adapter (see the module docstring).

    Raises:
        FileNotFoundError: not a saved adapter (for a training run's folder: naming its ``best``).
    """
    best = Path(directory) / "best"
    if not (Path(directory) / CONFIG_FILE).is_file() and (best / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory} is a training run folder, not a saved adapter; use {best}")
    if not (Path(directory) / CONFIG_FILE).is_file() and (Path(directory) / "checkpoint").is_dir():
        raise FileNotFoundError(
            f"{directory} is a training run folder with no best adapter yet ({best} is missing): resume the run "
            "to finish it, or evaluate another run's best/"
        )
    return read_format_json(directory, CONFIG_FILE, FORMAT, "a saved adapter")


def read_adapter_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved adapter, by key (safetensors: no code runs while loading)."""
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / WEIGHTS_FILE))


def count_saved_values(directory: str | Path) -> int:
    """How many values a saved adapter's weights file holds (parameters and persistent buffers,
    head included), read from the safetensors header without loading the tensors."""
    from safetensors import safe_open

    with safe_open(str(Path(directory) / WEIGHTS_FILE), framework="pt") as weights:
        return sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
