"""Precise BatchNorm statistics (training/batchnorm.py) on the tiny random CNN."""

from __future__ import annotations

import torch

from adapterkit import AdapterModel, HeadConfig
from adapterkit.training.batchnorm import recompute_batchnorm_statistics, trained_batchnorms
from tiny_models import tiny_base, tiny_images


def cnn_with(method: str, **options) -> AdapterModel:
    torch.manual_seed(0)
    model = AdapterModel(tiny_base("cnn"))
    model.add_adapter("a", method, HeadConfig(num_labels=3), **options)
    model.train_adapter("a")
    return model


def test_the_statistics_become_the_even_average_of_the_batches_and_the_base_stays_as_it_was():
    model = cnn_with("residual")
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    norms = trained_batchnorms(model)
    assert norms and all(not any(n is m for m in model.base.modules()) for n in norms)  # the adapter's own only
    momenta = [n.momentum for n in norms]
    batches = [tiny_images(batch=4, seed=s) for s in (1, 2)]
    seen = {id(n): [] for n in norms}  # each BatchNorm's input in each batch of the recomputation
    hooks = [n.register_forward_hook(lambda m, args, out: seen[id(m)].append(args[0].detach())) for n in norms]
    assert recompute_batchnorm_statistics(model, batches, "a") == 2
    for hook in hooks:
        hook.remove()
    expected = [
        (sum(x.mean(dim=(0, 2, 3)) for x in seen[id(n)]) / 2, sum(x.var(dim=(0, 2, 3)) for x in seen[id(n)]) / 2)
        for n in norms
    ]
    for norm, (mean, var) in zip(norms, expected):
        torch.testing.assert_close(norm.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(norm.running_var, var, rtol=1e-5, atol=1e-6)
    assert [n.momentum for n in norms] == momenta
    assert all(torch.equal(v, base_before[k]) for k, v in model.base.state_dict().items())


def test_nothing_runs_where_no_batchnorm_trains():
    model = cnn_with("lora", targets=["conv1", "conv2"])  # conv LoRA: every BatchNorm is the frozen base's
    assert trained_batchnorms(model) == []
    assert recompute_batchnorm_statistics(model, [tiny_images()], "a") == 0
