"""Bottleneck adapters against their papers, written out by hand: Pfeiffer et al. 2020's adapter
reading the FFN's Add & Norm output (``x + h`` on pre-LN models), Houlsby's form, parallel
adapters, and where all of them sit: after the sublayer's output dropout."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from method_table import M, default_head, hidden, perturb, sublayer_hooks
from tiny_models import DECODERS, ENCODERS, tiny_base, tiny_batch

from adapterkit import AdapterModel, make_config
from adapterkit.sites import SiteInputs

ATOL = 1e-5


def adapted(arch: str, method: str = "pfeiffer", **options) -> AdapterModel:
    """A tiny model with a perturbed adapter ``task`` of ``method``, in eval mode."""
    model = AdapterModel(tiny_base(arch))
    model.add_adapter("task", method, default_head(), **{"bottleneck_size": M, **options})
    perturb(model, "task")
    return model.eval()


def module(model: AdapterModel, layer: int, position: str = "ffn"):
    return model.adapters["task"].layers[str(layer)][position]


def bottleneck(adapter, z: torch.Tensor) -> torch.Tensor:
    """``s * W_up relu(W_down z + b_down) + b_up``, term by term."""
    down = z @ adapter.down.weight.T + adapter.down.bias
    return adapter.scaling * (torch.relu(down) @ adapter.up.weight.T + adapter.up.bias)


@pytest.mark.parametrize("arch", [*ENCODERS, *DECODERS])
def test_pfeiffer_reads_the_output_of_the_add_and_norm_and_adds_to_the_sublayer_output(arch):
    """Post-LN: ``LN(x + h + A(LN(x + h)))``, the FFN's own norm applied twice; pre-LN (no norm
    after the residual add): ``x + h + A(x + h)``."""
    model, batch = adapted(arch), tiny_batch()
    site = model.sites["0.ffn"]
    assert (site.norm is None) == (arch in DECODERS)

    def paper(layer, inputs, out):
        added = inputs.residual + out
        norm = model.sites[f"{layer}.ffn"].norm
        return out + bottleneck(module(model, layer), added if norm is None else norm(added))

    with sublayer_hooks(model, paper):
        expected = hidden(model, batch, None)
    torch.testing.assert_close(hidden(model, batch), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_pfeiffer_without_original_ln_before_is_houlsbys_ffn_adapter(arch):
    model, batch = adapted(arch, original_ln_before=False), tiny_batch()
    with sublayer_hooks(model, lambda layer, inputs, out: out + bottleneck(module(model, layer), out)):
        expected = hidden(model, batch, None)
    torch.testing.assert_close(hidden(model, batch), expected, rtol=0, atol=ATOL)
    default = adapted(arch)
    assert not torch.allclose(hidden(default, batch), expected, atol=1e-4)


def test_the_residual_input_on_a_pre_ln_model_is_the_norms_input_not_the_sublayers():
    """On Llama the FFN reads ``post_attention_layernorm(x)``; Pfeiffer's adapter reads ``x + h``,
    a parallel adapter the FFN's input: a union of both gets each its own."""
    model, batch = AdapterModel(tiny_base("llama")), tiny_batch()
    configs = [{"method": "pfeiffer", "bottleneck_size": M}, {"method": "parallel", "bottleneck_size": M}]
    model.add_adapter("task", "union", default_head(), configs=configs)
    perturb(model, "task")
    site = model.sites["0.ffn"]
    layer = model.parts.layers[0].layer
    assert site.residual_module is layer.post_attention_layernorm and site.input_module is layer.mlp.gate_proj
    members = model.adapters["task"].components

    def both(layer, inputs, out):
        pfeiffer, parallel = (members[name].layers[str(layer)]["ffn"] for name in ("pfeiffer", "parallel"))
        out = out + bottleneck(pfeiffer, inputs.residual + out)
        return out + bottleneck(parallel, inputs.input)

    with sublayer_hooks(model, both):
        expected = hidden(model, batch, None)
    torch.testing.assert_close(hidden(model, batch), expected, rtol=0, atol=ATOL)


def test_original_ln_before_is_for_sequential_adapters_only():
    with pytest.raises(ValueError, match="a parallel adapter reads the sublayer input; set original_ln_before=False"):
        make_config("pfeiffer", parallel=True)
    assert not make_config("pfeiffer", parallel=True, original_ln_before=False).original_ln_before
    assert make_config("pfeiffer").original_ln_before
    assert not any(make_config(m).original_ln_before for m in ("houlsby", "parallel", "scaled_parallel"))


# ----------------------------------------------------------------------------- after the dropout
BERT_MODULES = {"attn": ("attention.self.query", "attention.output.dropout"), "ffn": ("intermediate.dense", "output.dropout")}
"""Per BERT sublayer: the module reading its input (its residual input too: post-LN) and its output dropout."""


@contextlib.contextmanager
def after_dropout(model: AdapterModel, position: str, compute):
    """Like ``sublayer_hooks``, but on BERT's modules named here, not on the sites: the dropped-out
    output of every ``position`` sublayer becomes ``compute(layer, inputs, out)``."""
    handles = []
    for parts in model.parts.layers:
        reader, dropout = (parts.layer.get_submodule(path) for path in BERT_MODULES[position])
        seen = {}
        handles += [
            reader.register_forward_pre_hook(lambda m, args, seen=seen: seen.update(x=args[0])),
            dropout.register_forward_hook(
                lambda m, args, out, layer=parts.index, seen=seen: compute(layer, SiteInputs(seen["x"], seen["x"]), out)
            ),
        ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def dropout_half(model: AdapterModel) -> None:
    for sub in model.base.modules():
        if isinstance(sub, torch.nn.Dropout):
            sub.p = 0.5


@pytest.mark.parametrize(
    "method, options, positions",
    [
        ("pfeiffer", {}, ("ffn",)),
        ("houlsby", {"train_layer_norms": False}, ("attn", "ffn")),
        ("parallel", {}, ("ffn",)),
    ],
)
def test_in_training_the_adapter_acts_after_the_sublayers_dropout(method, options, positions):
    """``LN(x + d + A(·))`` with ``d = dropout(h)``: the base's dropout never drops the adapter's
    output (Houlsby et al.'s code, AdapterHub). Same seed, same dropout masks in every pass."""
    model = adapted("bert", method, **options)
    dropout_half(model)
    model.train()
    batch = tiny_batch()

    def by_hand(layer, position, inputs, out):
        adapter = module(model, layer, position)
        if method == "parallel":
            return out + bottleneck(adapter, inputs.input)
        if method == "pfeiffer":
            return out + bottleneck(adapter, model.sites[f"{layer}.{position}"].norm(inputs.residual + out))
        return out + bottleneck(adapter, out)

    def train_pass(adapters, positions=()):
        torch.manual_seed(0)
        with contextlib.ExitStack() as hooks, torch.no_grad(), model.using(adapters):
            for position in positions:
                compute = lambda layer, inputs, out, position=position: by_hand(layer, position, inputs, out)  # noqa: E731
                hooks.enter_context(after_dropout(model, position, compute))
            return model.body(**batch).last_hidden_state

    expected = train_pass(None, positions)
    torch.testing.assert_close(train_pass("task"), expected, rtol=0, atol=ATOL)
    assert not torch.allclose(train_pass(None), expected, atol=1e-3)  # the adapter acts
    model.eval()
    assert not torch.allclose(hidden(model, batch), expected, atol=1e-3)  # and the dropout did


def test_eval_outputs_do_not_depend_on_the_dropout_rate():
    model, batch = adapted("bert", "houlsby"), tiny_batch()
    before = hidden(model, batch)
    dropout_half(model)
    torch.testing.assert_close(hidden(model, batch), before, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["pfeiffer", "union"])
def test_a_pfeiffer_adapter_saved_before_original_ln_before_existed_loads_as_it_computed_then(method, tmp_path):
    member = {"method": "pfeiffer", "bottleneck_size": M, "original_ln_before": False}
    options = {"configs": [{"method": "lora", "r": 2}, member]} if method == "union" else member
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("task", options.pop("method", method), default_head(), **options)
    perturb(model, "task")
    batch = tiny_batch()
    expected = model.eval()(**batch, adapters="task").logits
    model.save_adapter("task", tmp_path / "old")
    path = tmp_path / "old" / "adapter_config.json"
    meta = json.loads(path.read_text())
    config = meta["config"]["configs"][1] if method == "union" else meta["config"]
    del config["original_ln_before"]  # what adapterkit wrote before the option existed
    path.write_text(json.dumps(meta))
    fresh = AdapterModel(tiny_base("bert"))
    fresh.load_adapter(tmp_path / "old")
    torch.testing.assert_close(fresh.eval()(**batch, adapters="task").logits, expected, rtol=0, atol=0)
