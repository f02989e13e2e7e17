"""Adapters of a store folder, loaded into one base model on first use, least recently used out.

The store is the folder ``adapterkit train --store`` writes: ``STORE/<name>/adapter_config.json``
plus ``adapter.safetensors``. The registry answers which adapters exist (without loading them),
loads the ones a pass needs (a fusion brings the adapters it fuses, from the same store), and
keeps at most ``max_adapters`` resident: loading one more evicts the least recently used adapter
that is neither pinned nor needed by the pass about to run.

**Names stay in the store.** A name is one folder name made of letters, digits, ``_`` and ``-``
(the names a model accepts), so ``../x`` and ``/etc`` are refused before any file is touched; the
folder's real path (symlinks resolved) must lie inside the store's real path, so a symlink that
points out of the store is refused too. **Base model.** Each adapter's recorded base-model
fingerprint is checked before loading; an adapter trained on another base is refused. **Fused
adapters.** A fusion that records the digests of the adapters it fuses is refused when one of
them in the store differs (replaced or retrained since, ``inference/store.py``).

Not thread-safe on its own: the engine calls :meth:`ensure`, :meth:`unload` and the pass that
follows under one lock (``lock``), so no adapter changes while a pass runs.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..formats.native import CONFIG_FILE, read_adapter_config
from ..inference.store import ChangedAdapter, check_read_adapter
from .errors import CapacityError, IncompatibleAdapter, RefusedAdapter, UnknownAdapter

if TYPE_CHECKING:
    from ..model import AdapterModel

NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class AdapterRegistry:
    """Which adapters of ``store`` are resident on ``model``, with LRU eviction and pinning.

    Args:
        model: the base model (adapters already on it when the registry starts are left alone
            and never evicted).
        store: the adapter store folder.
        max_adapters: most store adapters resident at once (fused adapters count), >= 1.
        lock: held around every change to the model; the engine holds it around passes too.
    """

    def __init__(self, model: AdapterModel, store: str | Path, max_adapters: int = 64, lock: threading.RLock | None = None):
        if max_adapters < 1:
            raise ValueError(f"max_adapters must be >= 1, got {max_adapters}")
        self.model = model
        self.store = Path(store)
        if not self.store.is_dir():
            raise FileNotFoundError(f"adapter store {self.store} is not a folder; train into one with --store DIR")
        self.root = self.store.resolve()
        self.max_adapters = max_adapters
        self.lock = lock or threading.RLock()
        self.pinned: set[str] = set()
        self._resident: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._view: tuple[str, ...] = ()  # a copy other threads may read while the worker loads
        self._meta: dict[str, tuple[float, dict[str, Any]]] = {}
        self.loads = 0  # how many times an adapter was loaded (reloads after eviction included)

    # ----------------------------------------------------------------- the store, read only
    def available(self) -> list[str]:
        """Names of the adapters in the store (folders with a config, inside the store), sorted."""
        found = []
        for entry in os.scandir(self.store):
            if NAME.match(entry.name) and (Path(entry.path) / CONFIG_FILE).is_file() and self._inside(Path(entry.path)):
                found.append(entry.name)
        return sorted(found)

    def folder(self, name: Any) -> Path:
        """The store folder of adapter ``name``.

        Raises:
            RefusedAdapter: not a plain folder name, or a folder that resolves outside the store.
            UnknownAdapter: no such adapter in the store (listing the ones there are).
        """
        if not isinstance(name, str) or not NAME.match(name):
            raise RefusedAdapter(
                f"adapter name {name!r} is refused: a name is one store folder made of letters, digits, '_' and '-' "
                "(no paths, no '..')"
            )
        path = self.store / name
        if not (path / CONFIG_FILE).is_file():
            raise UnknownAdapter(name, self.available())
        if not self._inside(path):
            raise RefusedAdapter(f"adapter {name!r} is refused: its folder resolves outside the store {self.store}")
        return path

    def meta(self, name: str) -> dict[str, Any]:
        """The saved config of adapter ``name`` (cached until its file changes)."""
        path = self.folder(name) / CONFIG_FILE
        stamp = path.stat().st_mtime
        cached = self._meta.get(name)
        if cached is None or cached[0] != stamp:
            try:
                cached = (stamp, read_adapter_config(path.parent))
            except ValueError as error:
                raise IncompatibleAdapter(f"adapter {name!r} cannot be read: {error}") from error
            self._meta[name] = cached
        return cached[1]

    def requirements(self, names: Iterable[str]) -> list[str]:
        """``names`` with the adapters their fusions fuse, in an order that loads each fusion
        after its adapters (each name once)."""
        ordered: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in ordered:
                return
            if name in path:
                raise IncompatibleAdapter(f"adapter {name!r} fuses itself through {' -> '.join(path)}")
            config = self.meta(name).get("config", {})
            if config.get("method") == "fusion":
                for fused in config.get("adapters", ()):
                    visit(fused, (*path, name))
            ordered.append(name)

        for name in names:
            visit(name, ())
        return ordered

    # ----------------------------------------------------------------- residency
    def resident(self) -> list[str]:
        """Store adapters on the model now, least recently used first (safe from any thread)."""
        return list(self._view)

    def ensure(self, names: Sequence[str], keep: Iterable[str] = ()) -> list[str]:
        """Make ``names`` (and what their fusions fuse) resident and most recently used, loading
        what is missing and evicting the least recently used others (never ``keep``: what the
        rest of the pass needs). Returns the names loaded.

        Raises:
            CapacityError: they need more than ``max_adapters``, or every other resident adapter
                is pinned.
            IncompatibleAdapter: an adapter of another base model, or broken files.
            UnknownAdapter, RefusedAdapter: as :meth:`folder`.
        """
        needed = self.requirements(names)
        if len(needed) > self.max_adapters:
            raise CapacityError(
                f"this request needs {len(needed)} adapters ({', '.join(needed)}) but the server keeps at most "
                f"{self.max_adapters}; start it with a larger --max-adapters"
            )
        loaded = []
        with self.lock:
            for name in needed:
                if name in self._resident:
                    self._resident.move_to_end(name)
                    continue
                self._make_room(keep={*needed, *keep})
                self._load(name)
                loaded.append(name)
            self._view = tuple(self._resident)
        return loaded

    def unload(self, name: str) -> bool:
        """Remove adapter ``name`` from the model (and unpin it); False if it was not resident.
        A resident fusion that fuses it is unloaded first."""
        with self.lock:
            if name not in self._resident:
                return False
            for other in list(self._resident):
                config = self.meta(other).get("config", {}) if other != name else {}
                if config.get("method") == "fusion" and name in config.get("adapters", ()):
                    self.unload(other)
            self.model.delete_adapter(name)
            del self._resident[name]
            self._view = tuple(self._resident)
            self.pinned.discard(name)
            return True

    def pin(self, names: Iterable[str]) -> None:
        """Load ``names`` (and what they fuse) and keep them resident until unpinned or unloaded.

        Raises:
            CapacityError: pinning them would leave no room for any other adapter.
        """
        names = list(names)
        with self.lock:
            wanted = set(self.pinned) | set(self.requirements(names))
            if len(wanted) >= self.max_adapters and len(wanted) > len(self.pinned):
                raise CapacityError(
                    f"pinning {', '.join(names)} would pin {len(wanted)} adapters with --max-adapters "
                    f"{self.max_adapters}, leaving no room for others; raise --max-adapters"
                )
            self.ensure(names)
            self.pinned.update(self.requirements(names))

    def unpin(self, name: str) -> None:
        self.pinned.discard(name)

    # ----------------------------------------------------------------- internals
    def _inside(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root)
        except ValueError:
            return False
        return True

    def _make_room(self, keep: set[str]) -> None:
        while len(self._resident) >= self.max_adapters:
            victim = next((n for n in self._resident if n not in keep and n not in self.pinned), None)
            if victim is None:
                raise CapacityError(
                    f"no adapter can be evicted: {len(self.pinned)} pinned and {len(keep)} needed by this pass of "
                    f"at most {self.max_adapters} resident; unpin some or raise --max-adapters"
                )
            self.unload(victim)

    def _load(self, name: str) -> None:
        folder = self.folder(name)
        meta = self.meta(name)
        if name in self.model.adapters:
            raise IncompatibleAdapter(f"an adapter named {name!r} is already on the model but not from the store")
        if not meta.get("base_model"):
            raise IncompatibleAdapter(f"adapter {name!r} does not record the base model it was trained on; retrain or re-save it")
        try:
            self.model.check_base(meta["base_model"], folder)
        except ValueError as error:
            raise IncompatibleAdapter(f"adapter {name!r} is refused: {error}") from error
        if meta.get("config", {}).get("method") == "fusion":
            try:
                for fused in meta["config"].get("adapters", ()):
                    check_read_adapter(folder, meta, fused, self.folder(fused))
            except ChangedAdapter as error:
                raise IncompatibleAdapter(f"adapter {name!r} is refused: {error}") from error
        try:
            self.model.load_adapter(folder, name=name, activate=False)
        except (ValueError, KeyError, OSError) as error:
            raise IncompatibleAdapter(f"adapter {name!r} cannot be loaded: {error}") from error
        self._resident[name] = None
        self.loads += 1
