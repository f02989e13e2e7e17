"""BitFit: train only the bias terms (Ben Zaken et al. 2021, arXiv:2106.10199).

Each bias of the attention and feed-forward projections and of the layer norms gets a per-adapter
delta (see ``deltas.py``), so several BitFit adapters share one frozen model. Architectures
without biases (Llama) get the deltas all the same: BitFit there adds bias terms that start at
zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..placement import LINEAR_ROLES
from ..registry import MethodConfig, register_method
from ..sites import role_sites
from .base import AdapterMethod, select_layers
from .deltas import BiasDelta, NormDelta


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    """Args:
        include_norms: also train the layer norms' biases.
        layers: which layers (None: all).
    """

    method = "bitfit"
    include_norms: bool = True
    layers: tuple[int, ...] | None = None


class BitFitAdapter(AdapterMethod):
    def __init__(self, config: BitFitConfig, parts, sites):
        super().__init__(config, parts, sites)
        for layer in select_layers(config.layers, parts.num_layers, "bitfit"):
            for role in LINEAR_ROLES:
                for site in role_sites(sites, layer, role):
                    self.attach(site, BiasDelta(site.output_module.out_features))
            if config.include_norms:
                for role in ("attn_norm", "ffn_norm"):
                    site = sites[f"{layer}.{role}"]
                    if getattr(site.output_module, "bias", None) is not None:
                        self.attach(site, NormDelta(site.output_module, train_gain=False))


register_method(BitFitConfig, BitFitAdapter)
