"""Regression tests for reported faults: LoRA merging in half precision (2), the base-model check
across dtypes (6), empty inputs (9b) and regression labels shaped (batch, 1) (10).

Tiny random models (``tiny_models``) and the word-level tokenizer of ``test_training``; no network.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_base, tiny_batch

from adapterkit import AdapterModel, HeadConfig

ALL_ROLES = ["q", "k", "v", "o", "ffn_in", "ffn_out"]


# ---------------------------------------------------------------- fault 2: LoRA merge/unmerge is lossless
def add_lora(model: AdapterModel, name: str, seed: int) -> None:
    """A LoRA on every projection with a realistic trained update: B ~ N(0, 1e-3)."""
    model.add_adapter(name, "lora", HeadConfig(num_labels=3, dropout=0.0), r=4, targets=ALL_ROLES)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.adapter_parameters(name).items():
            if "lora_B" in key:
                param.copy_(1e-3 * torch.randn(param.shape, generator=generator))


def lora_weights(model: AdapterModel, name: str) -> list[torch.Tensor]:
    """Copies of the weights of the projections adapter ``name`` adapts."""
    return [site.output_module.weight.detach().clone() for site, _ in model.adapters[name].attachments()]


def assert_weights(model: AdapterModel, name: str, expected: list[torch.Tensor]) -> None:
    for weight, want in zip(lora_weights(model, name), expected, strict=True):
        assert torch.equal(weight, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_lora_merge_then_unmerge_leaves_the_base_and_other_adapters_bit_identical(arch, dtype):
    model = AdapterModel(tiny_base(arch).to(dtype))
    model.add_adapter("other", "pfeiffer", HeadConfig(num_labels=3, dropout=0.0), bottleneck_size=4)
    add_lora(model, "lora", seed=0)
    batch = tiny_batch()
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    other_before = model(**batch, adapters="other").logits
    model.merge_adapter("lora")
    model.merge_adapter("lora")  # idempotent
    adapted = len(list(model.adapters["lora"].attachments()))
    assert sum(not torch.equal(v, base_before[k]) for k, v in model.base.state_dict().items()) == adapted
    model.unmerge_adapter("lora")
    model.unmerge_adapter("lora")
    for key, value in model.base.state_dict().items():
        assert torch.equal(value, base_before[key]), key
    assert torch.equal(model(**batch, adapters="other").logits, other_before)


def test_unmerging_a_lora_merged_under_another_leaves_exactly_the_other_merged():
    model = AdapterModel(tiny_base("llama").to(torch.bfloat16))
    add_lora(model, "first", seed=1)
    add_lora(model, "second", seed=2)
    original = lora_weights(model, "first")
    model.merge_adapter("second")
    second_alone = lora_weights(model, "second")
    model.unmerge_adapter("second")
    model.merge_adapter("first")
    model.merge_adapter("second")
    model.unmerge_adapter("first")
    assert model.adapters["second"].merged and not model.adapters["first"].merged
    assert_weights(model, "second", second_alone)
    model.unmerge_adapter("second")
    assert_weights(model, "first", original)


def test_merge_and_unload_keeps_the_update_and_refuses_an_adapter_merged_over_another():
    model = AdapterModel(tiny_base("llama").to(torch.bfloat16))
    add_lora(model, "first", seed=1)
    add_lora(model, "second", seed=2)
    model.merge_adapter("first")
    first_merged = lora_weights(model, "first")
    model.merge_adapter("second")
    with pytest.raises(ValueError, match="'second' cannot be removed while merged: .* unmerge that adapter first"):
        model.merge_and_unload("second")
    assert model.adapters["second"].merged
    model.unmerge_adapter("second")
    model.merge_and_unload("first")
    assert "first" not in model.adapters
    assert_weights(model, "second", first_merged)  # the update stays in the base
    model.merge_adapter("second")
    model.unmerge_adapter("second")  # back to the new base, not to the one before "first"
    assert_weights(model, "second", first_merged)


def test_base_output_is_the_unmerged_projection_and_the_kept_weight_is_never_saved(tmp_path):
    model = AdapterModel(tiny_base("llama").to(torch.bfloat16))
    add_lora(model, "lora", seed=0)
    site, delta = next(iter(model.adapters["lora"].attachments()))
    linear = site.output_module
    x = torch.randn(3, 5, linear.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    before = linear(x)
    weights_before = lora_weights(model, "lora")
    keys = set(model.state_dict())
    model.merge_adapter("lora")
    assert not torch.equal(linear(x), before)
    assert torch.equal(delta.base_output(x), before)
    assert set(model.state_dict()) == keys
    model.save_adapter("lora", tmp_path / "lora")
    assert set(load_file(str(tmp_path / "lora" / "adapter.safetensors"))) == set(model.adapter_parameters("lora"))
    model.unmerge_adapter("lora")
    assert torch.equal(delta.base_output(x), before)
    # the kept weight follows the model to another dtype: unmerging there restores the converted base
    model.merge_adapter("lora")
    model.to(torch.float32)
    model.unmerge_adapter("lora")
    assert_weights(model, "lora", [w.float() for w in weights_before])
