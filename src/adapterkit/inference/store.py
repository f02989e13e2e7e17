"""An adapter store: one folder holding many saved adapters, ``STORE/<name>/``.

Continual tasks (Pfeiffer et al. 2021's "non-destructive" composition) keep one frozen base model
and add an adapter per task; nothing already trained is touched, so a store only ever gains
folders. ``adapterkit train --store`` puts each trained task adapter there, ``adapterkit fuse``
reads adapters from it and adds a fusion, ``adapterkit eval`` / ``predict --adapters a,b,c`` load
from it. A fusion's saved config records where the adapters it fuses were loaded from
(``fused_adapters``), so it can be loaded on its own from anywhere; failing that it looks for them
beside itself in the store. A K-Adapter task head (``k_task``) records the knowledge adapters it
reads the same way (``knowledge_adapters``).

**A store never loses an adapter silently.** Saving into it refuses a name already there unless
told to replace it (``train --replace-in-store``); the new folder is claimed with one exclusive
``mkdir``, so two writers cannot both take a name, and written atomically. **Nor does a fusion
change silently:** it records the digest of each adapter it reads (``adapter_hashes``,
``formats/digest.py``) and loading it refuses an adapter whose digest differs (replaced or
retrained since), naming both digests. Fusions saved before digests were recorded load unchecked.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..formats.digest import adapter_digest
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
ADAPTER_HASHES = "adapter_hashes"
"""Key of a saved fusion's (``k_task``'s) config: the digest of each adapter it reads, name -> digest."""


class StoreEntryExists(ValueError):
    """Saving into a store would replace an adapter already there, and replacing was not asked for."""


class ChangedAdapter(ValueError):
    """An adapter a fusion (a ``k_task``) reads is not the one it was trained over."""


def adapter_folder(item: str | Path, store: str | Path | None) -> Path:
    """``item`` as a saved adapter folder: itself if it is one, else ``store/item``."""
    path = Path(item)
    if (path / CONFIG_FILE).is_file():
        return path
    if store is not None and (Path(store) / str(item) / CONFIG_FILE).is_file():
        return Path(store) / str(item)
    where = f"nor in the store {store}" if store is not None else "(give --store to look it up by name)"
    raise FileNotFoundError(f"adapter {item!r} is not a saved adapter folder {where}")


def adapter_hashes(folders: dict[str, Path]) -> dict[str, str]:
    """The digests to record for the adapters a fusion (a ``k_task``) reads, name -> digest."""
    return {name: adapter_digest(folder) for name, folder in folders.items()}


def readers_of(store: str | Path, name: str) -> list[str]:
    """Names of the adapters in ``store`` that read adapter ``name`` (fusions over it), sorted."""
    readers = []
    for folder in sorted(Path(store).iterdir()) if Path(store).is_dir() else ():
        try:
            meta = read_adapter_config(folder)
        except (FileNotFoundError, ValueError):
            continue
        if meta["config"].get("method") in READS_ADAPTERS and name in meta["config"].get("adapters", ()):
            readers.append(folder.name)
    return readers


def check_store_entry(store: str | Path, name: str, replace: bool) -> str | None:
    """Before any work: may adapter ``name`` be saved into ``store``?

    Returns None when the name is free, else (``replace`` given) a note for after the save: what
    was replaced and which adapters of the store read it (they will refuse to load until retrained).

    Raises:
        StoreEntryExists: ``store/name`` exists and ``replace`` is false.
    """
    target = Path(store) / name
    if not target.exists():
        return None
    try:
        meta = read_adapter_config(target)
        held = f"a {meta['config'].get('method')} adapter, {adapter_digest(target)[:23]}..."
    except (FileNotFoundError, ValueError):
        held = "something that is not a saved adapter"
    if not replace:
        raise StoreEntryExists(
            f"the store already holds {target} ({held}); a store never loses an adapter silently: give another "
            "--name, or --replace-in-store to replace it (adapters stored over it must then be retrained)"
        )
    readers = readers_of(store, name)
    over = f"; {', '.join(readers)} in the store read(s) it and will refuse to load until retrained" if readers else ""
    return f"replaced {held}{over}"


def save_to_store(
    model: AdapterModel,
    name: str,
    store: str | Path,
    like: str | Path | None = None,
    extra: dict[str, Any] | None = None,
    replace: bool = False,
) -> Path:
    """Save adapter ``name`` as ``store/name``, keeping the task and training records of the saved
    adapter ``like`` (e.g. the trainer's ``best`` folder) so ``eval``/``predict`` can use them.

    Without ``replace`` the name is claimed first with an exclusive ``mkdir`` (removed again if
    saving fails), so an adapter already there is never replaced, even by a concurrent writer.

    Raises:
        StoreEntryExists: ``store/name`` exists and ``replace`` is false.
    """
    kept: dict[str, Any] = {}
    if like is not None and (Path(like) / CONFIG_FILE).is_file():
        saved = read_adapter_config(like)
        recorded = (*SAVED_EXTRAS, *READS_ADAPTERS.values(), STACKED_UNDER, ADAPTER_HASHES)
        kept = {k: saved[k] for k in recorded if k in saved}
    target = Path(store) / name
    if replace:
        return model.save_adapter(name, target, extra={**kept, **(extra or {})})
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.mkdir()  # the claim: fails if anything holds the name
    except FileExistsError:
        check_store_entry(store, name, replace=False)  # raises, saying what holds it
        raise StoreEntryExists(f"{target} was taken by another writer in the meantime; try again") from None
    try:
        return model.save_adapter(name, target, extra={**kept, **(extra or {})})
    except BaseException:
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        raise


def check_read_adapter(reader: str | Path, meta: dict[str, Any], name: str, folder: str | Path) -> None:
    """Check that the saved adapter in ``folder`` is the adapter ``name`` that the fusion (the
    ``k_task``) saved in ``reader`` with config ``meta`` was trained over (its recorded digest).
    A reader saved before digests were recorded, or one that records none for ``name``, passes.

    Raises:
        ChangedAdapter: the digests differ, naming the adapter, both digests and the fixes.
    """
    recorded = meta.get(ADAPTER_HASHES, {}).get(name)
    if recorded is None:
        return
    found = adapter_digest(folder)
    if found != recorded:
        method = meta.get("config", {}).get("method", "fusion")
        raise ChangedAdapter(
            f"{method} {reader} was trained over adapter {name!r} with {recorded[:23]}..., but {folder} now holds "
            f"{found[:23]}... (replaced or retrained since); retrain the {method} over the adapter as it is now, or "
            f"put back the adapter it was trained over"
        )


def load_fused_adapters(
    model: AdapterModel, directory: str | Path, meta: dict[str, Any], loaded_from: dict[str, Path] | None = None
) -> list[str]:
    """If the adapter saved in ``directory`` is a fusion (or a ``k_task``), load the adapters it
    fuses (the knowledge adapters it reads) first.

    Each is looked up at the path recorded when the adapter was saved, then beside it in its
    store. Adapters already on the model are kept; those ``loaded_from`` names the folders of are
    checked like the ones loaded here (:func:`check_read_adapter`). Returns the names loaded.

    Raises:
        FileNotFoundError: an adapter it reads is at none of those paths.
        ChangedAdapter: an adapter it reads differs from the one it was trained over.
    """
    config = meta.get("config", {})
    method = config.get("method")
    if method not in READS_ADAPTERS:
        return []
    recorded = meta.get(READS_ADAPTERS[method], {})
    loaded = []
    for name in config.get("adapters", ()):
        if name in model.adapters:
            if loaded_from and name in loaded_from:
                check_read_adapter(directory, meta, name, loaded_from[name])
            continue
        candidates = [Path(recorded[name])] if name in recorded else []
        candidates.append(Path(directory).parent / name)
        found = next((c for c in candidates if (c / CONFIG_FILE).is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"{method} {directory} reads adapter {name!r}, found neither at "
                f"{' nor '.join(str(c) for c in candidates)}; put its saved folder back at one of those paths"
            )
        check_read_adapter(directory, meta, name, found)
        model.load_adapter(found, name=name, activate=False)
        loaded.append(name)
    return loaded
