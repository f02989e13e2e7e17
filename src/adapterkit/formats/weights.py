"""Reading a peer's weight file: safetensors, or AdapterHub's pickled ``.bin``.

This is the only place in adapterkit that unpickles. AdapterHub (``adapters``) saves
``torch.save`` pickles by default (``pytorch_adapter.bin``, ``pytorch_model_head.bin``,
``pytorch_model_adapter_fusion.bin``; safetensors only with ``use_safetensors=True``). They are read
with ``torch.load(path, weights_only=True)``: PyTorch's restricted unpickler, which builds tensors
and plain containers and refuses any other object, so a crafted file cannot run code. Everything
adapterkit writes is safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a pickled ``.bin`` (``weights_only=True``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, or a ``.bin`` holding something other than a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix != ".bin":
        raise ValueError(f"{path}: adapterkit reads .safetensors and (AdapterHub's) .bin weight files")
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the restricted unpickler refuses anything but tensors
        raise ValueError(f"{path}: not a weights-only torch file ({type(error).__name__}: {error})") from error
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ValueError(f"{path}: expected a dict of tensors")
    return tensors


def find_weights(directory: Path, safe_name: str, pickle_name: str) -> Path | None:
    """``directory/safe_name`` if it exists, else ``directory/pickle_name`` if that does, else None."""
    for name in (safe_name, pickle_name):
        if (directory / name).is_file():
            return directory / name
    return None
