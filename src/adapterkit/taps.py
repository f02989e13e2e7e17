"""Taps: reading a base layer's output during a pass, for plug-ins outside the model.

A K-Adapter knowledge adapter (``methods/kadapter.py``) changes nothing inside the frozen model:
it reads the hidden states some of its layers produce and runs its own network beside it. The
reading is done here: one forward hook per base layer, installed by the facade while any adapter
on the model reads layers, stores the layer's output in the state of the pass in flight
(``context.ForwardState.tapped``) when that pass's bound setup reads that layer
(``BoundSetup.tapped_layers``), and returns nothing, so the layer's output, and with it the rest of
the forward pass, is exactly what the plain model computes. Outside a pass of its owner, or in a
pass that reads no layer, the hook does nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from . import context
from .placement import ResolvedModel


class LayerTaps:
    """Forward hooks on every layer of ``parts`` that keep the outputs a pass reads.

    Args:
        parts: the resolved model (its layers, numbered across stacks).
        owner: the model's site router: only passes of this model are served.
    """

    def __init__(self, parts: ResolvedModel, owner: Any):
        self.owner = owner
        self.handles: list[RemovableHandle] = [
            layer.layer.register_forward_hook(self._keeper(layer.index)) for layer in parts.layers
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _keeper(self, index: int):
        def keep(module: nn.Module, args: tuple, output: Any) -> None:
            state = context.current(self.owner)
            if state is not None and index in state.setup.tapped_layers:
                state.tapped[index] = layer_hidden(output)

        return keep


def layer_hidden(output: Any) -> torch.Tensor:
    """A layer's hidden states ``(batch, seq, d)`` from what its forward returned (a tensor, or a
    tuple whose first element is the hidden states, depending on the family and version)."""
    return output[0] if isinstance(output, (tuple, list)) else output
