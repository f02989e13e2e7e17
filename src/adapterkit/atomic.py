"""Atomic writes: build next to the target, then rename, so a crash never leaves half a file.

``os.replace`` is atomic for files on POSIX. A directory cannot replace a non-empty directory in
one step, so an existing target is first renamed aside and removed only after the new one is in
place: at every instant either the old or the new complete directory exists under a name a
reader can find (the old one under ``<target>.old-*`` during the swap). An empty target folder
(a name claimed with ``mkdir``, ``inference/store.py``) is replaced in one rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process's umask (POSIX offers no way to read it without setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_modes(paths: list[Path]) -> None:
    """``tempfile`` (and safetensors' writer) create private 0700 / 0600 entries; give ``paths``
    the permissions an ordinary ``mkdir`` / ``open`` would, so that another user (a server) can
    read saved adapters."""
    allowed = ~_umask()
    for path in paths:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & allowed)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``target`` when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _usual_modes([tmp, *tmp.rglob("*")])
        try:
            os.replace(tmp, target)  # one step when the target is absent or an empty folder (a claimed name)
        except OSError:
            if not target.exists():
                raise
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        _usual_modes([Path(tmp)])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
