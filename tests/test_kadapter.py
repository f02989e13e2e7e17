"""K-Adapter (``methods/kadapter.py``): knowledge adapters outside the frozen model, taps, the
readout before the head, composition with a task head, independence, saving, clear errors.

The generic checks (identity, what trains, isolation, save/load) run from ``method_table.py``'s
``k_adapter`` and ``k_task`` rows; these are the checks specific to the method."""

from __future__ import annotations

import pytest
import torch
from method_table import K_OPTIONS, default_head, perturb
from safetensors.torch import load_file
from tiny_models import ARCHITECTURES, DECODERS, HIDDEN, LAYERS, adamw_steps, tiny_base, tiny_batch

from adapterkit import AdapterModel, Fuse, HeadConfig, Parallel, Routed, Stack


def knowledge_model(arch: str = "bert", seed: int = 0) -> AdapterModel:
    """A tiny model with two perturbed knowledge adapters (``fac``: concat, ``lin``: sum, reading
    only the last layer) and a task head over both."""
    model = AdapterModel(tiny_base(arch, seed))
    model.add_adapter("fac", "k_adapter", default_head(), **K_OPTIONS)
    model.add_adapter("lin", "k_adapter", default_head(4), **{**K_OPTIONS, "combine": "sum", "layers": [-1]})
    model.add_adapter("task", "k_task", default_head(5), adapters=["fac", "lin"])
    for k, name in enumerate(("fac", "lin", "task")):
        perturb(model, name, seed=20 + k)
    return model.eval()


def train_steps(model: AdapterModel, name: str, steps: int = 3) -> None:
    batch = tiny_batch()
    model.train_adapter(name)
    model.train()
    adamw_steps(model, batch, torch.arange(batch["input_ids"].shape[0]) % model.heads[name].config.num_labels, steps)
    model.eval()


def snapshot(model: AdapterModel, name: str) -> dict[str, torch.Tensor]:
    return {k: t.detach().clone() for k, t in model.adapter_state(name).tensors().items()}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_base_outputs_are_unchanged_with_knowledge_adapters_attached(arch):
    batch = tiny_batch()
    reference = AdapterModel(tiny_base(arch)).eval().body(**batch).last_hidden_state
    model = knowledge_model(arch)
    assert torch.equal(model.body(**batch).last_hidden_state, reference)  # no setup: the plain base
    for name in ("fac", "lin", "task"):  # the pass runs the plug-ins, the model's layers compute what they did
        with model.using(name):
            assert torch.equal(model.body(**batch).last_hidden_state, reference)
        seen = []
        handle = model.heads[name].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        model(**batch, adapters=name)
        handle.remove()
        assert torch.equal(seen[0][..., :HIDDEN], reference)  # the head reads the base's last hidden state first
        assert seen[0].shape[-1] == model.heads[name].layers[0].in_features == model.adapters[name].head_width(HIDDEN)


def test_the_head_reads_the_model_and_every_knowledge_adapter_concatenated():
    model, batch, seen = knowledge_model(), tiny_batch(), {}
    for name in ("fac", "lin", "task"):
        model.heads[name].register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].shape))
        model(**batch, adapters=name)
    batch_size, seq = batch["input_ids"].shape
    assert seen == {"fac": (batch_size, seq, 2 * HIDDEN), "lin": (batch_size, seq, 2 * HIDDEN), "task": (batch_size, seq, 3 * HIDDEN)}
    with_fac = model(**batch, adapters="fac")
    model.heads.pop("fac")
    features = model(**batch, adapters="fac").last_hidden_state
    model.heads.pop("task")
    both = model(**batch, adapters="task").last_hidden_state
    lin = model.adapters["lin"].network
    with model.using("lin"):
        hidden = model.body(**batch, output_hidden_states=True).hidden_states
    assert torch.equal(both[..., : 2 * HIDDEN], features)  # [h_L ; o_fac ; o_lin]
    torch.testing.assert_close(both[..., 2 * HIDDEN :], lin({LAYERS - 1: hidden[LAYERS]}, batch["attention_mask"]))
    assert with_fac.logits.shape == (batch_size, 3)


@pytest.mark.parametrize("combine", ["concat", "sum"])
def test_the_network_follows_the_papers_equations(combine):
    """o_1 = h_{l_1} + up(T(down(h_{l_1}))); o_k = s_k + up(T(down(x_k))) with x_k = [h ; o_{k-1}]
    and s_k = o_{k-1} (concat) or x_k = s_k = h + o_{k-1} (sum); T is a standard post-LN
    transformer encoder layer (checked against torch's own)."""
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("k", "k_adapter", None, **{**K_OPTIONS, "combine": combine, "transformer_layers": 2})
    perturb(model, "k")
    model.eval()
    batch = tiny_batch()
    with torch.no_grad():
        features = model(**batch, adapters="k").last_hidden_state
        hidden = model.body(**batch, output_hidden_states=True).hidden_states  # [embeddings, layer 0, layer 1]
    mask = batch["attention_mask"]
    network = model.adapters["k"].network
    assert network.taps == (0, 1)

    def reference_layer(layer, x):
        torch_layer = torch.nn.TransformerEncoderLayer(
            x.shape[-1], 2, dim_feedforward=4 * x.shape[-1], activation="gelu", batch_first=True, dropout=0.0
        ).eval()
        torch_layer.norm1.eps = torch_layer.norm2.eps = layer.attn_norm.eps
        weights = {"self_attn.in_proj_weight": layer.qkv.weight, "self_attn.in_proj_bias": layer.qkv.bias,
                   "self_attn.out_proj.weight": layer.out.weight, "self_attn.out_proj.bias": layer.out.bias,
                   "linear1.weight": layer.ffn_in.weight, "linear1.bias": layer.ffn_in.bias,
                   "linear2.weight": layer.ffn_out.weight, "linear2.bias": layer.ffn_out.bias,
                   "norm1.weight": layer.attn_norm.weight, "norm1.bias": layer.attn_norm.bias,
                   "norm2.weight": layer.ffn_norm.weight, "norm2.bias": layer.ffn_norm.bias}
        torch_layer.load_state_dict({k: v.detach() for k, v in weights.items()})
        torch_layer.train()  # the slow path: padded positions are computed, not zeroed
        torch_layer.dropout.p = torch_layer.dropout1.p = torch_layer.dropout2.p = 0.0
        return torch_layer(x, src_key_padding_mask=mask == 0)

    def adapter_layer(layer, x):
        z = layer.down(x)
        for transformer in layer.transformer:
            z = reference_layer(transformer, z)
        return layer.up(z)

    with torch.no_grad():
        h0, h1 = hidden[1], hidden[2]
        o1 = h0 + adapter_layer(network.layers[0], h0)
        x2, s2 = (torch.cat([h1, o1], -1), o1) if combine == "concat" else (h1 + o1, h1 + o1)
        o2 = s2 + adapter_layer(network.layers[1], x2)
    assert network.layers[1].down.in_features == (2 * HIDDEN if combine == "concat" else HIDDEN)
    torch.testing.assert_close(features, torch.cat([h1, o2], -1), rtol=1e-5, atol=1e-5)


def test_a_fresh_knowledge_adapter_is_near_its_first_tapped_layer():
    """The projections start at N(0, 2e-4²) (the released code): o_K is h_{l_1} plus a little."""
    model = AdapterModel(tiny_base("bert")).eval()
    model.add_adapter("k", "k_adapter", None, **K_OPTIONS)
    batch = tiny_batch()
    features = model(**batch, adapters="k").last_hidden_state
    first = model.body(**batch, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(features[..., HIDDEN:], first, rtol=0, atol=1e-2)
    assert not torch.equal(features[..., HIDDEN:], first)


def test_knowledge_adapters_trained_one_after_another_leave_each_other_bit_identical():
    model, batch = knowledge_model(), tiny_batch()
    train_steps(model, "fac")
    fac, fac_logits = snapshot(model, "fac"), model(**batch, adapters="fac").logits
    base = {k: v.clone() for k, v in model.base.state_dict().items()}
    lin_before = snapshot(model, "lin")
    train_steps(model, "lin")
    assert any(not torch.equal(lin_before[k], v) for k, v in snapshot(model, "lin").items())
    assert all(torch.equal(fac[k], v) for k, v in snapshot(model, "fac").items())
    assert torch.equal(model(**batch, adapters="fac").logits, fac_logits)
    lin, task_before = snapshot(model, "lin"), snapshot(model, "task")
    train_steps(model, "task")  # the downstream head: the knowledge adapters stay frozen
    assert set(model.adapter_parameters("task")) == {k for k in task_before if k.startswith("head.")}
    for name, kept in (("fac", fac), ("lin", lin)):
        assert all(torch.equal(kept[k], v) for k, v in snapshot(model, name).items()), name
    assert all(torch.equal(v, model.base.state_dict()[k]) for k, v in base.items())


def test_retraining_knowledge_adapters_with_a_task_trains_copies_and_keeps_the_originals():
    model, batch = knowledge_model(), tiny_batch()
    model.add_adapter("tuned", "k_task", default_head(5), adapters=["fac", "lin"], train_adapters=True)
    before = {name: snapshot(model, name) for name in ("fac", "lin")}
    reference = model(**batch, adapters="fac").logits
    copies = snapshot(model, "tuned")
    assert {k.split(".")[2] for k in copies if k.startswith("adapter.")} == {"fac", "lin"}
    train_steps(model, "tuned")
    assert any(not torch.equal(copies[k], v) for k, v in snapshot(model, "tuned").items() if k.startswith("adapter."))
    for name, kept in before.items():
        assert all(torch.equal(kept[k], v) for k, v in snapshot(model, name).items()), name
    assert torch.equal(model(**batch, adapters="fac").logits, reference)


def test_save_and_load_knowledge_adapters_and_their_task_head(tmp_path):
    model, batch = knowledge_model(), tiny_batch()
    expected = {name: model(**batch, adapters=name).logits for name in ("fac", "lin", "task")}
    for name in expected:
        model.save_adapter(name, tmp_path / name)
    saved = load_file(str(tmp_path / "task" / "adapter.safetensors"))
    assert set(saved) == {"head.layers.0.weight", "head.layers.0.bias"}
    assert saved["head.layers.0.weight"].shape == (5, 3 * HIDDEN)  # the head's width follows the concatenation

    fresh = AdapterModel(tiny_base("bert"))
    with pytest.raises(ValueError, match=r"reads knowledge adapters \['fac', 'lin'\], which are not on the model; add or load.*--knowledge DIR"):
        fresh.load_adapter(tmp_path / "task")
    assert "task" not in fresh.adapters
    for name in ("lin", "fac", "task"):  # any order of the knowledge adapters
        fresh.load_adapter(tmp_path / name)
    fresh.eval()
    for name, logits in expected.items():
        assert torch.equal(fresh(**batch, adapters=name).logits, logits), name


def test_a_knowledge_adapter_reading_layers_that_do_not_exist_is_a_clear_error():
    model = AdapterModel(tiny_base("bert"))
    with pytest.raises(ValueError, match=r"k_adapter: layer 5 does not exist; the model has 2 layers \(0..1\)"):
        model.add_adapter("k", "k_adapter", default_head(), layers=[0, 5])
    with pytest.raises(ValueError, match="k_adapter: layer -3 does not exist"):
        model.add_adapter("k", "k_adapter", default_head(), layers=[-3])
    with pytest.raises(ValueError, match="layers names no layer"):
        model.add_adapter("k", "k_adapter", default_head(), layers=[])
    with pytest.raises(ValueError, match="num_heads=3 must divide bottleneck_size=8"):
        model.add_adapter("k", "k_adapter", default_head(), bottleneck_size=8, num_heads=3)
    assert "k" not in model.adapters


def test_knowledge_adapters_run_alone_and_a_task_names_only_knowledge_adapters():
    model = knowledge_model()
    model.add_adapter("bottleneck", "pfeiffer", default_head(), bottleneck_size=4)
    batch = tiny_batch()
    for setup in (Stack("bottleneck", "fac"), Stack("fac", "lin"), Parallel("fac", "bottleneck"), Routed(["fac", "lin", None])):
        with pytest.raises(ValueError, match=r"puts knowledge adapters \(.*\) inside a composition; .* runs alone, by name"):
            model(**batch, adapters=setup)
    model.add_adapter("fusion", "fusion", default_head(), adapters=["bottleneck"])
    with pytest.raises(ValueError, match="inside a composition"):
        model(**batch, adapters=Fuse("bottleneck", "fac", fusion="fusion"))
    with pytest.raises(ValueError, match=r"'fac' \(k_adapter\) cannot be fused: .*combine them with a k_task head over them"):
        model.add_adapter("fused", "fusion", default_head(), adapters=["fac", "lin"])  # not "Stack('fac', Fuse(...))"
    with pytest.raises(ValueError, match=r"k_task 'wrong' reads knowledge adapters \(k_adapter\); \{'bottleneck': 'pfeiffer'\} are not"):
        model.add_adapter("wrong", "k_task", default_head(), adapters=["fac", "bottleneck"])
    with pytest.raises(ValueError, match="name the adapters it reads"):
        model.add_adapter("wrong", "k_task", default_head())


def test_a_task_whose_knowledge_adapter_was_deleted_says_so():
    model = knowledge_model()
    model.delete_adapter("lin")
    with pytest.raises(ValueError, match=r"k_task 'task' reads knowledge adapters \['lin'\], which are not on the model"):
        model(**tiny_batch(), adapters="task")
    assert model(**tiny_batch(), adapters="fac").logits.shape == (3, 3)


def test_taps_are_removed_with_the_last_knowledge_adapter_and_other_adapters_are_untouched():
    model, batch = knowledge_model(), tiny_batch()
    model.add_adapter("bottleneck", "houlsby", default_head(), bottleneck_size=4)
    perturb(model, "bottleneck")
    expected = model(**batch, adapters="bottleneck").logits
    with model.using("bottleneck") as setup:  # a pass that reads no layer keeps none
        from adapterkit import context

        model.body(**batch)
        assert context.current(model.router).tapped == {} and setup is not None
    for name in ("task", "fac", "lin"):
        model.delete_adapter(name)
    assert "taps" not in model._hooks
    assert torch.equal(model(**batch, adapters="bottleneck").logits, expected)
