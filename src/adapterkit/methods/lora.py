"""LoRA: low-rank updates of frozen projections (Hu et al. 2021, arXiv:2106.09685).

A targeted linear ``y = W x + b`` (``W: d_out x d_in``) becomes

    y' = W x + b + (α / r) · B A dropout(x),      A: r x d_in,  B: d_out x r

with ``A`` Kaiming-uniform and ``B`` zero, so the adapter is the identity at init (Sec. 4.1).
Because the update is linear it can be *merged*: ``W ← W + (α/r) B A`` gives the same outputs with
no added latency (Sec. 4.2). Merging keeps the original weights, and ``unmerge`` puts them back
bit for bit (subtracting the update again would not restore a half-precision weight exactly).
While an adapter is merged, passes that do not run it compute its projections from the kept
originals (``base_output``; see ``execution.py``). Merge and unmerge are idempotent. Targets are
chosen by role (q, k, v, o, ffn_in, ffn_out, and cross_q ... cross_o on seq2seq decoders), so the
same config works on every architecture with a placement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..placement import LINEAR_ROLES
from ..registry import MethodConfig
from ..routing import groups, select, stack_padded
from ..sites import SiteModule, role_sites
from .base import AdapterMethod, BindContext, select_layers


@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    """Args:
        r: rank of the update.
        alpha: the update is scaled by ``alpha / r``.
        dropout: dropout on the LoRA branch's input.
        targets: roles of the projections to adapt.
        layers: which layers (None: all).
    """

    method = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    layers: tuple[int, ...] | None = None
    default_learning_rate = 5e-4
    learning_rate_source = "Hu et al. 2021, RoBERTa-base GLUE: 4e-4 to 5e-4 with r = 8, alpha = 16"

    def validate(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora: r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora: dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LINEAR_ROLES]
        if bad or not self.targets:
            raise ValueError(f"lora: unknown target role(s) {bad or '(none)'}; roles are {', '.join(LINEAR_ROLES)}")


class LoraDelta(SiteModule):
    """``out + (α/r) · B A dropout(x)`` on one linear; can fold itself into that linear.

    Shapes: ``x (..., d_in)``, ``out (..., d_out)``, ``A (r, d_in)``, ``B (d_out, r)``.
    """

    needs_input = True

    def __init__(self, linear: nn.Linear, config: LoraConfig):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"lora: can only adapt nn.Linear projections, found {type(linear).__name__}")
        self.lora_A = nn.Parameter(torch.empty(config.r, linear.in_features))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, config.r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = config.alpha / config.r
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self._linear = [linear]  # a list so the base linear is not registered as a submodule
        # the base weight while merged: a non-persistent buffer follows .to() and is never saved
        self.register_buffer("_original", None, persistent=False)

    @property
    def merged(self) -> bool:
        return self._original is not None

    def delta_weight(self) -> torch.Tensor:
        """``(α/r) B A``: ``(d_out, d_in)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x, out):
        return out + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def base_output(self, x: torch.Tensor) -> torch.Tensor:
        """The unmerged base projection ``W x + b`` while merged (from the kept original weight,
        so bit-identical to what the base computed before the merge)."""
        linear = self._linear[0]
        return nn.functional.linear(x, self._original if self.merged else linear.weight, linear.bias)

    def batch_key(self) -> object:
        return getattr(self.dropout, "p", 0.0) if self.training else 0.0

    @classmethod
    def batched(cls, modules):
        """Several LoRA deltas on one projection as two gathered ``bmm`` (ranks zero-padded); all
        share one dropout rate in training (:meth:`batch_key`).

        Shapes: ``A (n+1, r, d_in)``, ``B (n+1, d_out, r)``, ``scaling (n+1,)``.
        """
        present = [m for m in modules if m is not None]
        training = any(m.training for m in present)
        p = getattr(present[0].dropout, "p", 0.0) if training else 0.0
        r = max(m.lora_A.shape[0] for m in present)
        d_in, d_out = present[0].lora_A.shape[1], present[0].lora_B.shape[0]
        a = stack_padded([m.lora_A if m else None for m in modules], (r, d_in))
        b = stack_padded([m.lora_B if m else None for m in modules], (d_out, r))
        scale = torch.tensor([m.scaling if m else 0.0 for m in modules] + [0.0], dtype=a.dtype, device=a.device)

        def forward(x, out, index):
            x = nn.functional.dropout(x, p, training) if p else x
            low = torch.bmm(groups(x, index, len(modules)), select(a, index).transpose(1, 2))
            y = torch.bmm(low, select(b, index).transpose(1, 2))
            return out + (select(scale, index).view(-1, 1, 1) * y).reshape(out.shape)

        return forward

    @torch.no_grad()
    def merge(self) -> None:
        """``W ← W + (α/r) B A``, keeping the original ``W`` (idempotent)."""
        if not self.merged:
            weight = self._linear[0].weight
            self._original = weight.detach().clone()
            weight += self.delta_weight().to(weight.dtype)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the original ``W`` back, bit for bit (idempotent)."""
        if self.merged:
            self._linear[0].weight.copy_(self._original)
            self._original = None

    def forget_original(self) -> None:
        """Keep the merged weight as the new base weight (``merge_and_unload``)."""
        self._original = None


class LoraAdapter(AdapterMethod):
    """LoRA deltas on every targeted projection of the chosen layers."""

    capabilities = frozenset({"merge"})

    def __init__(self, config: LoraConfig, ctx: BindContext):
        super().__init__(config, ctx)
        for layer in select_layers(config.layers, ctx.parts.num_layers, "lora"):
            for role in config.targets:
                for site in role_sites(ctx.sites, layer, role):
                    self.attach(site, LoraDelta(site.output_module, config))
        found = {site.role for site, _ in self.attachments()}
        missing = [role for role in config.targets if role not in found]
        if missing:
            raise ValueError(
                f"lora: no projection plays the role(s) {missing} in the chosen layers of this "
                f"{ctx.parts.model_type!r} model; target roles it has, e.g. q, k, v, o, ffn_in, ffn_out"
            )

    def deltas(self) -> list[LoraDelta]:
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
