"""The checks every method gets, run once from THE table of methods (``method_table.py``): one row
per method configuration x the tiny architectures it runs on, with the checks that apply chosen
by the capabilities each method declares (``merge``, ``fold``, ``modifies_base``). Then the
registry, options, heads, decoders and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from method_table import (
    COMBOS,
    ROWS,
    add_bystanders,
    bare,
    bottleneck_params,
    combos_with,
    hidden,
    lora_params,
    make,
    missing_rows,
    norm_params,
    perturb,
    train_and_check_isolation,
)
from safetensors.torch import load_file
from tiny_models import ALL_ARCHITECTURES, ARCHITECTURES, DECODERS, LAYERS, batch_for, tiny_base, tiny_batch

from adapterkit import AdapterModel, HeadConfig
from adapterkit.heads import head_loss
from adapterkit.registry import REGISTRY, MethodConfig, make_config


# ----------------------------------------------------------------------------- the table itself
def check_every_method_has_a_row() -> None:
    missing = missing_rows()
    assert not missing, (
        f"registered method(s) {', '.join(missing)} have no row in tests/method_table.py: add one "
        "(method, tiny options, architectures, parameter formula) so the generic checks run on it"
    )


def test_every_registered_method_has_a_row():
    assert set(REGISTRY) >= {"houlsby", "lora", "prefix", "fusion", "full"}  # the built-in methods are registered
    check_every_method_has_a_row()


def test_a_registered_method_without_a_row_is_named():
    from adapterkit.methods.finetune import Probe
    from adapterkit.registry import register_method, unregister_method

    @dataclass(frozen=True)
    class Unlisted(MethodConfig):
        method = "unlisted_for_test"

    register_method(Unlisted, Probe)
    try:
        with pytest.raises(AssertionError, match="registered method\\(s\\) .*unlisted_for_test.* have no row"):
            check_every_method_has_a_row()
    finally:
        unregister_method("unlisted_for_test")


@pytest.mark.parametrize("name", ROWS)
def test_the_row_agrees_with_its_methods_capabilities(name):
    row = ROWS[name]
    assert row.archs and set(row.archs) <= set(ALL_ARCHITECTURES)
    assert not set(row.archs) & set(row.refused) and set(row.refused) <= set(ALL_ARCHITECTURES)
    assert not row.folds or "fold" in row.capabilities, "only a 'fold' method has something to fold"
    assert (row.trains_base is not None) == ("modifies_base" in row.capabilities)
    for prerequisite in row.prerequisites:  # a fusion fuses adapters that declare 'fuse'
        assert "fusion" not in row.capabilities or "fuse" in REGISTRY[prerequisite.method].capabilities


@pytest.mark.parametrize("arch,name", [(arch, name) for name, row in ROWS.items() for arch in row.refused])
def test_a_row_is_refused_where_the_table_says(arch, name):
    row = ROWS[name]
    model = bare(arch, row)
    with pytest.raises(ValueError, match=row.refused[arch]):
        model.add_adapter("task", row.method, **row.options)
    assert "task" not in model.adapters  # nothing half-added


# ----------------------------------------------------------------------------- the generic checks
@pytest.mark.parametrize("arch,name", COMBOS)
def test_identity_at_init(arch, name):
    row = ROWS[name]
    model = make(arch, row)
    batch = batch_for(arch)
    reference = model.body(**batch).last_hidden_state  # no setup active: plain base model
    adapted = hidden(model, batch)
    if row.identity_at_init:
        torch.testing.assert_close(adapted, reference, rtol=0, atol=0)
    else:  # the row says why a fresh adapter of it changes the outputs; it must really change them
        assert not torch.allclose(adapted, reference, atol=1e-3)


@pytest.mark.parametrize("arch,name", COMBOS)
def test_only_intended_parameters_train_and_their_number_follows_the_formula(arch, name):
    row = ROWS[name]
    model = make(arch, row)
    modifies_base = "modifies_base" in row.capabilities
    expected_count = row.params(arch, model)
    trained, _ = model.count_parameters("task")
    head = sum(p.numel() for p in model.heads["task"].parameters())
    assert trained - head == expected_count
    assert sum(p.numel() for p in model.adapters["task"].parameters()) == (0 if modifies_base else expected_count)

    if not modifies_base:  # full and partial fine-tuning must be alone on their model
        add_bystanders(model, arch)
    model.train_adapter("task")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing trains"
    expected = {f"adapters.task.{n}" for n, _ in model.adapters["task"].named_parameters()}
    expected |= {f"heads.task.{n}" for n, _ in model.heads["task"].named_parameters()}
    expected |= {f"base.{n}" for n in (row.trains_base(model) if modifies_base else ())}
    assert trainable == expected, sorted(trainable ^ expected)
    assert any(n.startswith("heads.task.") for n in trainable)
    if modifies_base:
        assert any(n.startswith("base.") for n in trainable)
    else:  # its own modules train, unless the formula says it has none (probe: the head alone)
        assert any(n.startswith("adapters.task.") for n in trainable) == (expected_count > 0)
    owned = {id(p) for p in model.adapter_parameters("task").values()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == owned


@pytest.mark.parametrize("arch,name", COMBOS)
def test_training_changes_only_what_the_adapter_owns(arch, name):
    """Other adapters (the row's prerequisites, e.g. a fusion's fused adapters, and bystanders)
    and the base stay bit-identical; full and partial fine-tuning change only the base weights
    they train."""
    row = ROWS[name]
    model = make(arch, row)
    others = [] if "modifies_base" in row.capabilities else add_bystanders(model, arch)
    train_and_check_isolation(model, batch_for(arch), others)


@pytest.mark.parametrize("arch,name", COMBOS)
def test_save_load_gives_identical_outputs(arch, name, tmp_path):
    row = ROWS[name]
    model = make(arch, row)
    perturb(model, "task")  # its BatchNorms' running statistics too (a CNN's adapter owns some)
    batch = batch_for(arch)
    expected = model(**batch, adapters="task").logits
    model.save_adapter("task", tmp_path / "task")

    saved = load_file(str(tmp_path / "task" / "adapter.safetensors"))
    state = model.adapter_state("task")
    assert set(saved) == set(state.tensors())  # parameters and persistent buffers (running statistics)
    assert any(k.startswith("base.") for k in saved) == ("modifies_base" in row.capabilities)
    trained = [v for k, v in saved.items() if k in state.parameters and not k.startswith("head.")]
    assert sum(v.numel() for v in trained) == row.params(arch, model)
    assert sorted(p.name for p in (tmp_path / "task").iterdir()) == ["adapter.safetensors", "adapter_config.json"]
    meta = json.loads((tmp_path / "task" / "adapter_config.json").read_text())
    assert meta["config"]["method"] == row.method

    fresh = bare(arch, row)  # with the same prerequisites (a fusion loads beside its fused adapters)
    fresh.load_adapter(tmp_path / "task")
    assert set(saved) == set(fresh.adapter_state("task").tensors())
    for key, value in fresh.adapter_state("task").buffers.items():
        assert torch.equal(value, saved[key]), key
    torch.testing.assert_close(fresh.eval()(**batch).logits, expected, rtol=0, atol=0)
    if "fold" not in row.capabilities:
        assert not model.fold_adapter("task")  # nothing to fold


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_parameter_counts_of_option_variants(arch):
    model = AdapterModel(tiny_base(arch))

    def count(name, method, **options):
        model.add_adapter(name, method, **options)
        return sum(p.numel() for p in model.adapters[name].parameters())

    assert count("h", "houlsby", bottleneck_size=4, train_layer_norms=False) == LAYERS * 2 * bottleneck_params()
    assert count("hn", "houlsby", bottleneck_size=4) == LAYERS * 2 * (bottleneck_params() + norm_params(arch))
    assert count("l", "lora", r=2, targets=["q", "v"]) == lora_params(arch, ("q", "v"))


@pytest.mark.parametrize("arch,name", combos_with("merge"))
def test_merged_equals_unmerged_equals_unloaded(arch, name):
    model = make(arch, name)
    perturb(model, "task")
    batch = batch_for(arch)
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


@pytest.mark.parametrize("arch,name", combos_with("fold"))
def test_folding_keeps_the_outputs_and_loads_folded(arch, name, tmp_path):
    """Folding replaces a training-only reparameterisation (a prefix's MLP) by what it computes;
    where there is none (a plain prefix, a union without a prefix) it changes nothing at all."""
    row = ROWS[name]
    model = make(arch, row)
    perturb(model, "task")
    batch = batch_for(arch)
    before, logits = hidden(model, batch), model(**batch, adapters="task").logits
    assert model.fold_adapter("task") == row.folds
    assert not model.fold_adapter("task")  # idempotent
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if row.folds else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(hidden(model, batch), before, **tolerance)
    assert model.adapters["task"].config.method == row.method
    model.save_adapter("task", tmp_path / "folded")
    fresh = bare(arch, row)
    fresh.load_adapter(tmp_path / "folded")
    torch.testing.assert_close(fresh.eval()(**batch).logits, logits, **tolerance)
    assert not fresh.fold_adapter("task")  # saved folded, it loads folded


# ----------------------------------------------------------------------------- specific checks
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
