"""LoRA: low-rank updates of frozen projections (Hu et al. 2021, arXiv:2106.09685).

A targeted linear ``y = W x + b`` (``W: d_out x d_in``) becomes

    y' = W x + b + (α / r) · B A dropout(x),      A: r x d_in,  B: d_out x r

with ``A`` Kaiming-uniform and ``B`` zero, so the adapter is the identity at init (Sec. 4.1).
Because the update is linear it can be *merged*: ``W ← W + (α/r) B A`` gives the same outputs with
no added latency (Sec. 4.2); see ``merging.py`` for the merge lifecycle (originals kept, unmerge
bit for bit). Targets are chosen by role (q, k, v, o, ffn_in, ffn_out, and cross_q ... cross_o on
seq2seq decoders), so the same config works on every architecture with a placement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..placement import LINEAR_ROLES
from ..registry import MethodConfig
from ..routing import groups, select, stack_padded
from .base import BindContext
from .merging import MergeableAdapter, MergeableDelta, linear_sites


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


class LoraDelta(MergeableDelta):
    """``out + (α/r) · B A dropout(x)`` on one linear; can fold itself into that linear.

    Shapes: ``x (..., d_in)``, ``out (..., d_out)``, ``A (r, d_in)``, ``B (d_out, r)``.
    """

    def __init__(self, linear: nn.Module, config: LoraConfig):
        super().__init__(linear, "lora")
        self.lora_A = nn.Parameter(torch.empty(config.r, linear.in_features))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, config.r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = config.alpha / config.r
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """``(α/r) B A``: ``(d_out, d_in)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x, out):
        return out + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

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

    def folded(self):
        """``W + (α/r) B A``; the bias unchanged."""
        weight = self.base_weight()
        return weight + self.delta_weight().to(weight.dtype), None


class LoraAdapter(MergeableAdapter):
    """LoRA deltas on every targeted projection of the chosen layers."""

    def __init__(self, config: LoraConfig, ctx: BindContext):
        super().__init__(config, ctx)
        for site in linear_sites(ctx, config.layers, config.targets, "lora"):
            self.attach(site, LoraDelta(site.output_module, config))
