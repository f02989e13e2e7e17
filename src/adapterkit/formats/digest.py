"""The content identity of a saved adapter folder: a SHA-256 over what defines the adapter.

An adapter that reads other saved adapters (a fusion reads the adapters it fuses) only means
something over those exact adapters, so it records their digests when saved and loading it checks
them (``inference/store.py``). The digest covers every file of the folder byte for byte (weights,
a peer library's JSON), sorted by relative path, except adapterkit's own config, of which only
what defines the adapter's function counts: the method config and the head. Its other keys
(training records, the paths an adapter recorded, the base model's path) can change when the
same weights are saved again elsewhere; the base model itself is checked on its own when loading.
Hidden files (a half-written ``.tmp-`` entry, ``.DS_Store``) are left out.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .native import CONFIG_FILE, FORMAT

PREFIX = "sha256:"
_DEFINING_KEYS = ("config", "head")
_CHUNK = 1 << 20


def _config_bytes(path: Path) -> bytes:
    """adapterkit's config reduced to its defining keys (canonical JSON); another library's as is."""
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return raw
    return json.dumps({k: data.get(k) for k in _DEFINING_KEYS}, sort_keys=True).encode()


def adapter_digest(directory: str | Path) -> str:
    """``"sha256:<64 hex digits>"`` of the saved adapter folder ``directory`` (module docstring).

    Raises:
        FileNotFoundError: ``directory`` is not a folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not an adapter folder")
    digest = hashlib.sha256()
    files = sorted(
        p for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )
    for path in files:
        relative = path.relative_to(directory).as_posix()
        digest.update(relative.encode() + b"\0")
        if relative == CONFIG_FILE:
            content = _config_bytes(path)
            digest.update(len(content).to_bytes(8, "little") + content)
            continue
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with path.open("rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    return PREFIX + digest.hexdigest()
