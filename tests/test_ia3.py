"""(IA)³: the vectors rescale exactly what Liu et al. 2022 (Sec. 3.3) and peft scale, or, as an
option, what AdapterHub scales; merging, routing and option errors. The generic checks run from
the table's ``ia3`` and ``ia3_adapterhub`` rows in ``test_methods.py``."""

from __future__ import annotations

import contextlib

import pytest
import torch
from method_table import hidden, make, perturb
from tiny_models import tiny_base, tiny_batch

from adapterkit import AdapterModel, HeadConfig, make_config
from adapterkit.composition import Parallel, Routed

ATOL = 1e-5


def vector(model: AdapterModel, layer: int, position: str, name: str = "task") -> torch.Tensor:
    return model.adapters[name].layers[str(layer)][position].scale


@contextlib.contextmanager
def scaled_by_hand(model: AdapterModel, outputs: tuple[str, ...], inputs: tuple[str, ...], name: str = "task"):
    """Plain hooks on the base projections: ``l ⊙ output`` for ``outputs``, ``l ⊙ input`` for
    ``inputs``, with the adapter's own vectors."""
    handles = []
    for layer in range(model.parts.num_layers):
        for role in outputs:
            module, l = model.sites[f"{layer}.{role}"].output_module, vector(model, layer, role, name)
            handles.append(module.register_forward_hook(lambda m, a, out, l=l: out * l))
        for role in inputs:
            module, l = model.sites[f"{layer}.{role}"].output_module, vector(model, layer, role, name)
            handles.append(module.register_forward_pre_hook(lambda m, a, l=l: (a[0] * l,)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_the_paper_scales_keys_values_and_the_ffn_activations_after_the_non_linearity(arch):
    model = make(arch, "ia3")
    perturb(model)
    batch = tiny_batch()
    with torch.no_grad(), scaled_by_hand(model, ("k", "v"), ("ffn_out",)):
        expected = model.body(**batch).last_hidden_state
    torch.testing.assert_close(hidden(model, batch), expected, rtol=ATOL, atol=ATOL)
    assert vector(model, 0, "ffn_out").shape == (64,)  # the FFN's hidden width: after the activation


def test_adapterhubs_placement_scales_the_ffn_input_projections_output_before_the_non_linearity():
    model = make("bert", "ia3_adapterhub")
    perturb(model)
    with torch.no_grad():  # signs and sizes far from 1, so that scaling before GELU visibly differs
        for layer in range(model.parts.num_layers):
            vector(model, layer, "ffn_in").copy_(torch.randn(64, generator=torch.Generator().manual_seed(layer)))
    batch = tiny_batch()
    with torch.no_grad(), scaled_by_hand(model, ("k", "v", "ffn_in"), ()):
        expected = model.body(**batch).last_hidden_state
    torch.testing.assert_close(hidden(model, batch), expected, rtol=ATOL, atol=ATOL)
    paper = make("bert", "ia3")
    with torch.no_grad():  # the same numbers before instead of after GELU: another function
        for layer in range(model.parts.num_layers):
            for role in ("k", "v"):
                vector(paper, layer, role).copy_(vector(model, layer, role))
            vector(paper, layer, "ffn_out").copy_(vector(model, layer, "ffn_in"))
    assert not torch.allclose(hidden(paper, batch), expected, atol=1e-2)


@pytest.mark.parametrize("name", ["ia3", "ia3_adapterhub"])
def test_merging_folds_rows_columns_and_bias_and_unmerging_restores_the_base_bit_for_bit(name):
    model = make("bert", name)
    perturb(model)
    batch = tiny_batch()
    base = {k: v.clone() for k, v in model.base.state_dict().items()}
    unmerged, plain = hidden(model, batch), hidden(model, batch, None)
    model.merge_adapter("task")
    k = model.sites["0.k"].output_module
    l_k = vector(model, 0, "k")
    assert torch.equal(k.bias, base["encoder.layer.0.attention.self.key.bias"] * l_k)
    if name == "ia3":
        ffn_out = model.sites["0.ffn_out"].output_module
        assert torch.equal(ffn_out.weight, base["encoder.layer.0.output.dense.weight"] * vector(model, 0, "ffn_out"))
        assert torch.equal(ffn_out.bias, base["encoder.layer.0.output.dense.bias"])
    torch.testing.assert_close(hidden(model, batch), unmerged, rtol=ATOL, atol=ATOL)
    assert torch.equal(hidden(model, batch, None), plain)  # other passes read the kept originals
    model.unmerge_adapter("task")
    assert all(torch.equal(v, base[k]) for k, v in model.base.state_dict().items())
    assert torch.equal(hidden(model, batch), unmerged)


def routing_model() -> AdapterModel:
    model = AdapterModel(tiny_base("bert"))
    adapters = {
        "paper": ("ia3", {}),
        "hub": ("ia3", {"targets": ("k", "v", "ffn_in"), "input_targets": ()}),
        "attn": ("ia3", {"targets": ("q",), "input_targets": ("o", "ffn_out"), "layers": (1,)}),
        "lora": ("lora", {"r": 2, "targets": ("v", "ffn_out")}),
    }
    for k, (name, (method, options)) in enumerate(adapters.items()):
        model.add_adapter(name, method, HeadConfig(num_labels=3, dropout=0.0), **options)
        perturb(model, name, seed=k)
    return model.eval()


@torch.no_grad()
def test_routed_and_parallel_rows_equal_each_adapter_alone():
    model = routing_model()
    rows = ["hub", "paper", None, "attn", "lora", "paper"]
    batch = tiny_batch(batch=len(rows))
    routed = model(**batch, adapters=Routed(rows))
    for r, name in enumerate(rows):
        one = {k: v[r : r + 1] for k, v in batch.items()}
        if name is None:
            torch.testing.assert_close(routed.last_hidden_state[r : r + 1], model.body(**one).last_hidden_state)
            continue
        position = (routed.rows[name] == r).nonzero().item()
        torch.testing.assert_close(routed[name].logits[position], model(**one, adapters=name).logits[0], rtol=ATOL, atol=ATOL)
    parallel = model(**batch, adapters=Parallel("paper", "hub", "attn", "lora"))
    for name in ("paper", "hub", "attn", "lora"):
        torch.testing.assert_close(parallel[name].logits, model(**batch, adapters=name).logits, rtol=ATOL, atol=ATOL)
    model.merge_adapter("hub")  # merged, it runs per row from the kept weights
    merged = model(**batch, adapters=Routed(rows))
    for name in ("hub", "paper", "attn", "lora"):
        torch.testing.assert_close(merged[name].logits, routed[name].logits, rtol=ATOL, atol=ATOL)


def test_an_input_scale_beside_an_adapter_merged_into_its_projection_is_refused():
    model = routing_model()
    model.merge_adapter("lora")
    with pytest.raises(ValueError, match="adapter 'paper' computes with the base weight of projection 0.ffn_out, "
                                         "which adapter 'lora' holds merged"):
        model(**tiny_batch(), adapters="paper")
    model(**tiny_batch(), adapters="hub")  # output scales do not read the weight


def test_default_learning_rate_and_its_source():
    config = make_config("ia3")
    assert config.default_learning_rate == 3e-3 and "Liu et al. 2022" in config.learning_rate_source
    assert (config.targets, config.input_targets) == (("k", "v"), ("ffn_out",))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"targets": ["k", "gate"]}, "ia3: unknown target role\\(s\\) \\['gate'\\]; roles are q, k, v"),
        ({"targets": [], "input_targets": []}, "ia3: give at least one role in targets or input_targets"),
        ({"input_targets": ["k", "ffn_out"]}, "ia3: role\\(s\\) \\['k'\\] are in both targets and input_targets"),
        ({"input_targets": "ffn_out"}, "ia3: option input_targets must be tuple"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        make_config("ia3", **options)


def test_a_role_the_model_lacks_is_refused():
    from transformers import BartConfig, BartModel

    model = AdapterModel(BartModel(BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                              decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                                              vocab_size=50)))
    with pytest.raises(ValueError, match="ia3: no projection plays the role\\(s\\) \\['cross_k'\\] in the chosen layers"):
        model.add_adapter("a", "ia3", targets=["cross_k"], layers=[0])
    assert "a" not in model.adapters
