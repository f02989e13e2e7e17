"""Composition blocks: Stack, Parallel, per-sample routing, AdapterDrop, validation, no forgetting.

Every block is checked against a computation written out by hand (plain forward hooks calling the
adapters' own site modules) or against separate single-adapter runs, row by row.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch
from method_table import run, sublayer_hooks
from tiny_models import LAYERS, randomize, tiny_base, tiny_batch

from adapterkit import AdapterModel, HeadConfig
from adapterkit.composition import AdapterDrop, Fuse, Parallel, Routed, Stack, setup_from_dict
from adapterkit.execution import MultiTaskOutput
from adapterkit.methods.base import AdapterMethod
from adapterkit.methods.bottleneck import Bottleneck
from adapterkit.registry import MethodConfig, register_method, unregister_method
from adapterkit.sites import SiteModule

ATOL = 1e-5


def head(num_labels: int = 3, pooling: str = "mean") -> HeadConfig:
    return HeadConfig(num_labels=num_labels, dropout=0.0, pooling=pooling)



def model_with(arch: str = "bert", adapters: dict | None = None, pooling: str = "mean") -> AdapterModel:
    """A tiny model with adapters ``name -> (method, options)``, each with a 3-way head."""
    model = AdapterModel(tiny_base(arch))
    adapters = adapters or {n: ("pfeiffer", {"reduction_factor": 4}) for n in "abc"}
    for k, (name, (method, options)) in enumerate(adapters.items()):
        model.add_adapter(name, method, head=head(pooling=pooling), **options)
        randomize(model.adapters[name], seed=10 + k)
        randomize(model.heads[name], seed=50 + k)
    return model.eval()


def ffn_module(model: AdapterModel, name: str, layer: int) -> SiteModule:
    return model.adapters[name].layers[str(layer)]["ffn"]


def hidden(model: AdapterModel, batch, adapters) -> torch.Tensor:
    """Final hidden states under ``adapters`` (the heads are left out)."""
    with torch.no_grad(), model.using(adapters):
        return model.body(**batch).last_hidden_state


def base_hidden(model: AdapterModel, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.body(**batch).last_hidden_state


def row(batch: dict, r: int) -> dict:
    return {k: v[r : r + 1] for k, v in batch.items()}


# ----------------------------------------------------------------------------- Stack
def test_stack_equals_hand_composition():
    model = model_with()
    batch = tiny_batch()
    def a_then_b(layer, inputs, out):  # each Pfeiffer adapter reads LN(x + its input)
        return run(ffn_module(model, "b", layer), inputs, run(ffn_module(model, "a", layer), inputs, out))

    with torch.no_grad(), sublayer_hooks(model, a_then_b):
        expected = base_hidden(model, batch)
    assert torch.allclose(hidden(model, batch, Stack("a", "b")), expected, atol=ATOL)
    assert not torch.allclose(hidden(model, batch, Stack("b", "a")), expected, atol=ATOL)  # order matters


# ----------------------------------------------------------------------------- Parallel
@pytest.mark.parametrize("arch", ["bert", "mpnet", "distilbert", "llama"])
def test_parallel_equals_separate_runs(arch):
    adapters = {
        "a": ("pfeiffer", {"reduction_factor": 4}),
        "b": ("houlsby", {"bottleneck_size": 3}),
        "c": ("lora", {"r": 2, "targets": ("q", "v", "ffn_out")}),
        "lang": ("parallel", {"reduction_factor": 8}),
    }
    pooling = "last" if arch == "llama" else "mean"
    model = model_with(arch, adapters, pooling)
    batch = tiny_batch(batch=3)
    setup = Parallel("a", "b", Stack("lang", "c"))
    with torch.no_grad():
        out = model(**batch, adapters=setup)
        assert isinstance(out, MultiTaskOutput) and list(out.tasks) == ["a", "b", "c"]
        for task, single in (("a", "a"), ("b", "b"), ("c", Stack("lang", "c"))):
            alone = model(**batch, adapters=single)
            assert torch.allclose(out[task].logits, alone.logits, atol=ATOL), task
            assert torch.equal(out.rows[task], torch.arange(3))
        blocks = out.last_hidden_state.chunk(3)
        assert torch.allclose(blocks[1], hidden(model, batch, "b") if arch != "llama" else blocks[1], atol=ATOL)


def test_parallel_with_labels_sums_losses():
    model = model_with()
    batch = tiny_batch()
    labels = {"a": torch.tensor([0, 1, 2]), "c": torch.tensor([2, 2, 0])}
    with torch.no_grad():
        out = model(**batch, adapters=Parallel("a", "b", "c"), labels=labels)
        expected = model(**batch, adapters="a", labels=labels["a"]).loss + model(**batch, adapters="c", labels=labels["c"]).loss
    assert out["b"].loss is None
    assert torch.allclose(out.loss, expected, atol=ATOL)


def layer_batch_sizes(model: AdapterModel):
    """Record the number of rows entering each layer in the next forward passes."""
    seen: dict[int, int] = {}
    handles = [  # on the query projection: what the layer computes on, after any replication
        p.role("q")[0].register_forward_pre_hook(lambda m, args, i=p.index: seen.__setitem__(i, args[0].shape[0]))
        for p in model.parts.layers
    ]
    return seen, handles


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_parallel_runs_unadapted_lower_layers_once(arch):
    model = model_with(arch)
    batch = tiny_batch(batch=2)
    seen, handles = layer_batch_sizes(model)
    try:
        with torch.no_grad():
            dropped = model(**batch, adapters=AdapterDrop(Parallel("a", "b", "c"), first=1))
    finally:
        for h in handles:
            h.remove()
    assert seen == {0: 2, 1: 6}  # the batch splits at the first adapted layer only
    with torch.no_grad():
        for task in "abc":
            alone = model(**batch, adapters=AdapterDrop(task, first=1))
            assert torch.allclose(dropped[task].logits, alone.logits, atol=ATOL)


def test_parallel_with_every_layer_dropped_shares_everything():
    model = model_with()
    batch = tiny_batch()
    with torch.no_grad():
        out = model(**batch, adapters=AdapterDrop(Parallel("a", "b"), first=LAYERS))
        base = base_hidden(model, batch)
    assert out.last_hidden_state.shape[0] == 3
    assert torch.equal(out["a"].logits, model.heads["a"](base, batch["attention_mask"]))


def test_parallel_falls_back_per_branch_for_modules_without_batched_form(monkeypatch):
    model = model_with()
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch, adapters=Parallel("a", "b"))
        monkeypatch.setattr(Bottleneck, "batched", SiteModule.batched)
        looped = model(**batch, adapters=Parallel("a", "b"))
    for task in "ab":
        assert torch.allclose(looped[task].logits, expected[task].logits, atol=ATOL)


def test_parallel_outside_forward_is_refused():
    model = model_with()
    with pytest.raises(ValueError, match="a Parallel setup runs only through model\\(..., adapters=...\\)"):
        with model.using(Parallel("a", "b")):
            model.body(**tiny_batch())


# ----------------------------------------------------------------------------- per-sample routing
MIXED = {
    "a": ("pfeiffer", {"reduction_factor": 4}),
    "b": ("pfeiffer", {"bottleneck_size": 3, "non_linearity": "relu"}),  # another width: zero-padded
    "c": ("houlsby", {"bottleneck_size": 5}),  # attention + FFN adapters and norm deltas
    "d": ("parallel", {"reduction_factor": 8}),  # reads the sublayer input
    "h": ("pfeiffer", {"reduction_factor": 4, "original_ln_before": False}),  # reads the sublayer output
    "e": ("lora", {"r": 2, "targets": ("q", "v", "ffn_out")}),
    "f": ("lora", {"r": 4, "targets": ("v", "o")}),
    "g": ("bitfit", {}),  # bias deltas on the same projections as e's LoRA
}


@pytest.mark.parametrize("arch", ["bert", "mpnet", "llama"])
def test_routed_rows_equal_each_row_alone(arch):
    pooling = "last" if arch == "llama" else "mean"
    model = model_with(arch, MIXED, pooling)
    rows = ["a", None, "c", "e", "g", "b", "d", "a", "f", "g", None, "c", "h"]
    batch = tiny_batch(batch=len(rows), seq=6)
    with torch.no_grad():
        out = model(**batch, adapters=Routed(rows))
        for r, name in enumerate(rows):
            if name is None:
                assert torch.allclose(out.last_hidden_state[r : r + 1], base_hidden(model, row(batch, r)), atol=ATOL)
                continue
            alone = model(**row(batch, r), adapters=name).logits
            position = (out.rows[name] == r).nonzero().item()
            assert torch.allclose(out[name].logits[position], alone[0], atol=ATOL), (r, name)
    assert out.logits is None  # some rows have no adapter, so no row-ordered logits


def test_routed_logits_in_row_order_when_every_row_has_a_head():
    model = model_with()
    rows = ["b", "a", "c", "a"]
    batch = tiny_batch(batch=4)
    with torch.no_grad():
        out = model(**batch, adapters=Routed(rows))
        expected = torch.cat([model(**row(batch, r), adapters=n).logits for r, n in enumerate(rows)])
    assert torch.allclose(out.logits, expected, atol=ATOL)


def test_routed_decoder_lm_rows_equal_rows_alone():
    model = AdapterModel(tiny_base("llama")).eval()
    for k, name in enumerate("ab"):
        model.add_adapter(name, "lora", r=2, targets=("q", "v", "ffn_in"))
        randomize(model.adapters[name], seed=k)
    rows = ["a", None, "b"]
    batch = tiny_batch(batch=3)
    with torch.no_grad():
        logits = model(**batch, adapters=Routed(rows)).logits
        for r, name in enumerate(rows):
            alone = model(**row(batch, r), adapters=name).logits
            assert torch.allclose(logits[r : r + 1], alone, atol=ATOL)


def test_routed_is_one_batched_call_per_site(monkeypatch):
    calls = []
    original = Bottleneck.batched.__func__
    counting = classmethod(lambda cls, modules: calls.append(len(modules)) or original(cls, modules))
    monkeypatch.setattr(Bottleneck, "batched", counting)
    adapters = {f"u{i}": ("pfeiffer", {"reduction_factor": 4}) for i in range(6)}
    model = model_with("bert", adapters)
    with torch.no_grad():
        model(**tiny_batch(batch=6), adapters=Routed([f"u{i}" for i in range(6)]))
    assert calls == [6] * LAYERS  # one stacked call per site, never one per adapter


def test_routed_loss_is_mean_row_loss_and_trains_every_adapter():
    model = model_with()
    rows = ["a", "b", "a", "c"]
    labels = torch.tensor([0.0, 2.0, 1.0, 1.0])
    batch = tiny_batch(batch=4)
    model.requires_grad_(False)
    for name in "abc":
        model.adapters[name].requires_grad_(True)
        model.heads[name].requires_grad_(True)
    loss = model(**batch, adapters=Routed(rows), labels=labels).loss
    with torch.no_grad():
        per_row = [model(**row(batch, r), adapters=n, labels=labels[r : r + 1].long()).loss for r, n in enumerate(rows)]
    assert torch.allclose(loss, torch.stack(per_row).mean(), atol=ATOL)
    loss.backward()
    for name in "abc":
        grads = [p.grad for p in model.adapter_parameters(name).values()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None for p in model.base.parameters())


# ----------------------------------------------------------------------------- AdapterDrop
def test_adapter_drop_zero_equals_no_drop():
    model = model_with()
    batch = tiny_batch()
    assert torch.equal(hidden(model, batch, AdapterDrop("a", first=0)), hidden(model, batch, "a"))
    with torch.no_grad():
        plain = model(**batch, adapters=Parallel("a", "b"))
        dropped = model(**batch, adapters=AdapterDrop(Parallel("a", "b"), first=0))
    assert torch.equal(plain["b"].logits, dropped["b"].logits)


def test_adapter_drop_all_layers_gives_base_hidden_states():
    model = model_with()
    batch = tiny_batch()
    assert torch.equal(hidden(model, batch, AdapterDrop(Stack("a", "b"), first=LAYERS)), base_hidden(model, batch))
    with torch.no_grad():
        routed = model(**batch, adapters=AdapterDrop(Routed(["a", "b", None]), first=LAYERS))
    assert torch.equal(routed.last_hidden_state, base_hidden(model, batch))


def test_adapter_drop_skips_exactly_the_lower_layers():
    model = model_with()
    batch = tiny_batch()
    with torch.no_grad(), sublayer_hooks(model, lambda l, inputs, out: out if l < 1 else run(ffn_module(model, "a", l), inputs, out)):
        expected = base_hidden(model, batch)
    assert torch.allclose(hidden(model, batch, AdapterDrop("a", first=1)), expected, atol=ATOL)


def test_robust_adapter_drop_samples_a_depth_per_batch():
    model = model_with()
    batch = tiny_batch()
    by_depth = [hidden(model, batch, AdapterDrop("a", first=d)) for d in range(LAYERS + 1)]
    setup = AdapterDrop("a", first=1, robust=True)
    assert torch.equal(hidden(model, batch, setup), by_depth[1])  # evaluation: the fixed depth
    model.train()
    model.base.eval()  # no dropout, so each output is exactly one depth's
    torch.manual_seed(0)
    depths = set()
    for _ in range(12):
        out = hidden(model, batch, setup)
        matches = [d for d, h in enumerate(by_depth) if torch.equal(out, h)]
        assert matches and matches[0] < LAYERS  # n ~ U{0..L-1}: the top layer always keeps its adapter
        depths.add(matches[0])
    assert depths == set(range(LAYERS))


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Fuse("a", Parallel("b", "c")), "Fuse cannot contain"),
        (lambda: Parallel("a", Parallel("b", "c")), "Parallel cannot contain"),
        (lambda: Stack(Parallel("a", "b"), "c"), "only be the last"),
        (lambda: Stack("a", Routed(["a"])), "Stack cannot contain"),
        (lambda: Parallel("a", AdapterDrop("b", first=1)), "Parallel cannot contain"),
        (lambda: AdapterDrop(AdapterDrop("a"), first=1), "AdapterDrop cannot contain AdapterDrop.*give one depth: AdapterDrop\\(setup, first=n\\)"),
        (lambda: Parallel("a"), "at least two branches"),
        (lambda: Stack("a", "a"), "names an adapter twice"),
        (lambda: Fuse(Stack("a", Fuse("b", "c")), "c"), "may only stack adapter names"),
        (lambda: Routed(["a", Stack("b")]), "Routed cannot contain Stack.*Routed takes one adapter name \\(or None\\) per row"),
        (lambda: AdapterDrop("a", first=-1), "first must be an integer >= 0"),
    ],
)
def test_invalid_nestings_are_refused_when_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_unknown_names_and_missing_heads_are_clear_errors():
    model = model_with()
    model.add_adapter("nohead", "pfeiffer")
    batch = tiny_batch()
    with pytest.raises(ValueError, match="no adapter named 'zzz'"):
        model(**batch, adapters=Parallel("a", "zzz"))
    with pytest.raises(ValueError, match="no adapter named 'zzz'"):
        model(**batch, adapters=Routed(["a", "zzz", None]))
    with pytest.raises(ValueError, match="'nohead' has no head"):
        model(**batch, adapters=Parallel("a", "nohead"))
    with pytest.raises(ValueError, match=r"\['nohead'\] have no task head"):
        model(**batch, adapters=Routed(["a", "nohead", "a"]))
    with pytest.raises(ValueError, match="Routed names 2 rows but the batch has 3"):
        model(**batch, adapters=Routed(["a", "b"]))
    with pytest.raises(ValueError, match="first=9 but the model has 2 layers"):
        model(**batch, adapters=AdapterDrop("a", first=9))


def test_a_merged_lora_routes_per_row_like_an_unmerged_one():
    model = model_with("bert", {"a": ("lora", {"r": 2}), "b": ("lora", {"r": 2})})
    batch, setup = tiny_batch(), Routed(["a", "b", None])
    with torch.no_grad():
        unmerged = model(**batch, adapters=setup)
        model.merge_adapter("a")
        merged = model(**batch, adapters=setup)
    for name in "ab":
        torch.testing.assert_close(merged[name].logits, unmerged[name].logits, rtol=1e-5, atol=1e-5)


@dataclass(frozen=True)
class _ScaleConfig(MethodConfig):
    method = "test_scale"


class _Scale(SiteModule):
    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, x, out):
        return out * self.gain


class _ScaleMethod(AdapterMethod):
    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        for layer in range(ctx.parts.num_layers):
            self.attach(ctx.sites[f"{layer}.ffn"], _Scale())


def test_routing_a_method_without_batched_form_says_how_to_fix():
    register_method(_ScaleConfig, _Scale and _ScaleMethod)
    try:
        model = model_with()
        model.add_adapter("s", "test_scale", head=head())
        with pytest.raises(NotImplementedError, match="_Scale has no batched form"):
            model(**tiny_batch(), adapters=Routed(["s", "a", "s"]))
        with torch.no_grad():  # Parallel falls back to one call per branch
            out = model(**tiny_batch(), adapters=Parallel("s", "a"))
            assert torch.allclose(out["s"].logits, model(**tiny_batch(), adapters="s").logits, atol=ATOL)
    finally:
        unregister_method("test_scale")


# ----------------------------------------------------------------------------- continual tasks
def test_new_tasks_leave_earlier_predictions_bit_identical():
    model = model_with("bert", {"a": ("pfeiffer", {"reduction_factor": 4}), "b": ("lora", {"r": 2})})
    model.add_adapter("c", "pfeiffer", head=head(), bottleneck_size=4)
    randomize(model.adapters["c"], seed=3)
    batch = tiny_batch()
    labels = torch.tensor([0, 1, 2])

    def predictions():
        with torch.no_grad():
            return {n: model(**batch, adapters=n).logits.clone() for n in ("a", "b", "c")}

    before = predictions()
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}

    def train(name, steps=3):
        model.train_adapter(name)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(steps):
            model(**batch, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()

    model.add_adapter("new", "houlsby", head=head(), bottleneck_size=4)
    train("new")
    model.add_adapter("d", "lora", head=head(), r=2, targets=("q", "k", "v", "o"))
    train("d")
    model.add_adapter("fac", "fusion", head=head(), adapters=("a", "c"))
    train("fac")
    model.delete_adapter("fac")
    model.delete_adapter("new")
    model.add_adapter("e", "bitfit", head=head())
    train("e")
    assert all(torch.equal(before[n], after) for n, after in predictions().items())
    assert all(torch.equal(base_before[k], v) for k, v in model.base.state_dict().items())


# ----------------------------------------------------------------------------- setups as values
@pytest.mark.parametrize(
    "setup",
    [
        Stack("a", "b"),
        Fuse("a", Stack("b", "c"), fusion="f"),
        Parallel("a", Stack("b", "c"), Fuse("a", "b")),
        Routed(["a", None, "b", "a"]),
        AdapterDrop(Parallel("a", "b"), first=2, robust=True),
        AdapterDrop(Routed(["a", "b"])),
    ],
    ids=repr,
)
def test_setups_are_hashable_values_with_a_json_form(setup):
    data = json.loads(json.dumps(setup.to_dict()))
    again = setup_from_dict(data)
    assert again == setup and hash(again) == hash(setup)
    assert {setup: 1}[again] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        setup.first = 3  # type: ignore[misc]


def test_names_and_lists_are_setups_too():
    assert setup_from_dict("a") == Stack("a")
    assert setup_from_dict(["a", {"fuse": ["b", "c"], "fusion": "f"}]) == Stack("a", Fuse("b", "c", fusion="f"))


@pytest.mark.parametrize(
    "data",
    [{"stak": ["a"]}, {"stack": "a"}, {"routed": ["a"], "first": 1}, {"fuse": ["a"], "fusion": "f", "x": 1}, 3, None],
)
def test_a_json_form_that_is_not_a_setup_says_which_forms_are(data):
    with pytest.raises(ValueError, match="not a composition setup: .*use a name, a list of names, or one of"):
        setup_from_dict(data)


def test_a_checked_setup_is_compiled_once_until_the_adapters_change():
    model = model_with()
    batch = tiny_batch()
    setup = Stack("a", "b")
    with torch.no_grad():
        model(**batch, adapters=setup)
        bound = model._bind(setup)
        model(**batch, adapters=Stack("a", "b"))  # an equal value finds the same bound setup
        assert model._bind(Stack("a", "b")) is bound
        model.add_adapter("d", "pfeiffer", head=head(), bottleneck_size=4)
        assert model._bind(setup) is not bound
