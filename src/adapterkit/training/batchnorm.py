"""Precise BatchNorm statistics for the BatchNorms an adapter trains, before each evaluation.

A BatchNorm in train mode keeps an exponential moving average of batch statistics for eval mode.
When the weights before it change fast (fine-tuning a CNN for a few hundred steps) the average
lags behind them, and with the small momentum of TensorFlow-trained CNNs (EfficientNet-Lite:
0.01) it still mostly holds the ImageNet statistics after the whole run: the network is then
evaluated with statistics of another network. Wu & Johnson (2021, "Rethinking 'Batch' in
BatchNorm", section 3: "precise BN", as in Detectron2 and pycls) recompute the statistics with
the final weights, averaged evenly over many batches; this does that for the BatchNorms in train
mode under ``AdapterModel.train()`` (those whose parameters train: residual adapters' domain
BatchNorms, the base's under full or partial fine-tuning). The frozen base's stay untouched.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..composition import Setup


def trained_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorms that update running statistics in ``model``'s training mode."""
    model.train()
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], setup: Setup,
                                   max_batches: int = 200) -> int:
    """Replace the running mean and variance of every BatchNorm of :func:`trained_batchnorms` by
    the even average of their batch statistics over at most ``max_batches`` of ``batches`` (model
    inputs; a ``labels`` entry is ignored) run through ``setup`` with the current weights.

    Returns:
        How many batches were run (0 when no BatchNorm trains: nothing is run or changed).
    """
    norms = trained_batchnorms(model)
    if not norms:
        return 0
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch weighs the same
    device = next(model.parameters()).device
    run = 0
    try:
        for batch in batches:
            if run == max_batches:
                break
            model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}, adapters=setup)
            run += 1
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
    return run
