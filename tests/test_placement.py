"""Placements as data: sites know their width and layout, and a seq2seq model (several stacks of
layers, a cross-attention sublayer) is a table entry, not a special case."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_base
from transformers import BartConfig, BartModel

from adapterkit import AdapterModel, HeadConfig, Placement
from adapterkit.placement import PLACEMENTS

LAYERS = 2  # per stack


def tiny_bart(seed: int = 0) -> BartModel:
    torch.manual_seed(seed)
    config = BartConfig(
        d_model=32, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=120, max_position_embeddings=64,
    )  # fmt: skip
    return BartModel(config).eval()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 120, (2, 7), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_sites_know_their_width_and_layout():
    model = AdapterModel(tiny_base("llama"))  # grouped-query attention: k and v are half as wide
    sites = model.sites
    assert sites["0.q"].width == 32 and sites["0.k"].width == 16 and sites["0.ffn_in"].width == 64
    assert sites["0.ffn"].width == 32 and sites["0.attn_norm"].width == 32 and sites["0.attention"].width == 16
    assert sites["input"].kind == "input" and sites["1.layer_input"].kind == "layer_input"
    assert {site.layout for site in sites.values()} == {"sequence"}


def test_a_seq2seq_model_numbers_its_layers_across_both_stacks():
    model = AdapterModel(tiny_bart())
    parts = model.parts
    assert parts.num_layers == 2 * LAYERS and [layer.stack for layer in parts.layers] == [0, 0, 1, 1]
    decoder = [f"{i}.cross_attn" for i in range(LAYERS, 2 * LAYERS)]
    assert all(key in model.sites for key in decoder)
    assert not any(f"{i}.cross_attn" in model.sites or f"{i}.cross_q" in model.sites for i in range(LAYERS))
    assert model.sites[f"{LAYERS}.cross_q"].output_module is parts.layers[LAYERS].layer.encoder_attn.q_proj


@pytest.mark.parametrize(
    "method, options",
    [
        ("pfeiffer", {"bottleneck_size": 4, "sublayers": ["attn", "ffn", "cross_attn"]}),
        ("lora", {"r": 2, "targets": ["q", "v", "cross_q", "cross_v"]}),
        ("bitfit", {}),
        ("prefix", {"prefix_length": 2, "reparameterize": False}),
    ],
)
def test_methods_on_a_seq2seq_model_are_the_identity_at_init_and_act_on_both_stacks(method, options):
    model = AdapterModel(tiny_bart())
    model.add_adapter("a", method, HeadConfig(num_labels=3, dropout=0.0), **options)
    with torch.no_grad():
        plain = model.body(**batch()).last_hidden_state
        if method != "prefix":  # a prefix changes attention from the start (as on every model)
            torch.testing.assert_close(_hidden(model), plain, rtol=0, atol=0)
        perturb(model, "a")
        adapted = _hidden(model)
    assert not torch.allclose(adapted, plain, atol=1e-4)
    layers = {site.layer for site, _ in model.adapters["a"].attachments()}
    assert layers == set(range(2 * LAYERS))


def perturb(model: AdapterModel, name: str) -> None:
    generator = torch.Generator().manual_seed(3)
    for param in model.adapter_parameters(name).values():
        param.add_(0.1 * torch.randn(param.shape, generator=generator))


def _hidden(model: AdapterModel, adapters: str = "a") -> torch.Tensor:
    with model.using(adapters):
        return model.body(**batch()).last_hidden_state


def test_cross_attention_roles_only_touch_the_decoder():
    model = AdapterModel(tiny_bart())
    model.add_adapter("x", "lora", r=2, targets=["cross_q"])
    assert {site.layer for site, _ in model.adapters["x"].attachments()} == set(range(LAYERS, 2 * LAYERS))
    with torch.no_grad():
        perturb(model, "x")
        with model.using("x"):
            encoded = model.base.encoder(**batch()).last_hidden_state
        torch.testing.assert_close(encoded, model.base.encoder(**batch()).last_hidden_state, rtol=0, atol=0)
        assert not torch.allclose(_hidden(model, "x"), model.body(**batch()).last_hidden_state, atol=1e-4)


def test_a_role_the_model_lacks_is_a_clear_error():
    model = AdapterModel(tiny_base("bert"))
    with pytest.raises(ValueError, match=r"lora: no projection plays the role\(s\) \['cross_q'\]"):
        model.add_adapter("x", "lora", targets=["cross_q"])
    with pytest.raises(ValueError, match="no layer of this model has the sublayers \\('cross_attn',\\)"):
        model.add_adapter("y", "pfeiffer", sublayers=["cross_attn"])
    assert not model.adapters


def test_a_placement_is_checked_when_built():
    with pytest.raises(ValueError, match="unknown layout 'grid'"):
        Placement(**{**PLACEMENTS["bert"].__dict__, "layout": "grid"})
    with pytest.raises(ValueError, match="need non-empty module paths"):
        Placement(**{**PLACEMENTS["bert"].__dict__, "q": ""})


@pytest.mark.parametrize(
    "arch, attn, ffn",
    [
        ("bert", "attention.output.dropout", "output.dropout"),
        ("mpnet", "attention.dropout", "output.dropout"),
        ("distilbert", "attention.out_lin", "ffn.dropout"),  # no dropout on DistilBERT's attention output
        ("llama", "self_attn.o_proj", "mlp.down_proj"),  # no dropout at all
    ],
)
def test_sublayer_sites_sit_after_the_output_dropout_and_linear_sites_stay_on_the_projections(arch, attn, ffn):
    model = AdapterModel(tiny_base(arch))
    layer = model.parts.layers[0].layer
    for position, path in (("attn", attn), ("ffn", ffn)):
        site = model.sites[f"0.{position}"]
        assert site.output_module is layer.get_submodule(path) and site.width == 32
    for role in ("o", "ffn_out"):
        assert isinstance(model.sites[f"0.{role}"].output_module, torch.nn.Linear)


def test_a_seq2seq_model_with_functional_dropout_keeps_its_sublayer_sites_on_the_projections():
    model = AdapterModel(tiny_bart())
    layer = model.parts.layers[LAYERS].layer
    assert model.sites[f"{LAYERS}.cross_attn"].output_module is layer.encoder_attn.out_proj
    assert model.sites[f"{LAYERS}.ffn"].output_module is layer.fc2
