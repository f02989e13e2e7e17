"""Converting an adapter folder between adapterkit's, peft's and AdapterHub's formats.

A conversion loads the folder into its base model (``AdapterModel.load_adapter``: adapterkit's
own, or a peer's converted exactly or refused) and saves it in the target format
(``AdapterModel.save_adapter(format=...)``), so it holds exactly what both sides can represent.
The base model is the one named, else the one the folder records (adapterkit:
``base_model.name_or_path``; peft: ``base_model_name_or_path``; AdapterHub: ``model_name``), which
must then be a bundled model name or a model folder on this machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParameterError
from ..formats.detect import ADAPTERKIT, CONFIG_FILE, FUSION_CONFIG_FILE, folder_format, read_json, subfolders
from ..model import AdapterModel
from .loading import load_adapters


@dataclass
class Conversion:
    """What a conversion did: the folder written, its format, the adapter converted, the source's
    format and every adapter the source held."""

    target: Path
    format: str
    adapter: str
    source_format: str
    adapters: Sequence[str]


def recorded_base(directory: Path) -> str | None:
    """The base model a folder (or its first adapter subfolder) records, if any."""
    for folder in (directory, *subfolders(directory)):
        for name in (CONFIG_FILE, FUSION_CONFIG_FILE):
            data = read_json(folder / name) or {}
            found = (data.get("base_model") or {}).get("name_or_path") or data.get("base_model_name_or_path") or data.get("model_name")
            if found:
                return found
    return None


def convert(source: str | Path, target: str | Path, to: str, model: str | None = None, adapter: str | None = None) -> Conversion:
    """Convert the adapter folder ``source`` into ``target`` in format ``to``.

    Args:
        model: the base model (bundled name or folder); default: the one ``source`` records.
        adapter: which adapter of a folder holding several (peft's further adapters) to convert;
            default: the folder's main one (peft's first; AdapterHub's fusion, with its adapters).

    Raises:
        ValueError: no base model known, an unknown format, or (``NotConvertible``) what the source
            or target format cannot represent.
    """
    source = Path(source)
    base, main, found = load_source(source, model)
    chosen = adapter or main
    base.view().require([chosen])
    written = base.save_adapter(chosen, target, format=to)
    return Conversion(Path(written), to, chosen, found, list(base.adapters))


def load_source(source: Path, model: str | None) -> tuple[AdapterModel, str, str]:
    """(base model with the folder's adapters loaded, none active; its main adapter; its format).

    Raises:
        ValueError: no base model known, or what the loader refuses.
    """
    found = folder_format(source)
    if found == ADAPTERKIT:  # a fusion brings the adapters it fuses
        base, names, _ = load_adapters([source], model)
        return base, names[0], found
    base = peer_base(source, model)
    return base, base.load_adapter(source, activate=False), found


def peer_base(source: Path, model: str | None) -> AdapterModel:
    """The base model for a peer folder: ``model``, else the one it records.

    Raises:
        ValueError: neither names a model available here.
    """
    reference = model or recorded_base(source)
    if not reference:
        raise ParameterError("{source} does not record its base model; name it with {model:=}", source=source)
    try:
        return AdapterModel.from_pretrained(reference)
    except (OSError, ValueError) as error:
        raise ValueError(f"{source} was saved for base model {reference!r}, which is not available here ({error}); name it with --model") from error
