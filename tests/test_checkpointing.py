"""Gradient checkpointing recomputes layers in the backward pass under the forward pass's state.

Robust AdapterDrop samples its depth once per pass, Parallel replicates the batch from a layer
on, and a reparameterised prefix computes its MLP once per pass: a recomputation that did not
see the same state would compute other activations (and non-reentrant checkpointing would
notice, or the gradients would silently differ). Each case: the gradients of every trained
parameter with checkpointing equal those without.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_base, tiny_batch

from adapterkit import AdapterDrop, AdapterModel, HeadConfig, Parallel

CASES = {
    "robust_adapter_drop": ("bert", AdapterDrop("a", robust=True)),
    "parallel": ("bert", Parallel("a", "b")),
    "prefix": ("llama", "p"),
    "prefix_routed": ("llama", None),  # filled in below: a Routed batch of the prefix and an adapter
}


def build(arch: str, checkpointing: bool, reentrant: bool) -> AdapterModel:
    model = AdapterModel(tiny_base(arch))
    head = HeadConfig(num_labels=3, dropout=0.1)
    torch.manual_seed(0)
    model.add_adapter("a", "houlsby", head, bottleneck_size=4)
    model.add_adapter("b", "lora", head, r=2, dropout=0.1)
    model.add_adapter("p", "prefix", head, prefix_length=3, reparam_hidden=8)
    with torch.no_grad():
        for name in ("a", "b", "p"):
            for param in model.adapter_parameters(name).values():
                param.add_(0.1 * torch.randn(param.shape))
    if checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": reentrant})
    return model.train()


def gradients(arch: str, setup, checkpointing: bool, reentrant: bool) -> dict[str, torch.Tensor]:
    model = build(arch, checkpointing, reentrant)
    for name in ("a", "b", "p"):
        for param in model.adapter_parameters(name).values():
            param.requires_grad_(True)
    batch = tiny_batch(batch=4, seq=6)
    labels = torch.tensor([0, 1, 2, 1])
    torch.manual_seed(7)  # robust AdapterDrop's depth and every dropout mask
    if isinstance(setup, Parallel):
        loss = model(**batch, labels={"a": labels, "b": labels}, adapters=setup).loss
    else:
        loss = model(**batch, labels=labels, adapters=setup).loss
    loss.backward()
    return {f"{n}.{k}": p.grad.clone() for n in ("a", "b", "p") for k, p in model.adapter_parameters(n).items() if p.grad is not None}


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_checkpointed_gradients_equal_the_plain_ones(case, reentrant):
    from adapterkit import Routed

    arch, setup = CASES[case]
    setup = Routed(["p", "b", None, "p"]) if case == "prefix_routed" else setup
    expected = gradients(arch, setup, checkpointing=False, reentrant=reentrant)
    got = gradients(arch, setup, checkpointing=True, reentrant=reentrant)
    assert expected and got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
