"""Baselines: full fine-tuning, partial fine-tuning (top k layers) and probing.

These train base parameters in place (full, partial) or none at all (probe: only the task head
on a frozen model, Sec. 2 of the seeds' probing discussion). They exist to measure the
parameter-efficient methods against, so they go through the same training, saving and report
path. Because full and partial fine-tuning change the shared base model, such an adapter must be
the only one on its model; their saved file holds the trained base weights under their own
names. On a CNN, the BatchNorms they train update their running statistics (the fine-tuning
baseline of Rebuffi et al. 2017 trains the whole network, its BatchNorms included), so those
statistics are saved with the weights (``base_buffers``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..registry import MethodConfig
from .base import AdapterMethod, BindContext

_FINE_TUNING_RATE = "Devlin et al. 2019 / RoBERTa: 2e-5 .. 5e-5 for every weight of the model"


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Every weight of the model trains."""

    method = "full"
    default_learning_rate = 2e-5
    learning_rate_source = _FINE_TUNING_RATE


@dataclass(frozen=True)
class PartialConfig(MethodConfig):
    """Args:
        top_layers: how many of the top transformer layers train (the rest stay frozen).
    """

    method = "partial"
    top_layers: int = 2
    default_learning_rate = 2e-5
    learning_rate_source = _FINE_TUNING_RATE

    def validate(self) -> None:
        if self.top_layers < 1:
            raise ValueError(f"partial: top_layers must be >= 1, got {self.top_layers}")


@dataclass(frozen=True)
class ProbeConfig(MethodConfig):
    """The model stays frozen; only the head (linear or MLP, CLS or mean pooling) trains."""

    method = "probe"
    default_learning_rate = 1e-3
    learning_rate_source = "a linear (or MLP) head on frozen features: a small convex-ish problem, 1e-3 is standard"


class FullFineTune(AdapterMethod):
    """Trains every base parameter in place (so it must be the only adapter on its model)."""

    capabilities = frozenset({"modifies_base"})

    def __init__(self, config, ctx: BindContext):
        super().__init__(config, ctx)
        self._root = [ctx.parts.root]  # a list so the base model is not registered as a submodule

    def base_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self._root[0].named_parameters())

    def base_buffers(self) -> dict[str, torch.Tensor]:
        trained = {id(p) for p in self.base_parameters().values()}
        return {
            f"{name}.{key}" if name else key: buffer
            for name, module in self._root[0].named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(id(p) in trained for p in module.parameters())
            for key, buffer in module.named_buffers(recurse=False)
        }


class PartialFineTune(FullFineTune):
    """Trains the top ``top_layers`` layers of the base in place."""

    def __init__(self, config: PartialConfig, ctx: BindContext):
        super().__init__(config, ctx)
        parts = ctx.parts
        if config.top_layers > parts.num_layers:
            raise ValueError(f"partial: top_layers={config.top_layers} but the model has {parts.num_layers} layers")
        self._trained = [p.layer for p in parts.layers[-config.top_layers :]]

    def base_parameters(self) -> dict[str, nn.Parameter]:
        wanted = {id(p) for layer in self._trained for p in layer.parameters()}
        return {name: p for name, p in self._root[0].named_parameters() if id(p) in wanted}


class Probe(AdapterMethod):
    """Nothing but the head trains."""
