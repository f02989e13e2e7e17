"""LoRA's options beyond the original paper: rsLoRA's scaling and DoRA's weight decomposition,
each checked against its formula written out by hand (the generic checks run from the table's
``dora`` row in ``test_methods.py``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from method_table import hidden, make, perturb
from tiny_models import tiny_batch

from adapterkit import AdapterModel, HeadConfig
from adapterkit.composition import Parallel, Routed, Stack
from adapterkit.methods.lora import LoraDelta, column_norm

ATOL = 1e-5
TARGETS = ("q", "v", "ffn_out")


def dora_model(arch: str = "bert", **options) -> AdapterModel:
    model = make(arch, "dora", **{"targets": TARGETS, "use_rslora": False, **options})
    perturb(model)
    return model


def eq5_weight(delta: LoraDelta) -> torch.Tensor:
    """DoRA, Eq. 5: ``m (W + s B A) / ‖W + s B A‖_c`` with the norm over each output feature's weights."""
    combined = delta.linear.weight + delta.scaling * delta.lora_B @ delta.lora_A
    return delta.magnitude[:, None] * combined / combined.norm(dim=1, keepdim=True)


@torch.no_grad()
def test_dora_computes_eq5():
    model = dora_model()
    batch = tiny_batch()
    reference = copy.deepcopy(model.base)
    deltas = {site.output_module: delta for site, delta in model.adapters["task"].attachments()}
    for original, copied in zip(model.base.modules(), reference.modules()):
        if original in deltas:
            copied.weight.copy_(eq5_weight(deltas[original]))
    expected = reference(**batch).last_hidden_state
    torch.testing.assert_close(hidden(model, batch), expected, rtol=ATOL, atol=ATOL)


def test_dora_magnitude_starts_at_the_weight_norm_per_output_feature():
    model = make("llama", "dora")
    for site, delta in model.adapters["task"].attachments():
        weight = site.output_module.weight
        assert delta.magnitude.shape == (weight.shape[0],)
        assert torch.equal(delta.magnitude, torch.linalg.norm(weight, dim=1))
        assert torch.equal(delta.dora_factor(), torch.ones(weight.shape[0]))


def test_dora_treats_the_norm_as_a_constant_in_backward():
    """Sec. 4.3 of the DoRA paper, and peft: no gradient flows through ``‖W + s B A‖_c``."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 5)
    delta = LoraDelta(linear, make("bert", "dora").adapters["task"].config)
    with torch.no_grad():
        delta.lora_B.normal_()
        delta.magnitude.mul_(1.5)
    x = torch.randn(2, 4, 6)
    delta(x, linear(x)).square().sum().backward()
    ours = [p.grad.clone() for p in (delta.lora_A, delta.lora_B, delta.magnitude)]
    for p in (delta.lora_A, delta.lora_B, delta.magnitude):
        p.grad = None
    combined = linear.weight + delta.scaling * delta.lora_B @ delta.lora_A
    weight = delta.magnitude[:, None] * combined / column_norm(combined).detach()[:, None]
    torch.nn.functional.linear(x, weight, linear.bias).square().sum().backward()
    for got, expected in zip(ours, (delta.lora_A.grad, delta.lora_B.grad, delta.magnitude.grad)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_dora_with_dropout_scales_the_dropped_input_like_peft():
    """In training with dropout, the base term of the DoRA update is ``W dropout(x)``."""
    linear = torch.nn.Linear(6, 5)
    config = make("bert", "dora", dropout=0.5).adapters["task"].config
    delta = LoraDelta(linear, config).train()
    with torch.no_grad():
        delta.lora_B.normal_()
        delta.magnitude.mul_(1.5)
    x = torch.randn(2, 4, 6)
    torch.manual_seed(7)
    ours = delta(x, linear(x))
    torch.manual_seed(7)
    dropped = torch.nn.functional.dropout(x, 0.5)
    g = delta.dora_factor()
    update = dropped @ delta.lora_A.T @ delta.lora_B.T * delta.scaling
    expected = linear(x) + (g - 1) * (dropped @ linear.weight.T) + g * update
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_rslora_scales_by_alpha_over_the_root_of_the_rank(arch):
    model = make(arch, "lora", r=4, alpha=8.0, use_rslora=True)
    perturb(model)
    for _, delta in model.adapters["task"].attachments():
        assert delta.scaling == 8.0 / math.sqrt(4)
    plain = make(arch, "lora", r=4, alpha=8.0 * math.sqrt(4))  # alpha' / r = alpha / sqrt(r)
    plain.load_adapter_state("task", model.adapter_state("task").tensors(), "the rsLoRA adapter")
    batch = tiny_batch()
    torch.testing.assert_close(hidden(model, batch), hidden(plain, batch), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_dora_merge_and_unmerge_restore_the_base_bit_for_bit(arch):
    model = dora_model(arch)
    batch = tiny_batch()
    base = {k: v.clone() for k, v in model.base.state_dict().items()}
    unmerged, plain = hidden(model, batch), hidden(model, batch, None)
    model.merge_adapter("task")
    torch.testing.assert_close(hidden(model, batch), unmerged, rtol=ATOL, atol=ATOL)
    assert torch.equal(hidden(model, batch, None), plain)  # the plain base, from the kept weights
    model.unmerge_adapter("task")
    assert all(torch.equal(v, base[k]) for k, v in model.base.state_dict().items())
    assert torch.equal(hidden(model, batch), unmerged)


def rows_model() -> AdapterModel:
    """DoRA adapters of two ranks and a plain LoRA on shared projections, each with a head."""
    model = AdapterModel(make("bert", "dora").base)
    adapters = {
        "d2": {"r": 2, "use_dora": True, "targets": TARGETS},
        "d4": {"r": 4, "use_dora": True, "targets": ("q", "ffn_out")},
        "plain": {"r": 3, "targets": ("q", "v")},
    }
    for k, (name, options) in enumerate(adapters.items()):
        model.add_adapter(name, "lora", HeadConfig(num_labels=3, dropout=0.0), **options)
        perturb(model, name, seed=k)
    return model.eval()


@torch.no_grad()
def test_dora_routed_and_parallel_rows_equal_each_adapter_alone():
    model = rows_model()
    batch = tiny_batch(batch=4)
    rows = ["d2", "plain", None, "d4"]
    routed = model(**batch, adapters=Routed(rows))
    for r, name in enumerate(rows):
        one = {k: v[r : r + 1] for k, v in batch.items()}
        if name is None:
            torch.testing.assert_close(routed.last_hidden_state[r : r + 1], model.body(**one).last_hidden_state)
            continue
        position = (routed.rows[name] == r).nonzero().item()
        torch.testing.assert_close(routed[name].logits[position], model(**one, adapters=name).logits[0], rtol=ATOL, atol=ATOL)
    parallel = model(**batch, adapters=Parallel("d2", "plain", "d4"))
    for name in ("d2", "plain", "d4"):
        torch.testing.assert_close(parallel[name].logits, model(**batch, adapters=name).logits, rtol=ATOL, atol=ATOL)
    beside = Routed(["d2", "plain", None, "d2"])  # d4 would read d2's projections: refused, see below
    unmerged = model(**batch, adapters=beside)
    model.merge_adapter("d2")  # a merged DoRA runs per row from the kept base weights
    merged = model(**batch, adapters=beside)
    for name in ("d2", "plain"):
        torch.testing.assert_close(merged[name].logits, unmerged[name].logits, rtol=ATOL, atol=ATOL)


def test_a_dora_beside_a_merged_adapter_on_its_projection_is_refused():
    model = rows_model()
    batch = tiny_batch()
    model.merge_adapter("plain")  # its q projection holds the merged weight that d2's norm would read
    with pytest.raises(ValueError, match="adapter 'd2' computes with the base weight of projection 0.q, which adapter "
                                         "'plain' holds merged; call model.unmerge_adapter\\('plain'\\)"):
        model(**batch, adapters="d2")
    with pytest.raises(ValueError, match="adapter 'd4' computes with the base weight"):
        model(**batch, adapters=Stack("plain", "d4"))
    model(**batch, adapters="plain")  # the merged adapter alone, and the plain base, still run
    model(**batch, adapters=None)
    model.unmerge_adapter("plain")
    model(**batch, adapters="d2")
