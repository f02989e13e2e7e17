"""Which library wrote an adapter folder, from the content of its JSON (not its file names).

adapterkit, peft and AdapterHub all call their config ``adapter_config.json`` (and adapterkit's
and AdapterHub's safetensors file are both ``adapter.safetensors``), so the names say nothing.
The JSON does:

* adapterkit: ``"format": "adapterkit.adapter/1"`` (``native.py``);
* peft: a ``"peft_type"`` (``LORA``, ``IA3``, ``PREFIX_TUNING``, ...);
* AdapterHub (``adapters``): a ``"config"`` object with the adapter's ``"name"``, the base's
  ``"model_type"`` and the library ``"version"``; a fusion has ``adapter_fusion_config.json`` with
  ``"adapter_names"``, a head ``head_config.json`` with ``"config"."head_type"``.

A folder may also hold several adapters in subfolders: peft saves the adapters after the first as
``<folder>/<name>/``; AdapterHub's fusion and ``save_adapter_setup`` folders hold one folder per
adapter and one for the fusion (with its head). :func:`detect` says which library wrote the folder
either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ADAPTERKIT, PEFT, ADAPTERHUB = "adapterkit", "peft", "adapterhub"
FORMATS = (ADAPTERKIT, PEFT, ADAPTERHUB)
CONFIG_FILE = "adapter_config.json"
FUSION_CONFIG_FILE = "adapter_fusion_config.json"


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when there is no such file.

    Raises:
        ValueError: the file is not a JSON object.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds {type(data).__name__}, not a JSON object")
    return data


def config_format(data: dict[str, Any]) -> str | None:
    """The library an ``adapter_config.json`` (or AdapterHub fusion config) comes from, by its
    content; None when it is none of the three."""
    if isinstance(data.get("format"), str) and data["format"].startswith("adapterkit."):
        return ADAPTERKIT
    if "peft_type" in data:
        return PEFT
    if "adapter_names" in data and isinstance(data.get("config"), dict):
        return ADAPTERHUB  # a fusion
    if isinstance(data.get("config"), dict) and {"name", "model_type"} <= set(data):
        return ADAPTERHUB
    return None


def folder_format(directory: str | Path) -> str:
    """The library that wrote the adapter folder ``directory`` (see the module docstring).

    Raises:
        FileNotFoundError: no such folder, or no adapter config in it or its subfolders.
        ValueError: a config none of the three libraries writes, or subfolders by several.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{directory} does not exist; check the adapter folder's path")
    for name in (CONFIG_FILE, FUSION_CONFIG_FILE):
        data = read_json(directory / name)
        if data is not None:
            found = config_format(data)
            if found is None:
                raise ValueError(
                    f"{directory / name} is not an adapter config adapterkit knows: neither adapterkit's "
                    "('format'), peft's ('peft_type') nor AdapterHub's ('config', 'name', 'model_type')"
                )
            return found
    found = {folder_format(sub) for sub in subfolders(directory)}
    if not found:
        raise FileNotFoundError(f"{directory} is not an adapter folder: no {CONFIG_FILE} in it or in its subfolders")
    if len(found) > 1:
        raise ValueError(f"{directory} holds adapters of several libraries ({sorted(found)}); convert them one by one")
    return found.pop()


def subfolders(directory: Path) -> list[Path]:
    """The subfolders of ``directory`` that hold an adapter or fusion config, sorted by name."""
    if not directory.is_dir():
        return []
    return sorted(
        sub for sub in directory.iterdir() if sub.is_dir() and any((sub / n).is_file() for n in (CONFIG_FILE, FUSION_CONFIG_FILE))
    )
