"""Baselines: full fine-tuning, partial fine-tuning (top k layers) and probing.

These train base parameters in place (full, partial) or none at all (probe: only the task head
on a frozen model, Sec. 2 of the seeds' probing discussion). They exist to measure the
parameter-efficient methods against, so they go through the same training, saving and report
path. Because full and partial fine-tuning change the shared base model, such an adapter must be
the only one on its model; their saved file holds the trained base weights under their own
names.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..registry import MethodConfig, register_method
from .base import AdapterMethod


@dataclass(frozen=True)
class FullConfig(MethodConfig):
    """Every weight of the model trains."""

    method = "full"


@dataclass(frozen=True)
class PartialConfig(MethodConfig):
    """Args:
        top_layers: how many of the top transformer layers train (the rest stay frozen).
    """

    method = "partial"
    top_layers: int = 2

    def validate(self) -> None:
        if self.top_layers < 1:
            raise ValueError(f"partial: top_layers must be >= 1, got {self.top_layers}")


@dataclass(frozen=True)
class ProbeConfig(MethodConfig):
    """The model stays frozen; only the head (linear or MLP, CLS or mean pooling) trains."""

    method = "probe"


class FullFineTune(AdapterMethod):
    modifies_base = True

    def base_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self._root[0].named_parameters())

    def __init__(self, config, parts, sites):
        super().__init__(config, parts, sites)
        self._root = [parts.root]  # a list so the base model is not registered as a submodule


class PartialFineTune(FullFineTune):
    def __init__(self, config: PartialConfig, parts, sites):
        super().__init__(config, parts, sites)
        if config.top_layers > parts.num_layers:
            raise ValueError(f"partial: top_layers={config.top_layers} but the model has {parts.num_layers} layers")
        self._trained = [p.layer for p in parts.layers[-config.top_layers :]]

    def base_parameters(self) -> dict[str, nn.Parameter]:
        wanted = {id(p) for layer in self._trained for p in layer.parameters()}
        return {name: p for name, p in self._root[0].named_parameters() if id(p) in wanted}


class Probe(AdapterMethod):
    pass


register_method(FullConfig, FullFineTune)
register_method(PartialConfig, PartialFineTune)
register_method(ProbeConfig, Probe)
