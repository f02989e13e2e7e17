"""Loading saved adapters with the base model they were trained on: one, or several into one model.

Shared by ``adapterkit eval``, ``predict`` and ``fuse`` and by anything serving adapters: the base
model is the one recorded in the (first) adapter unless another is named, a fusion brings the
adapters it fuses (``store.py``), and loading refuses a base whose weights differ from the ones
an adapter was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.task import GENERATION_KINDS, KINDS
from ..errors import ParameterError
from ..formats.native import read_adapter_config
from ..model import AdapterModel
from ..vision_models import VISION_MODELS
from .store import READS_ADAPTERS, STACKED_UNDER, load_fused_adapters


def base_model_for(metas: Sequence[dict[str, Any]], folders: Sequence[Path], model: str | None) -> AdapterModel:
    """The base model ``model`` names, or else the one the first adapter records.

    Raises:
        ValueError: neither is known, or the recorded one is not found here (naming ``--model``).
    """
    reference = model or metas[0].get("base_model", {}).get("name_or_path")
    if not reference:
        raise ParameterError("{folder} does not record its base model; name it with {model:=}", folder=folders[0])
    # the recorded image size is for a bundled CNN; another model then says it is not the adapter's
    image_size = metas[0].get("base_model", {}).get("image_size") if reference in VISION_MODELS else None
    try:
        return AdapterModel.from_pretrained(reference, image_size=image_size)
    except ValueError as error:
        if model:
            raise
        # a relative folder recorded by an older adapterkit, or a model folder moved since
        raise ValueError(
            f"{folders[0]} was trained on base model {reference!r}, not found here ({error}); name the base "
            "model with --model (model= in Python)"
        ) from error


def load_adapters(folders: Sequence[Path], model: str | None = None) -> tuple[AdapterModel, list[str], list[dict[str, Any]]]:
    """(model, adapter names, saved configs) with every adapter of ``folders`` loaded (none active).

    Plain adapters load first, so a fusion (a ``k_task``) finds the adapters it fuses (the
    knowledge adapters it reads) already there; one whose adapters are not among ``folders`` loads
    them from where it recorded them. Either way the adapters a fusion reads are checked against
    the digests it recorded (``store.py``).

    Raises:
        ChangedAdapter: an adapter a fusion reads is not the one it was trained over.
        ValueError: two folders hold adapters of the same name (one would silently stand for both).
    """
    metas = [read_adapter_config(folder) for folder in folders]
    first: dict[str, Path] = {}
    for folder, meta in zip(folders, metas):
        if meta["name"] in first:
            raise ValueError(
                f"{first[meta['name']]} and {folder} both hold adapter {meta['name']!r}; adapters used together need "
                "distinct names: give each once, or retrain one under another --name"
            )
        first[meta["name"]] = Path(folder)
    loaded = base_model_for(metas, folders, model)
    loaded_from: dict[str, Path] = {}
    for folder, meta in sorted(zip(folders, metas), key=lambda fm: fm[1]["config"]["method"] in READS_ADAPTERS):
        load_fused_adapters(loaded, folder, meta, loaded_from)
        if meta["name"] not in loaded.adapters:
            loaded.load_adapter(folder, activate=False)
            loaded_from[meta["name"]] = Path(folder)
    return loaded, [meta["name"] for meta in metas], metas


def load_under(model: AdapterModel, folders: Sequence[Path]) -> list[str]:
    """Load saved adapters to run under another one (MAD-X's language adapters under a task
    adapter), none active, and return their names, lowest first.

    Raises:
        ValueError: two of them have the same name, or one is already on the model.
    """
    names = []
    for folder in folders:
        name = read_adapter_config(folder)["name"]
        if name in names or name in model.adapters:
            raise ValueError(f"{folder} holds adapter {name!r}, which is already loaded; stack adapters of distinct names")
        names.append(model.load_adapter(folder, activate=False))
    return names


def recorded_under(meta: dict[str, Any]) -> list[Path]:
    """The folders of the adapters a saved adapter was trained above (:data:`STACKED_UNDER`)."""
    return [Path(folder) for folder in meta.get(STACKED_UNDER, {}).values()]


def load_saved_adapter(directory: Path, model: str | None = None) -> tuple[AdapterModel, str, dict[str, Any]]:
    """(model, adapter name, saved config) for an adapter folder with a prediction head.

    Raises:
        ValueError: the adapter has no classification or regression head.
    """
    loaded, (name,), (meta,) = load_adapters([Path(directory)], model)
    kind = loaded.heads[name].config.kind if name in loaded.heads else None
    if kind not in KINDS and not (kind == "causal_lm" and meta.get("task", {}).get("kind") in GENERATION_KINDS):
        raise ValueError(
            f"adapter {directory} has no classification or regression head, nor a causal_lm head trained on a "
            "translation or language-modelling task, so it cannot evaluate or predict"
        )
    loaded.set_active(name)
    return loaded, name, meta
