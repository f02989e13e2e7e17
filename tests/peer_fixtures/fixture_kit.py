"""What every peer fixture case shares: the tiny bases, the fixed inputs, the seeded noise, the
outputs compared, and writing a case folder atomically.

Runs inside a peer environment (``.peer-envs/peft`` or ``.peer-envs/adapters``), never in
adapterkit's: it imports torch, transformers and safetensors only, plus ``tests/tiny_models.py``
for the tiny configs adapterkit's own tests use.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: tiny_models
from tiny_models import VOCAB, tiny_base  # noqa: E402

BASES = HERE / "_bases"
#: Base folder name -> tiny_models architecture. Saved once, by transformers 5 (adapterkit's).
BASE_ARCHS = {"tiny-bert": "bert", "tiny-llama": "llama"}
BASE_SEED = 0
#: Standard deviation of the noise added to every adapter tensor (moves zero-initialised ones).
NOISE_STD = 0.1
#: Smallest output change an adapter must make for its case to be kept.
MIN_EFFECT = 1e-3
SEQ, PAD_FROM, PAD_ID = 8, 5, 0


def versions(*libraries: str) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("torch", "transformers", "safetensors", *libraries):
        found[name] = importlib.metadata.version(name)
    return found


def transformers_major() -> int:
    return int(importlib.metadata.version("transformers").split(".")[0])


# ----------------------------------------------------------------------------- bases

def save_bases() -> None:
    """Save each tiny base with ``save_pretrained`` (safetensors) under ``_bases/``."""
    for folder, arch in BASE_ARCHS.items():
        with atomic_directory(BASES / folder) as tmp:
            tiny_base(arch, seed=BASE_SEED).save_pretrained(tmp)
        print(f"saved {BASES / folder}")


def base_file(folder: str) -> Path:
    return BASES / folder / "model.safetensors"


def check_identical_base(model: torch.nn.Module, folder: str) -> None:
    """Fail unless every tensor of the saved base is in ``model``, unchanged.

    Guards against a transformers version that silently re-initialises or renames a weight (the
    adapters environment loads bases saved by transformers 5 with transformers 4).
    """
    saved = load_file(base_file(folder))
    for candidate in (model, getattr(model, "base_model", model)):
        state = candidate.state_dict()
        if set(saved) <= set(state):
            break
    else:
        missing = sorted(set(saved) - set(model.base_model.state_dict()))
        raise AssertionError(f"{folder}: base tensors missing from {type(model).__name__}: {missing[:5]}")
    changed = [key for key, tensor in saved.items() if not torch.equal(state[key], tensor)]
    if changed:
        raise AssertionError(f"{folder}: base tensors loaded with other values: {changed[:5]}")


def load_base(folder: str, loader: Callable[..., torch.nn.Module], seed: int, **kwargs) -> torch.nn.Module:
    """``loader(base folder, **kwargs)`` in eval mode, with weights it adds (a fresh head) seeded.

    Loaded by the path ``_bases/<folder>`` relative to this folder (make_fixtures runs here), so
    the name the peers write into their configs (``base_model_name_or_path``, ``model_name``)
    holds no path of this machine, and peft, which looks that name up again when saving, finds it.
    """
    assert Path.cwd() == HERE, "run from tests/peer_fixtures (make_fixtures.py does)"
    torch.manual_seed(seed)
    model = loader(f"{BASES.name}/{folder}", **kwargs).eval()
    check_identical_base(model, folder)
    return model


# ----------------------------------------------------------------------------- inputs and noise

def fixed_inputs(with_token_types: bool) -> dict[str, torch.Tensor]:
    """Two rows of ``SEQ`` tokens (ids 3.. avoid specials); the second right-padded from ``PAD_FROM``."""
    generator = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(3, VOCAB, (2, SEQ), generator=generator)
    attention_mask = torch.ones(2, SEQ, dtype=torch.long)
    attention_mask[1, PAD_FROM:] = 0
    input_ids[attention_mask == 0] = PAD_ID
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if with_token_types:  # a second segment in each row, so the token-type embedding matters
        token_type_ids = torch.zeros_like(input_ids)
        token_type_ids[:, SEQ // 2 :] = 1
        inputs["token_type_ids"] = token_type_ids * attention_mask
    return inputs


def base_parameter_ids(model: torch.nn.Module) -> set[int]:
    """Identities of the parameters a model has before adapters are added."""
    return {id(p) for p in model.parameters()}


def perturb_adapter_weights(model: torch.nn.Module, base_ids: set[int], seed: int) -> list[str]:
    """Add seeded N(0, NOISE_STD) noise to every parameter the peer added (any not in
    ``base_ids``: adapters, heads, copies of modules to save) and to every base parameter it
    trains (e.g. biases); return their names."""
    generator = torch.Generator().manual_seed(seed)
    moved = []
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if id(parameter) in base_ids and not parameter.requires_grad:
                continue
            parameter.add_(torch.randn(parameter.shape, generator=generator) * NOISE_STD)
            moved.append(name)
    if not moved:
        raise AssertionError("no adapter parameter found to perturb")
    return moved


# ----------------------------------------------------------------------------- comparing outputs

def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float | str:
    if a.shape != b.shape:
        return f"shape {list(a.shape)} vs {list(b.shape)}"
    return (a - b).abs().max().item()


def check_reload(reference: dict[str, torch.Tensor], reloaded: dict[str, torch.Tensor]) -> dict[str, float]:
    """The peer reloading its own folder must reproduce every reference output exactly."""
    diffs = {key: max_abs_diff(reference[key], reloaded[key]) for key in reference}
    if any(diff != 0.0 for diff in diffs.values()):
        raise AssertionError(f"the peer's reload differs from its own reference: {diffs}")
    return diffs


def check_effect(with_adapter: dict[str, torch.Tensor], without: dict[str, torch.Tensor]) -> dict[str, float | str]:
    """Each adapter must change its output by more than MIN_EFFECT (or change its shape)."""
    diffs = {key: max_abs_diff(with_adapter[key], without[key]) for key in with_adapter}
    weak = {key: diff for key, diff in diffs.items() if isinstance(diff, float) and diff <= MIN_EFFECT}
    if weak:
        raise AssertionError(f"adapter changes the output by no more than {MIN_EFFECT}: {weak}")
    return diffs


# ----------------------------------------------------------------------------- writing a case

class Made(NamedTuple):
    """A case built by its peer library, before anything is written."""

    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]  # the reference: output.<field> (and output.<adapter>.<field>)
    without: dict[str, torch.Tensor]  # the same outputs with the adapters switched off
    save: Callable[[Path], None]  # writes the adapter folder as the library does
    reload: Callable[[Path], dict[str, torch.Tensor]]  # fresh base + that folder -> outputs
    record: dict  # what the library module says about the case (method, configs, classes)


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """An empty temporary folder beside ``target`` that replaces it when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for path in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700; give ordinary modes
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tensor_listing(path: Path) -> dict[str, list]:
    """``{key: [shape, dtype]}`` of a safetensors or torch-pickled weight file."""
    tensors = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    return {key: [list(t.shape), str(t.dtype).removeprefix("torch.")] for key, t in sorted(tensors.items())}


def describe_folder(folder: Path) -> dict:
    """Every file under ``folder`` with its size, every JSON in full, every weight file's tensors."""
    files, configs, tensors = {}, {}, {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        files[name] = path.stat().st_size
        if path.suffix == ".json":
            configs[name] = json.loads(path.read_text())
        elif path.suffix in (".safetensors", ".bin"):
            tensors[name] = tensor_listing(path)
    return {"files": files, "configs": configs, "tensors": tensors}


def write_case_files(folder: Path, made: Made, record: dict) -> None:
    """``reference.safetensors`` (inputs and the peer's outputs, float32) and ``case.json`` beside
    the saved ``adapter/`` in ``folder``."""
    tensors = {**made.inputs, **{key: value.float() for key, value in made.outputs.items()}}
    save_file({key: value.contiguous() for key, value in tensors.items()}, folder / "reference.safetensors")
    record = {
        **record,
        "made": True,
        "adapter_files": describe_folder(folder / "adapter"),
        "reference": {key: list(value.shape) for key, value in tensors.items()},
    }
    (folder / "case.json").write_text(json.dumps(record, indent=1) + "\n")


def write_refusal(target: Path, error: BaseException, record: dict) -> None:
    """Record a case the peer refuses: ``target``/case.json with the peer's error, no adapter."""
    with atomic_directory(target) as tmp:
        record = {**record, "made": False, "error": f"{type(error).__name__}: {error}"}
        (tmp / "case.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"refused {target.relative_to(HERE)}: {record['error']}")
