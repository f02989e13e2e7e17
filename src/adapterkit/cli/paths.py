"""Output paths, checked before any work starts, and file-system errors in one line.

A run that trains for an epoch and then finds its output folder is a file, or cannot be written,
wastes the epoch and ends in a traceback. Every subcommand that writes checks its output paths
first (before loading a model or data) with :func:`writable_dir` / :func:`writable_file`, and
:func:`fresh_dir` refuses to train into a folder holding an earlier run unless told to. Nothing is
created by the checks. What still goes wrong later (a full disk) reaches ``cli.main`` as an
``OSError``, which :func:`describe_os_error` words as one line with the path.
"""

from __future__ import annotations

import os
from pathlib import Path


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (``path`` made absolute)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _require_writable_parent(path: Path, flag: str, what: str) -> None:
    """Refuse ``path`` (not existing yet, or a file to replace) unless it can be created: its
    nearest existing parent must be a folder this process may write in."""
    ancestor = _existing_ancestor(path.parent)
    if not ancestor.is_dir():
        raise ValueError(f"{flag} {path}: cannot create the {what}, {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot create the {what}, no permission to write in {ancestor}; choose another path")


def writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a folder this process can write (an existing folder, or one it can create).

    Raises:
        ValueError: ``path`` is a file, lies under a file, or is (or would be created in) a folder
            without write permission; the message names ``flag`` (the option that gave it).
    """
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{flag} {path}: is a file, not a folder; remove it or choose another path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: no permission to write in this folder; choose another path")
        return path
    _require_writable_parent(path, flag, "folder")
    return path


def writable_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a file this process can write (replacing an existing file, or creating it).

    Raises:
        ValueError: ``path`` is a folder, lies under a file, or its folder cannot be written in.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{flag} {path}: no permission to write this file; choose another path")
    _require_writable_parent(path, flag, "file")
    return path


def fresh_dir(path: str | os.PathLike, flag: str, reuse: bool, resumable: bool = False) -> Path:
    """``path`` as a writable folder that holds no earlier output, unless ``reuse`` (``--overwrite``
    or ``--resume`` was given); ``resumable``: the message offers ``--resume`` too.

    Raises:
        ValueError: as :func:`writable_dir`, or the folder is not empty and ``reuse`` is false.
    """
    path = writable_dir(path, flag)
    if not reuse and path.is_dir() and any(path.iterdir()):
        resume = ", --resume to continue it" if resumable else ""
        raise ValueError(
            f"{flag} {path} already holds an earlier run (or other files); pass --overwrite to write over it{resume}, "
            "or choose another folder"
        )
    return path


def require_input_file(path: Path, flag: str) -> None:
    """Refuse an input path that is not a file: missing, or a folder.

    Raises:
        FileNotFoundError: naming ``flag`` and ``path``.
    """
    if path.is_dir():
        raise FileNotFoundError(f"{flag} {path}: is a folder; give a file")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: file not found")


def describe_os_error(error: OSError) -> str:
    """An ``OSError`` as one line: the reason and the path(s) it names (``str(error)`` when it
    names none, as for a ``FileNotFoundError`` raised with a message)."""
    if error.filename is None or not error.strerror:
        return str(error)
    paths = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{paths}: {error.strerror.lower()}"
