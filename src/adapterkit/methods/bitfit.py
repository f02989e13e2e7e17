"""BitFit: train only the bias terms (Ben Zaken et al. 2021, arXiv:2106.10199).

Each bias of the attention and feed-forward projections and of the layer norms gets a per-adapter
delta (see ``deltas.py``), so several BitFit adapters share one frozen model. Architectures
without biases (Llama) get the deltas all the same: BitFit there adds bias terms that start at
zero. ``targets`` restricts the deltas to projections of chosen roles: peft's LoRA with
``bias="lora_only"`` trains the biases of the adapted projections only, which is a LoRA plus this
(``formats/peft.py``).

On a CNN the bias terms are its BatchNorms' shifts ``β`` (the convolutions before them carry
none) and the biases of convolutions that have one: each gets a per-channel delta.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..placement import LINEAR_ROLES, NORM_ROLES, norm_role
from ..registry import MethodConfig
from ..sites import role_sites
from .base import AdapterMethod, BindContext, select_layers
from .deltas import BiasDelta, NormDelta


@dataclass(frozen=True)
class BitFitConfig(MethodConfig):
    """Args:
        include_norms: also train the layer norms' biases.
        layers: which layers (None: all).
        targets: roles of the projections whose biases train (None: every projection).
    """

    method = "bitfit"
    include_norms: bool = True
    layers: tuple[int, ...] | None = None
    targets: tuple[str, ...] | None = None
    option_values = {"targets": LINEAR_ROLES}
    default_learning_rate = 1e-3
    learning_rate_source = "Ben Zaken et al. 2021 swept {1e-4, 4e-4, 7e-4, 1e-3}; bias-only training tolerates the top"

    def validate(self) -> None:
        bad = [t for t in self.targets or () if t not in LINEAR_ROLES]
        if bad or self.targets == ():
            raise ValueError(f"bitfit: unknown target role(s) {bad or '(none)'}; roles are {', '.join(LINEAR_ROLES)}")


class BitFitAdapter(AdapterMethod):
    """Bias deltas on every projection (and layer-norm bias deltas) of the chosen layers."""

    def __init__(self, config: BitFitConfig, ctx: BindContext):
        super().__init__(config, ctx)
        if ctx.parts.placement.layout == "image":
            self._attach_cnn(config, ctx)
            return
        for layer in select_layers(config.layers, ctx.parts.num_layers, "bitfit"):
            for role in config.targets or LINEAR_ROLES:
                for site in role_sites(ctx.sites, layer, role):
                    self.attach(site, BiasDelta(site.width))
            for role in NORM_ROLES if config.include_norms else ():
                site = ctx.sites.get(f"{layer}.{role}")
                if site is not None and getattr(site.output_module, "bias", None) is not None:
                    self.attach(site, NormDelta(site.output_module, train_gain=False))

    def _attach_cnn(self, config: BitFitConfig, ctx: BindContext) -> None:
        """A CNN's biases: convolutions that have one and (``include_norms``) every BatchNorm's."""
        roles = [role for role, _, _ in ctx.parts.placement.convs]
        for layer in select_layers(config.layers, ctx.parts.num_layers, "bitfit"):
            for role in roles:
                conv, norm = ctx.sites.get(f"{layer}.{role}"), ctx.sites.get(f"{layer}.{norm_role(role)}")
                for site in (conv, norm if config.include_norms else None):
                    if site is not None and getattr(site.output_module, "bias", None) is not None:
                        self.attach(site, BiasDelta(site.width, "image"))
        if not self._sites:
            raise ValueError("bitfit: this CNN's chosen blocks have no bias terms; keep include_norms=True (BatchNorm shifts)")
