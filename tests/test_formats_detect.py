"""Which library wrote an adapter folder is read from its JSON, not its file names; AdapterHub's
pickled ``.bin`` weights are read with ``torch.load(weights_only=True)`` and nothing else
unpickles."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit import AdapterModel, HeadConfig
from adapterkit.formats.detect import ADAPTERHUB, ADAPTERKIT, PEFT, folder_format
from adapterkit.formats.weights import read_weights
from tiny_models import tiny_base

FIXTURES = Path(__file__).parent / "peer_fixtures"
SRC = Path(__file__).resolve().parents[1] / "src"


def test_each_librarys_folder_is_recognised_by_its_json(tmp_path):
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("ours", "pfeiffer", HeadConfig(num_labels=2))
    model.save_adapter("ours", tmp_path / "ours")
    # adapterkit and AdapterHub both write adapter_config.json and adapter.safetensors
    assert (tmp_path / "ours" / "adapter.safetensors").is_file()
    assert (FIXTURES / "adapters/lora/adapter/adapter.safetensors").is_file()
    assert folder_format(tmp_path / "ours") == ADAPTERKIT
    assert folder_format(FIXTURES / "adapters/lora/adapter") == ADAPTERHUB
    assert folder_format(FIXTURES / "peft/lora_seqcls/adapter") == PEFT
    assert folder_format(FIXTURES / "adapters/fusion_seq_bn/adapter") == ADAPTERHUB  # a folder of folders
    assert folder_format(FIXTURES / "adapters/fusion_seq_bn/adapter/fusion") == ADAPTERHUB  # the fusion alone


def test_an_unknown_config_or_no_config_is_refused_clearly(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither adapterkit's .* nor AdapterHub's"):
        folder_format(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        folder_format(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist; check the adapter folder's path"):
        folder_format(tmp_path / "typo")


def test_a_pickled_adapterhub_folder_loads_like_its_safetensors_twin(tmp_path):
    """AdapterHub's default save is a pickled .bin with the same keys: written here with
    torch.save from the committed safetensors files, it must load with the same outputs."""
    source = FIXTURES / "adapters/seq_bn_clshead/adapter"
    pickled = tmp_path / "adapter"
    pickled.mkdir()
    for name in ("adapter_config.json", "head_config.json"):
        shutil.copy(source / name, pickled / name)
    torch.save(load_file(source / "adapter.safetensors"), pickled / "pytorch_adapter.bin")
    torch.save(load_file(source / "model_head.safetensors"), pickled / "pytorch_model_head.bin")
    reference = load_file(source.parent / "reference.safetensors")
    inputs = {k: reference[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    outputs = []
    for folder in (source, pickled):
        model = AdapterModel.from_pretrained(str(FIXTURES / "_bases/tiny-bert"))
        model.load_adapter(folder)
        with torch.no_grad():
            outputs.append(model.eval()(**inputs).logits)
    assert torch.equal(outputs[0], outputs[1])
    assert (outputs[1] - reference["output.logits"]).abs().max() <= 1e-5


class Trap:
    """Unpickling this would run code."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_a_bin_holding_anything_but_tensors_is_refused_without_running_it(tmp_path):
    path = tmp_path / "pytorch_adapter.bin"
    torch.save({"x": torch.zeros(1), "trap": Trap()}, path)
    with pytest.raises(ValueError, match="not a weights-only torch file"):
        read_weights(path)


def unpickling_calls(path: Path) -> list[str]:
    """``torch.load`` calls (with their keywords) and pickle-family imports in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            found.append("torch.load(" + ", ".join(f"{k.arg}={ast.unparse(k.value)}" for k in node.keywords) + ")")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            found += [f"import {n}" for n in names if n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle")]
    return found


def test_nothing_in_adapterkit_unpickles_but_the_weights_readers():
    """``torch.load`` only with ``weights_only=True``: in ``formats/weights.py`` (peer ``.bin``
    files) and ``vision_models.py`` (the bundled CNN's ImageNet weights); ``pickle`` only in
    ``data/numpy_pickle.py``, whose unpickler resolves numpy's array names and nothing else."""
    found = {str(p.relative_to(SRC)): calls for p in (SRC / "adapterkit").rglob("*.py") if (calls := unpickling_calls(p))}
    assert found == {
        "adapterkit/formats/weights.py": ["torch.load(map_location='cpu', weights_only=True)"],
        "adapterkit/vision_models.py": ["torch.load(map_location='cpu', weights_only=True)"],
        "adapterkit/data/numpy_pickle.py": ["import pickle"],
    }
