"""An adapter store: one folder holding many saved adapters, ``STORE/<name>/``.

Continual tasks (Pfeiffer et al. 2021's "non-destructive" composition) keep one frozen base model
and add an adapter per task; nothing already trained is touched, so a store only ever gains
folders. ``adapterkit train --store`` puts each trained task adapter there, ``adapterkit fuse``
reads adapters from it and adds a fusion, ``adapterkit eval`` / ``predict --adapters a,b,c`` load
from it. A fusion's saved config records where the adapters it fuses were loaded from
(``fused_adapters``), so it can be loaded on its own from anywhere; failing that it looks for them
beside itself in the store. A K-Adapter task head (``k_task``) records the knowledge adapters it
reads the same way (``knowledge_adapters``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..formats.native import CONFIG_FILE, read_adapter_config

if TYPE_CHECKING:
    from ..model import AdapterModel

SAVED_EXTRAS = ("task", "training")
"""Keys of a trained adapter's saved config that travel with it into the store (data, max length)."""
READS_ADAPTERS = {"fusion": "fused_adapters", "k_task": "knowledge_adapters"}
"""Methods whose adapters read other saved adapters, with the key of their saved config that
records where those were loaded from."""
STACKED_UNDER = "stacked_under"
"""Key of a saved adapter's config: the adapters it was trained above (``Stack(under..., it)``, a
MAD-X task adapter above a language adapter), name -> folder, lowest first (``train --stack-under``)."""


def adapter_folder(item: str | Path, store: str | Path | None) -> Path:
    """``item`` as a saved adapter folder: itself if it is one, else ``store/item``."""
    path = Path(item)
    if (path / CONFIG_FILE).is_file():
        return path
    if store is not None and (Path(store) / str(item) / CONFIG_FILE).is_file():
        return Path(store) / str(item)
    where = f"nor in the store {store}" if store is not None else "(give --store to look it up by name)"
    raise FileNotFoundError(f"adapter {item!r} is not a saved adapter folder {where}")


def save_to_store(
    model: AdapterModel, name: str, store: str | Path, like: str | Path | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Save adapter ``name`` as ``store/name``, keeping the task and training records of the saved
    adapter ``like`` (e.g. the trainer's ``best`` folder) so ``eval``/``predict`` can use them."""
    kept: dict[str, Any] = {}
    if like is not None and (Path(like) / CONFIG_FILE).is_file():
        saved = read_adapter_config(like)
        kept = {k: saved[k] for k in (*SAVED_EXTRAS, *READS_ADAPTERS.values(), STACKED_UNDER) if k in saved}
    return model.save_adapter(name, Path(store) / name, extra={**kept, **(extra or {})})


def load_fused_adapters(model: AdapterModel, directory: str | Path, meta: dict[str, Any]) -> list[str]:
    """If the adapter saved in ``directory`` is a fusion (or a ``k_task``), load the adapters it
    fuses (the knowledge adapters it reads) first.

    Each is looked up at the path recorded when the adapter was saved, then beside it in its
    store. Adapters already on the model are kept. Returns the names loaded.
    """
    config = meta.get("config", {})
    method = config.get("method")
    if method not in READS_ADAPTERS:
        return []
    recorded = meta.get(READS_ADAPTERS[method], {})
    loaded = []
    for name in config.get("adapters", ()):
        if name in model.adapters:
            continue
        candidates = [Path(recorded[name])] if name in recorded else []
        candidates.append(Path(directory).parent / name)
        found = next((c for c in candidates if (c / CONFIG_FILE).is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"{method} {directory} reads adapter {name!r}, found neither at "
                f"{' nor '.join(str(c) for c in candidates)}; put its saved folder back at one of those paths"
            )
        model.load_adapter(found, name=name, activate=False)
        loaded.append(name)
    return loaded
