"""The numerical checks every method gets, driven by one table of methods x tiny architectures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import ARCHITECTURES, DECODERS, ENCODERS, HIDDEN, LAYERS, tiny_base, tiny_batch, train_and_check_isolation

from adapterkit import AdapterModel, HeadConfig
from adapterkit.heads import head_loss
from adapterkit.registry import make_config

# method -> options used in the table (small bottlenecks so a 32-wide model can host them)
METHODS: dict[str, dict] = {
    "houlsby": {"bottleneck_size": 4},
    "pfeiffer": {"bottleneck_size": 4},
    "parallel": {"bottleneck_size": 4},
    "scaled_parallel": {"bottleneck_size": 4, "scaling": "learned"},
    "lora": {"r": 2, "targets": ["q", "k", "v", "o", "ffn_in", "ffn_out"]},
    "bitfit": {},
    "probe": {},
    "partial": {"top_layers": 1},
    "full": {},
}
MODIFIES_BASE = {"full", "partial"}
TABLE = [(arch, method) for arch in ARCHITECTURES for method in METHODS]


def make(arch: str, method: str, head: HeadConfig | None = None, seed: int = 0) -> AdapterModel:
    model = AdapterModel(tiny_base(arch, seed))
    model.add_adapter("task", method, head or HeadConfig(num_labels=3, dropout=0.0), **METHODS[method])
    return model


@torch.no_grad()
def perturb(model: AdapterModel, name: str, seed: int = 3) -> None:
    """Give every parameter an adapter owns non-zero values (fresh adapters are mostly zeros)."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.adapter_parameters(name).values():
        param.add_(0.1 * torch.randn(param.shape, generator=generator))


def hidden(model: AdapterModel, batch, adapters="task") -> torch.Tensor:
    with model.using(adapters):
        out = model.body(**batch)
    return out.last_hidden_state


@pytest.mark.parametrize("arch,method", TABLE)
def test_identity_at_init(arch, method):
    model = make(arch, method)
    batch = tiny_batch()
    reference = model.body(**batch).last_hidden_state  # no setup active: plain base model
    torch.testing.assert_close(hidden(model, batch), reference, rtol=0, atol=0)


@pytest.mark.parametrize("arch,method", TABLE)
def test_only_intended_parameters_train(arch, method):
    model = make(arch, method)
    model.add_adapter("other", "pfeiffer", HeadConfig(num_labels=2)) if method not in MODIFIES_BASE else None
    model.train_adapter("task")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    if method == "full":
        assert {n for n in trainable if n.startswith("base.")} == {f"base.{n}" for n, _ in model.base.named_parameters()}
    elif method == "partial":
        top = model.parts.layers[-1].layer
        top_ids = {id(p) for p in top.parameters()}
        base_trainable = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("base.")]
        assert base_trainable and all(id(p) in top_ids for p in base_trainable)
        assert len(base_trainable) == len(top_ids)
    else:
        assert all(n.startswith(("adapters.task.", "heads.task.")) for n in trainable), trainable
        if method != "probe":
            assert any(n.startswith("adapters.task.") for n in trainable)
    assert any(n.startswith("heads.task.") for n in trainable)


@pytest.mark.parametrize("arch,method", [(a, m) for a, m in TABLE if m not in MODIFIES_BASE])
def test_base_and_other_adapters_bit_identical_after_training(arch, method):
    model = make(arch, method)
    model.add_adapter("earlier", "houlsby", HeadConfig(num_labels=3, dropout=0.0), bottleneck_size=4)
    perturb(model, "earlier")
    train_and_check_isolation(model, tiny_batch())


@pytest.mark.parametrize("arch,method", TABLE)
def test_save_load_gives_identical_outputs(arch, method, tmp_path):
    model = make(arch, method)
    perturb(model, "task")
    batch = tiny_batch()
    expected = model(**batch, adapters="task").logits
    model.save_adapter("task", tmp_path / "task")

    saved = load_file(str(tmp_path / "task" / "adapter.safetensors"))
    assert set(saved) == set(model.adapter_parameters("task"))
    assert any(k.startswith("base.") for k in saved) == (method in MODIFIES_BASE)
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == ["adapter.safetensors", "adapter_config.json"]

    fresh = AdapterModel(tiny_base(arch))
    fresh.load_adapter(tmp_path / "task")
    torch.testing.assert_close(fresh(**batch).logits, expected, rtol=0, atol=0)


def test_saved_keys_of_a_houlsby_adapter(tmp_path):
    model = make("bert", "houlsby")
    model.save_adapter("task", tmp_path / "a")
    keys = set(load_file(str(tmp_path / "a" / "adapter.safetensors")))
    expected = {
        f"adapter.layers.{i}.{site}.{part}.{kind}"
        for i in range(LAYERS)
        for site in ("attn", "ffn")
        for part in ("down", "up")
        for kind in ("weight", "bias")
    }
    expected |= {f"adapter.layers.{i}.{norm}.{kind}" for i in range(LAYERS) for norm in ("attn_norm", "ffn_norm") for kind in ("weight", "bias")}
    expected |= {"head.layers.0.weight", "head.layers.0.bias"}
    assert keys == expected
    meta = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert meta["config"]["method"] == "houlsby" and meta["config"]["bottleneck_size"] == 4
    assert meta["head"]["num_labels"] == 3


def _kv_width(arch: str) -> int:
    return HIDDEN // 2 if arch in DECODERS else HIDDEN  # the tiny decoders use 2 of 4 heads for k/v


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_parameter_counts_follow_the_formulas(arch):
    d, m, L = HIDDEN, 4, LAYERS
    bottleneck = 2 * d * m + d + m
    model = AdapterModel(tiny_base(arch))

    def count(name, method, **options):
        model.add_adapter(name, method, **options)
        return sum(p.numel() for p in model.adapters[name].parameters())

    assert count("h", "houlsby", bottleneck_size=m, train_layer_norms=False) == L * 2 * bottleneck
    norm_params = 2 * d if arch in ENCODERS else d  # LayerNorm has a bias, RMSNorm does not
    assert count("hn", "houlsby", bottleneck_size=m) == L * 2 * (bottleneck + norm_params)
    assert count("p", "pfeiffer", bottleneck_size=m) == L * bottleneck
    assert count("par", "parallel", bottleneck_size=m) == L * bottleneck
    r, kv = 2, _kv_width(arch)
    assert count("l", "lora", r=r, targets=["q", "v"]) == L * (r * (d + d) + r * (d + kv))
    ffn = 64
    ffn_in_count = 2 if arch in DECODERS else 1
    linear_biases = d + kv + kv + d + ffn_in_count * ffn + d
    norm_biases = 2 * d if arch in ENCODERS else 0
    assert count("b", "bitfit") == L * (linear_biases + norm_biases)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lora_merged_equals_unmerged_equals_unloaded(arch):
    model = make(arch, "lora")
    perturb(model, "task")
    batch = tiny_batch()
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    unmerged = hidden(model, batch)
    assert not torch.allclose(unmerged, model.body(**batch).last_hidden_state)
    model.merge_adapter("task")
    model.merge_adapter("task")  # idempotent
    torch.testing.assert_close(hidden(model, batch), unmerged, rtol=1e-5, atol=1e-5)
    model.unmerge_adapter("task")
    model.unmerge_adapter("task")
    torch.testing.assert_close(hidden(model, batch), unmerged, rtol=1e-5, atol=1e-5)
    for key, value in model.base.state_dict().items():
        torch.testing.assert_close(value, base_before[key], rtol=0, atol=1e-6)
    model.merge_and_unload("task")
    assert "task" not in model.adapters
    torch.testing.assert_close(model.body(**batch).last_hidden_state, unmerged, rtol=1e-5, atol=1e-5)


def test_training_a_merged_lora_is_refused():
    model = make("bert", "lora")
    model.merge_adapter("task")
    with pytest.raises(ValueError, match="unmerge"):
        model.train_adapter("task")


def test_loading_into_another_base_model_is_refused(tmp_path):
    model = make("bert", "pfeiffer")
    model.save_adapter("task", tmp_path / "a")
    other = AdapterModel(tiny_base("bert", seed=1))
    with pytest.raises(ValueError, match="trained on base model .* load it into the model it was trained on"):
        other.load_adapter(tmp_path / "a")
    assert "task" not in other.adapters


def test_clear_errors():
    model = AdapterModel(tiny_base("bert"))
    with pytest.raises(ValueError, match="unknown method 'nope'; available methods: .*houlsby"):
        model.add_adapter("a", "nope")
    with pytest.raises(ValueError, match="larger than the hidden size 32"):
        model.add_adapter("a", "pfeiffer", bottleneck_size=64)
    with pytest.raises(ValueError, match="unknown target role.*'gate'.*roles are q, k, v, o, ffn_in, ffn_out"):
        model.add_adapter("a", "lora", targets=["q", "gate"])
    with pytest.raises(ValueError, match="has no option.*rank.*options are"):
        model.add_adapter("a", "lora", rank=4)
    with pytest.raises(ValueError, match="layer 7 does not exist; the model has 2 layers"):
        model.add_adapter("a", "pfeiffer", layers=[7])
    with pytest.raises(ValueError, match="no adapter named 'missing'"):
        model(**tiny_batch(), adapters="missing")
    with pytest.raises(ValueError, match="only letters, digits"):
        model.add_adapter("a.b", "pfeiffer")
    model.add_adapter("a", "pfeiffer")
    with pytest.raises(ValueError, match="exists already"):
        model.add_adapter("a", "pfeiffer")
    with pytest.raises(ValueError, match="must be the only adapter"):
        model.add_adapter("f", "full")


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("lora", {"r": "8"}, r"lora: option r must be int, got '8' \(str\)"),
        ("lora", {"r": 8.5}, "option r must be int"),
        ("houlsby", {"reduction_factor": "abc"}, "option reduction_factor must be float"),
        ("pfeiffer", {"layers": [0, "1"]}, r"option layers must be tuple\[int, \.\.\.\] \| None"),
        ("prefix", {"reparameterize": 1}, "option reparameterize must be bool"),
    ],
)
def test_options_of_the_wrong_type_are_refused_by_name(method, options, message):
    with pytest.raises(ValueError, match=message):
        make_config(method, **options)


def test_the_package_knows_the_built_in_methods_without_importing_the_model():
    code = "import sys, adapterkit; print(adapterkit.make_config('houlsby').method, " \
        "adapterkit.make_config('fusion', adapters=['a', 'b']).method, 'adapterkit.model' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "houlsby fusion False"


def test_the_bare_registry_says_how_to_register_the_built_in_methods():
    code = "from adapterkit.registry import make_config; make_config('houlsby')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "no method is registered yet; import adapterkit.methods" in done.stderr


def test_a_second_method_under_a_taken_name_is_refused():
    from adapterkit.methods.lora import LoraAdapter, LoraConfig
    from adapterkit.registry import register_method

    with pytest.raises(ValueError, match="a method named 'lora' is registered already"):
        register_method(LoraConfig, LoraAdapter)


def test_valid_option_types_pass_ints_as_floats_and_lists_as_tuples():
    assert make_config("scaled_parallel", scaling=4).scaling == 4
    assert make_config("scaled_parallel", scaling="learned").scaling == "learned"
    assert make_config("pfeiffer", layers=[0, 1]).layers == (0, 1)


def test_unknown_architecture_names_the_model_type_and_the_fix():
    from transformers import GPT2Config, GPT2Model

    with pytest.raises(ValueError, match="no placement for model type 'gpt2'.*register_placement"):
        AdapterModel(GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=50)))


def test_a_placement_path_that_matches_nothing_is_reported():
    from dataclasses import replace

    from adapterkit import PLACEMENTS

    broken = replace(PLACEMENTS["bert"], ffn_out="output.nonexistent")
    with pytest.raises(ValueError, match="'output.nonexistent' does not exist in the layers of a 'bert' model"):
        AdapterModel(tiny_base("bert"), placement=broken)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_heads_give_losses_that_backpropagate(kind):
    head = HeadConfig(kind=kind, num_labels=3 if kind == "classification" else 1, pooling="cls", mlp=True)
    model = make("roberta", "pfeiffer", head)
    model.train_adapter("task")
    labels = torch.tensor([0, 2, 1]) if kind == "classification" else torch.tensor([0.5, -1.0, 2.0])
    out = model(**tiny_batch(), labels=labels)
    expected_shape = (3, 3) if kind == "classification" else (3,)
    assert out.logits.shape == expected_shape
    torch.testing.assert_close(out.loss, head_loss(model.heads["task"].config, out.logits, labels))
    out.loss.backward()
    assert model.adapters["task"].layers["0"]["ffn"].up.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", DECODERS)
def test_causal_lm_head_and_generation_on_decoders(arch):
    model = make(arch, "lora", HeadConfig(kind="causal_lm"))
    perturb(model, "task")
    batch = tiny_batch()
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape[-1] == 120 and out.loss is not None
    prompt = batch["input_ids"][:1]
    cached = model.generate(prompt, max_new_tokens=4, do_sample=False)
    uncached = model.generate(prompt, max_new_tokens=4, do_sample=False, use_cache=False)
    assert cached.shape == (1, prompt.shape[1] + 4)
    assert torch.equal(cached, uncached)


def test_causal_lm_head_on_an_encoder_is_refused():
    model = AdapterModel(tiny_base("bert"))
    with pytest.raises(ValueError, match="causal_lm head needs a decoder"):
        model.add_adapter("a", "lora", HeadConfig(kind="causal_lm"))


def test_a_norm_delta_keeps_no_normalised_copy_for_backward_and_gets_the_same_gradients():
    from torch.nn import functional as F

    from adapterkit.methods.deltas import NormDelta

    norm = torch.nn.LayerNorm(16)
    delta = NormDelta(norm)
    with torch.no_grad():
        delta.weight.normal_(), delta.bias.normal_()
    x = torch.randn(4, 8, 16, requires_grad=True)
    probe = torch.randn(4, 8, 16)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ours = delta(x, norm(x))
    ours.mul(probe).sum().backward()
    # only the (shared) input and per-row statistics: no batch x length x hidden tensor besides x
    large = {t.untyped_storage().data_ptr() for t in saved if t.numel() == x.numel()}
    assert large <= {x.untyped_storage().data_ptr()}
    grads = x.grad.clone(), delta.weight.grad.clone(), delta.bias.grad.clone()
    x.grad = delta.weight.grad = delta.bias.grad = None
    reference = norm(x) + delta.weight * F.layer_norm(x, (16,), eps=norm.eps) + delta.bias
    reference.mul(probe).sum().backward()
    torch.testing.assert_close(ours, reference)
    for got, expected in zip(grads, (x.grad, delta.weight.grad, delta.bias.grad)):
        torch.testing.assert_close(got, expected)
