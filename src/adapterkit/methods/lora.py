"""LoRA: low-rank updates of frozen projections (Hu et al. 2021, arXiv:2106.09685).

A targeted linear ``y = W x + b`` (``W: d_out x d_in``) becomes

    y' = W x + b + (α / r) · B A dropout(x),      A: r x d_in,  B: d_out x r

with ``A`` Kaiming-uniform and ``B`` zero, so the adapter is the identity at init (Sec. 4.1).
Because the update is linear it can be *merged*: ``W ← W + (α/r) B A`` gives the same outputs with
no added latency (Sec. 4.2); ``unmerge`` subtracts it again. While merged, the site adds nothing;
merge and unmerge are idempotent. Targets are chosen by role (q, k, v, o, ffn_in, ffn_out), so
the same config works on every architecture with a placement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..placement import LINEAR_ROLES
from ..registry import MethodConfig, register_method
from ..routing import check_same, groups, select, stack_padded
from ..sites import SiteModule, role_sites
from .base import AdapterMethod, select_layers


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

    def validate(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora: r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora: dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LINEAR_ROLES]
        if bad or not self.targets:
            raise ValueError(f"lora: unknown target role(s) {bad or '(none)'}; roles are {', '.join(LINEAR_ROLES)}")


class LoraDelta(SiteModule):
    """``out + (α/r) · B A dropout(x)`` on one linear; can fold itself into that linear."""

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
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x, out):
        if self.merged:
            return out
        return out + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @classmethod
    def batched(cls, modules):
        """Several LoRA deltas on one projection as two gathered ``bmm`` (ranks zero-padded).

        Shapes: ``A (n+1, r, d_in)``, ``B (n+1, d_out, r)``, ``scaling (n+1,)``.
        """
        present = [m for m in modules if m is not None]
        merged = [m for m in present if m.merged]
        if merged:
            raise ValueError(
                "a merged LoRA adapter is folded into the shared base weights and so acts on every row; "
                "unmerge it before routing it per sample or running it in Parallel"
            )
        p = check_same(present, "dropout", lambda m: getattr(m.dropout, "p", 0.0))
        r = max(m.lora_A.shape[0] for m in present)
        d_in, d_out = present[0].lora_A.shape[1], present[0].lora_B.shape[0]
        a = stack_padded([m.lora_A if m else None for m in modules], (r, d_in))
        b = stack_padded([m.lora_B if m else None for m in modules], (d_out, r))
        scale = torch.tensor([m.scaling if m else 0.0 for m in modules] + [0.0], dtype=a.dtype, device=a.device)
        training = any(m.training for m in present)

        def forward(x, out, index):
            x = nn.functional.dropout(x, p, training) if p else x
            low = torch.bmm(groups(x, index, len(modules)), select(a, index).transpose(1, 2))
            y = torch.bmm(low, select(b, index).transpose(1, 2))
            return out + (select(scale, index).view(-1, 1, 1) * y).reshape(out.shape)

        return forward

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            weight = self._linear[0].weight
            weight += self.delta_weight().to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            weight = self._linear[0].weight
            weight -= self.delta_weight().to(weight.dtype)
            self.merged = False


class LoraAdapter(AdapterMethod):
    def __init__(self, config: LoraConfig, parts, sites):
        super().__init__(config, parts, sites)
        for layer in select_layers(config.layers, parts.num_layers, "lora"):
            for role in config.targets:
                for site in role_sites(sites, layer, role):
                    self.attach(site, LoraDelta(site.output_module, config))

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


register_method(LoraConfig, LoraAdapter)
