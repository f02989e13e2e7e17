"""adapterkit -> peft / AdapterHub -> adapterkit gives bit-identical outputs, for every method and head
each peer can represent; what a peer cannot represent is refused with the reason; exported
configs hold only fields the peer itself writes (compared with the configs peft and AdapterHub
wrote for the committed fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import randomize, tiny_base, tiny_batch

from adapterkit import AdapterModel, HeadConfig
from adapterkit.formats.detect import folder_format
from adapterkit.formats.layout import NotConvertible
from adapterkit.registry import make_config

FIXTURES = Path(__file__).parent / "peer_fixtures"
CLS = HeadConfig(num_labels=3, pooling="cls", mlp=True)
FIRST = HeadConfig(num_labels=3, pooling="first", mlp=True)
REGRESSION = HeadConfig(kind="regression", num_labels=1, pooling="cls", mlp=True)
TAGGING = HeadConfig(kind="tagging", num_labels=5)
OWN_LM = HeadConfig(kind="causal_lm", own_lm_head=True)
LORA_QV = {"targets": ["q", "v"], "r": 4}
UNION_RANKS = {"configs": [{"method": "lora", "r": 4, "targets": ["q", "v"]}, {"method": "lora", "r": 2, "alpha": 4.0, "targets": ["k"], "layers": [1]}]}
LORA_ONLY_BIAS = {"configs": [{"method": "lora", "r": 4, "targets": ["q", "v"]}, {"method": "bitfit", "targets": ["q", "v"], "include_norms": False}]}
PEFT_IA3 = {}  # adapterkit's default IA3 is peft's placement: k, v outputs; ffn_out input
HUB_IA3 = {"targets": ["k", "v", "ffn_in"], "input_targets": []}

#: (arch, method, options, head, formats)
CASES = [
    ("bert", "lora", LORA_QV, CLS, ("peft", "adapterhub")),
    ("bert", "lora", {**LORA_QV, "use_rslora": True, "dropout": 0.1}, REGRESSION, ("peft", "adapterhub")),
    ("bert", "lora", {**LORA_QV, "use_dora": True}, CLS, ("peft",)),
    ("bert", "lora", {"targets": ["q", "k", "v", "ffn_in", "ffn_out"], "layers": [1]}, TAGGING, ("peft", "adapterhub")),
    ("bert", "union", UNION_RANKS, CLS, ("peft",)),
    ("bert", "union", LORA_ONLY_BIAS, None, ("peft",)),
    ("bert", "ia3", PEFT_IA3, CLS, ("peft",)),
    ("bert", "ia3", HUB_IA3, None, ("peft", "adapterhub")),
    ("bert", "prefix", {"prefix_length": 3, "reparam_hidden": 16, "shift_positions": True}, CLS, ("peft",)),
    ("bert", "prefix", {"prefix_length": 3, "reparam_hidden": 16}, CLS, ("adapterhub",)),
    ("bert", "prefix", {"prefix_length": 3, "reparameterize": False, "init": "random"}, None, ("adapterhub",)),
    ("bert", "prompt", {"prompt_length": 4, "init": "random"}, FIRST, ("peft",)),
    ("bert", "prompt", {"prompt_length": 4, "init": "random", "insert_at": "embedding_output"}, FIRST, ("adapterhub",)),
    ("bert", "pfeiffer", {"reduction_factor": 8}, CLS, ("adapterhub",)),
    ("bert", "houlsby", {"reduction_factor": 8, "train_layer_norms": False, "non_linearity": "gelu", "layers": [0]}, TAGGING, ("adapterhub",)),
    ("bert", "parallel", {"bottleneck_size": 4}, None, ("adapterhub",)),
    ("bert", "scaled_parallel", {"bottleneck_size": 4, "scaling": "learned"}, REGRESSION, ("adapterhub",)),
    ("roberta", "lora", LORA_QV, CLS, ("peft",)),
    ("llama", "lora", {"targets": ["q", "k", "v", "o", "ffn_in", "ffn_out"]}, OWN_LM, ("peft",)),
    ("llama", "ia3", PEFT_IA3, None, ("peft",)),
]


def build(arch: str, method: str, options: dict, head: HeadConfig | None) -> AdapterModel:
    model = AdapterModel(tiny_base(arch))
    model.add_adapter("task", make_config(method, **options), head)
    randomize(model.adapters["task"], seed=3, std=0.1)
    if head is not None:
        randomize(model.heads["task"], seed=4)
    return model.eval()


def output(model: AdapterModel, name: str) -> torch.Tensor:
    batch = tiny_batch()
    with torch.no_grad():
        out = model(**batch, adapters=name)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("arch, method, options, head, formats", CASES, ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_export_and_load_back_gives_the_same_outputs(tmp_path, arch, method, options, head, formats):
    model = build(arch, method, options, head)
    expected = output(model, "task")
    for target in formats:
        folder = model.save_adapter("task", tmp_path / target, format=target)
        assert folder_format(folder) == target
        again = AdapterModel(tiny_base(arch))
        name = again.load_adapter(folder, name="back")
        got = output(again.eval(), name)
        assert torch.equal(got, expected), target


def test_a_fusion_exports_to_adapterhub_with_its_adapters(tmp_path):
    model = AdapterModel(tiny_base("bert"))
    for name in ("a", "b"):
        model.add_adapter(name, "pfeiffer", reduction_factor=8)
        randomize(model.adapters[name], seed=len(name) + ord(name))
    model.add_adapter("ab", make_config("fusion", adapters=["a", "b"], residual_before=False), HeadConfig(num_labels=2, pooling="cls", mlp=True))
    randomize(model.adapters["ab"], seed=9, std=0.05)
    with torch.no_grad():
        model.adapters["ab"].layers["0"]["ffn"].value.bias.zero_()
        model.adapters["ab"].layers["1"]["ffn"].value.bias.zero_()
    randomize(model.heads["ab"], seed=10)
    expected = output(model.eval(), "ab")
    model.save_adapter("ab", tmp_path / "hub", format="adapterhub")
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["a", "b", "fusion"]
    again = AdapterModel(tiny_base("bert"))
    assert again.load_adapter(tmp_path / "hub") == "a_b"
    assert sorted(again.adapters) == ["a", "a_b", "b"]
    assert torch.equal(output(again.eval(), "a_b"), expected)


#: (arch, method, options, head, format, what the refusal names)
REFUSALS = [
    ("bert", "pfeiffer", {}, None, "peft", "peft has no equivalent of 'pfeiffer'"),
    ("bert", "houlsby", {}, None, "adapterhub", "train_layer_norms"),
    ("bert", "prompt", {"init": "random"}, None, "adapterhub", "insert_at='input'"),
    ("bert", "prompt", {"init": "random", "insert_at": "embedding_output"}, None, "peft", "after the embedding layer"),
    ("bert", "prompt", {"init": "random"}, CLS, "peft", "pooling='cls'"),
    ("bert", "prefix", {}, None, "peft", "shift_positions=False"),
    ("bert", "prefix", {"shift_positions": True}, None, "adapterhub", "shifts the tokens' positions"),
    ("bert", "ia3", {}, None, "adapterhub", "scales the inputs"),
    ("bert", "lora", {"targets": ["o"]}, None, "adapterhub", r"not \['o'\]"),
    ("bert", "lora", {"use_dora": True}, None, "adapterhub", "DoRA"),
    ("bert", "lora", {}, HeadConfig(num_labels=2, pooling="mean"), "peft", "pooling='mean'"),
    ("bert", "lora", {}, HeadConfig(num_labels=2, pooling="mean"), "adapterhub", "pooling='mean'"),
    ("bert", "lora", {}, HeadConfig(num_labels=2, pooling="cls"), "peft", "mlp=False"),
    ("bert", "mam", {"reparam_hidden": 8}, None, "peft", "'mam'"),
    ("bert", "deep_prompt", {"init": "random"}, None, "peft", "'deep_prompt'"),
    ("llama", "lora", {}, None, "adapterhub", "encoder models"),
]


@pytest.mark.parametrize("arch, method, options, head, target, match", REFUSALS, ids=[f"{r[1]}-{r[4]}-{i}" for i, r in enumerate(REFUSALS)])
def test_what_a_peer_cannot_represent_is_refused_saying_why(tmp_path, arch, method, options, head, target, match):
    model = build(arch, method, options, head)
    with pytest.raises(NotConvertible, match=match):
        model.save_adapter("task", tmp_path / "out", format=target)
    assert not (tmp_path / "out").exists()


def peer_fields(glob: str) -> dict[str, set[str]]:
    """Fields the peer itself wrote into the fixtures' configs, by peft type / AdapterHub architecture."""
    found: dict[str, set[str]] = {}
    for path in FIXTURES.glob(glob):
        data = json.loads(path.read_text())
        kind = data.get("peft_type") or (data.get("config") or {}).get("architecture") or "bottleneck"
        found.setdefault(kind, set()).update(data if "peft_type" in data else data["config"])
    return found


def test_exported_configs_hold_only_fields_the_peers_write(tmp_path):
    peft_fields, hub_fields = peer_fields("peft/*/adapter/**/adapter_config.json"), peer_fields("adapters/*/adapter/**/adapter_config.json")
    for arch, method, options, head, formats in CASES:
        model = build(arch, method, options, head)
        for target in formats:
            folder = model.save_adapter("task", tmp_path / f"{method}-{target}", format=target)
            data = json.loads((folder / "adapter_config.json").read_text())
            if target == "peft":
                assert set(data) <= peft_fields[data["peft_type"]], (method, set(data) - peft_fields[data["peft_type"]])
            else:
                kind = data["config"].get("architecture") or "bottleneck"
                assert set(data["config"]) <= hub_fields[kind], (method, set(data["config"]) - hub_fields[kind])


def test_adapterkit_convert_goes_between_all_three_formats(tmp_path, capsys):
    from adapterkit.cli import main

    base = str(FIXTURES / "_bases/tiny-bert")
    peft_lora = FIXTURES / "peft/lora_seqcls/adapter"
    assert main(["convert", str(peft_lora), str(tmp_path / "ours"), "--to", "adapterkit", "--model", base]) == 0
    assert "(peft) -> " in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "hub"), "--to", "adapterhub"]) == 0  # base recorded
    assert main(["convert", str(tmp_path / "hub"), str(tmp_path / "peft"), "--to", "peft", "--model", base]) == 0
    outputs = []
    for folder in (peft_lora, tmp_path / "ours", tmp_path / "hub", tmp_path / "peft"):
        model = AdapterModel.from_pretrained(base)
        name = model.load_adapter(folder)
        outputs.append(output(model.eval(), name))
    assert all(torch.equal(o, outputs[0]) for o in outputs[1:])
    # a refusal is one line on stderr and status 2
    assert main(["convert", str(FIXTURES / "peft/lora_bias_all/adapter"), str(tmp_path / "x"), "--to", "adapterkit", "--model", base]) == 2
    assert "bias='all'" in capsys.readouterr().err
    assert main(["convert", str(FIXTURES / "adapters/ia3/adapter"), str(tmp_path / "y"), "--to", "peft"]) == 2
    assert "--model" in capsys.readouterr().err  # the recorded base (a path relative to the fixtures) is not here
