"""Saving and loading one adapter: a directory with ``adapter_config.json`` and
``adapter.safetensors``.

The JSON holds the method config (with its type tag), the head config, and the identity of the
base model it was trained on (model type, sizes, dtype, and a fingerprint of its weights that
does not depend on the dtype it was loaded in, see :mod:`adapterkit.fingerprint`). Loading into
any other base model is refused with a message naming both and saying what differs, because an
adapter's weights only mean something on top of the exact weights it was trained with. Tensors
are stored with safetensors (no pickle), keys prefixed ``adapter.`` (the method's modules),
``head.`` and, for full/partial fine-tuning, ``base.``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file, save_file

from .atomic import atomic_directory
from .fingerprint import base_fingerprint, compare_bases
from .heads import HeadConfig
from .registry import config_from_dict

if TYPE_CHECKING:
    from .model import AdapterModel

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"
FORMAT = "adapterkit.adapter/1"


def base_identity(model: AdapterModel) -> dict[str, Any]:
    """The base model as saved with an adapter: model type, name, sizes and
    :func:`~adapterkit.fingerprint.checkpoint_identity` (taken when the model was built)."""
    return {
        "model_type": model.parts.model_type,
        "name_or_path": getattr(model, "name_or_path", None),
        "num_layers": model.parts.num_layers,
        "hidden_size": model.parts.hidden_size,
        **model.base_checkpoint,
    }


def save_adapter(model: AdapterModel, name: str, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write adapter ``name`` of ``model`` to ``directory`` atomically; returns the directory."""
    tensors = {k: p.detach().cpu().contiguous() for k, p in model.adapter_parameters(name).items()}
    head = model.heads[name].config.to_dict() if name in model.heads else None
    meta = {
        "format": FORMAT,
        "name": name,
        "config": model.adapters[name].config.to_dict(),
        "head": head,
        "base_model": base_identity(model),
        **(extra or {}),
    }
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def read_format_json(directory: str | Path, filename: str, expected_format: str, what: str) -> dict[str, Any]:
    """Read ``directory/filename`` and check its ``format`` tag (an adapter, a checkpoint, ...)."""
    path = Path(directory) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not {what}: {filename} is missing")
    data = json.loads(path.read_text())
    if data.get("format") != expected_format:
        raise ValueError(f"{path} has format {data.get('format')!r}; this adapterkit reads {expected_format!r}")
    return data


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    return read_format_json(directory, CONFIG_FILE, FORMAT, "a saved adapter")


def check_base(model: AdapterModel, meta: dict[str, Any], where: Path) -> None:
    """Refuse an adapter trained on another base model.

    The same checkpoint loaded in another dtype is the same base (see :mod:`adapterkit.fingerprint`).
    Adapters saved before the fingerprint ignored the dtype (no ``fingerprint_version``) are
    compared by what they record, with the fingerprint computed their way.

    Raises:
        ValueError: naming both models and their dtypes and saying what differs.
    """
    saved = meta["base_model"]
    here = base_identity(model)
    version = saved.get("fingerprint_version", 1)
    if version != here["fingerprint_version"]:
        here.update(fingerprint=base_fingerprint(model.base, version), fingerprint_version=version)
    difference = compare_bases(saved, here)
    if difference is not None:
        raise ValueError(
            f"adapter {where} was trained on base model {_named(saved)}, but this model is {_named(here)}: "
            f"{difference}; load it into the model it was trained on"
        )


def _named(identity: dict[str, Any]) -> str:
    return f"{identity.get('name_or_path') or identity['model_type']} ({identity.get('dtype', 'dtype not recorded')})"


def load_adapter(model: AdapterModel, directory: str | Path, name: str | None = None) -> str:
    """Add the adapter saved in ``directory`` to ``model`` (as ``name``, default: its saved name)."""
    directory = Path(directory)
    meta = read_adapter_config(directory)
    check_base(model, meta, directory)
    name = name or meta["name"]
    head = HeadConfig(**meta["head"]) if meta["head"] else None
    model.add_adapter(name, config_from_dict(meta["config"]), head)
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
        params = model.adapter_parameters(name)
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        if missing or unexpected:
            raise ValueError(
                f"{directory / WEIGHTS_FILE} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for key, param in params.items():
            if tuple(tensors[key].shape) != tuple(param.shape):
                raise ValueError(f"{directory / WEIGHTS_FILE}: {key} has shape {tuple(tensors[key].shape)}, expected {tuple(param.shape)}")
            param.data.copy_(tensors[key])
    except Exception:
        model.delete_adapter(name)
        raise
    return name
