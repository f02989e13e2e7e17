"""Changes of one projection that fold into its weights: the merge lifecycle LoRA (with DoRA) and
IA3 share.

A :class:`MergeableDelta` sits on one ``nn.Linear`` (``y = W x + b``, ``W: d_out x d_in``) and
changes its output in a way that is itself a linear map of ``x``, so it can be *merged*: ``W`` (and
``b`` where the method changes it) replaced by the folded values (:meth:`MergeableDelta.folded`),
which gives the same outputs with no added latency. Merging keeps the original weight and bias as
non-persistent buffers (they follow ``.to()`` and are never saved), and ``unmerge`` copies them
back bit for bit (dividing or subtracting the update again would not restore a half-precision
weight exactly). While an adapter is merged, passes that do not run it compute its projections
from the kept originals (:meth:`MergeableDelta.base_output`; see ``execution.py``), and its own
modules, when a pass runs them unmerged (routed, parallel), read the originals through
:meth:`MergeableDelta.base_weight`. Merge and unmerge are idempotent.
"""

from __future__ import annotations

import torch
from torch import nn

from ..sites import Site, SiteModule, role_sites
from .base import AdapterMethod, BindContext, select_layers


class MergeableDelta(SiteModule):
    """A change of one ``nn.Linear``'s output that can fold itself into that linear.

    Subclasses implement ``forward`` (reading the weight through :meth:`base_weight`, never
    ``linear.weight``) and :meth:`folded`.

    Raises:
        ValueError: ``linear`` is not one of :attr:`adapts` (naming ``method``).
    """

    needs_input = True
    adapts: tuple[type, ...] = (nn.Linear,)
    """The base module types a subclass changes (LoRA on convolutions: ``nn.Conv2d``)."""

    def __init__(self, linear: nn.Module, method: str):
        super().__init__()
        if not isinstance(linear, self.adapts):
            wanted = " or ".join(t.__name__ for t in self.adapts)
            raise ValueError(f"{method}: can only adapt {wanted} modules here, found {type(linear).__name__}")
        self._linear = [linear]  # a list so the base linear is not registered as a submodule
        # the base weight and bias while merged (the bias only when the merge changes it)
        self.register_buffer("_original_weight", None, persistent=False)
        self.register_buffer("_original_bias", None, persistent=False)

    @property
    def linear(self) -> nn.Linear:
        return self._linear[0]

    @property
    def merged(self) -> bool:
        return self._original_weight is not None

    def base_weight(self) -> torch.Tensor:
        """``W`` as it was before this delta was merged: ``(d_out, d_in)``."""
        return self._original_weight if self.merged else self.linear.weight

    def base_bias(self) -> torch.Tensor | None:
        """``b`` as it was before this delta was merged: ``(d_out,)`` or None."""
        return self._original_bias if self._original_bias is not None else self.linear.bias

    def base_output(self, x: torch.Tensor) -> torch.Tensor:
        """The unmerged base projection ``W x + b`` (while merged, from the kept originals, so
        bit-identical to what the base computed before the merge)."""
        return nn.functional.linear(x, self.base_weight(), self.base_bias())

    def folded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The linear's weight and bias with this delta folded in, computed from
        :meth:`base_weight` / :meth:`base_bias` (bias None: the merge leaves it unchanged)."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the delta into the linear, keeping the original weight (and bias) (idempotent)."""
        if self.merged:
            return
        weight, bias = self.folded()
        linear = self.linear
        self._original_weight = linear.weight.detach().clone()
        if bias is not None:
            self._original_bias = linear.bias.detach().clone()
            linear.bias.copy_(bias)
        linear.weight.copy_(weight)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the original weight (and bias) back, bit for bit (idempotent)."""
        if self.merged:
            self.linear.weight.copy_(self._original_weight)
            if self._original_bias is not None:
                self.linear.bias.copy_(self._original_bias)
            self.forget_original()

    def forget_original(self) -> None:
        """Keep the merged weights as the new base weights (``merge_and_unload``)."""
        self._original_weight = self._original_bias = None


def linear_sites(ctx: BindContext, layers: tuple[int, ...] | None, roles: tuple[str, ...], method: str) -> list[Site]:
    """The linear sites playing ``roles`` in the chosen ``layers`` (None: all), in layer order.

    Raises:
        ValueError: a role that no projection of the chosen layers plays.
    """
    sites = [
        site
        for layer in select_layers(layers, ctx.parts.num_layers, method)
        for role in roles
        for site in role_sites(ctx.sites, layer, role)
    ]
    missing = [role for role in roles if role not in {site.role for site in sites}]
    if missing:
        present = sorted({site.role for site in ctx.sites.values() if site.kind == "linear" and site.role})
        raise ValueError(
            f"{method}: no projection plays the role(s) {missing} in the chosen layers of this "
            f"{ctx.parts.model_type!r} model; target roles it has: {', '.join(present)}"
        )
    return sites


class MergeableAdapter(AdapterMethod):
    """An adapter made of :class:`MergeableDelta` modules: merged and unmerged as one."""

    capabilities = frozenset({"merge"})

    def deltas(self) -> list[MergeableDelta]:
        return [m for _, m in self.attachments()]

    @property
    def merged(self) -> bool:
        return any(d.merged for d in self.deltas())

    def merge(self) -> None:
        for delta in self.deltas():
            delta.merge()

    def unmerge(self) -> None:
        for delta in self.deltas():
            delta.unmerge()

    def forget_original(self) -> None:
        for delta in self.deltas():
            delta.forget_original()
