"""LoRA: low-rank updates of frozen projections (Hu et al. 2021, arXiv:2106.09685), with the
rsLoRA scaling and DoRA's weight decomposition as options.

A targeted linear ``y = W x + b`` (``W: d_out x d_in``) becomes

    y' = W x + b + s · B A dropout(x),      A: r x d_in,  B: d_out x r,  s = α / r

with ``A`` Kaiming-uniform and ``B`` zero, so the adapter is the identity at init (Sec. 4.1).
Because the update is linear it can be *merged*: ``W ← W + s B A`` gives the same outputs with no
added latency (Sec. 4.2); see ``merging.py`` for the merge lifecycle (originals kept, unmerge bit
for bit). Targets are chosen by role (q, k, v, o, ffn_in, ffn_out, and cross_q ... cross_o on
seq2seq decoders), so the same config works on every architecture with a placement; on a CNN
the roles are its convolutions' (``expand``, ``project``, ``conv1``, ...) and the deltas are
``conv_lora.ConvLoraDelta``.

**rsLoRA** (``use_rslora``; Kalajdzievski 2023, arXiv:2312.03732, Theorem 3.2): ``s = α / √r``,
which keeps the update's scale stable as the rank grows (peft's ``use_rslora``).

**DoRA** (``use_dora``; Liu et al. 2024, arXiv:2402.09353, Eq. 5) splits the adapted weight into a
learned magnitude ``m`` (``d_out``) and a direction:

    W' = m ⊙ (W + s B A) / ‖W + s B A‖_c

where ``‖·‖_c`` is the norm of each output feature's weights over the ``d_in`` inputs (the paper's
column-wise norm of its ``d x k`` matrix, which multiplies from the right; ``dim=1`` of
``nn.Linear``'s ``d_out x d_in`` weight, as peft computes it). ``m`` starts at ``‖W‖_c``, so a fresh
DoRA adapter is the identity. The forward pass computes, with ``g = m / ‖W + s B A‖_c``,

    y' = y + (g − 1) ⊙ (W x) + g ⊙ s B A x

where ``W x = y − b`` (with dropout active in training, ``W dropout(x)``, recomputed), exactly as
peft 0.21 does. As the paper suggests for memory (Sec. 4.3) and as peft does, the norm is
treated as a constant: it is detached from the graph, so ``m`` and ``B A`` get no gradient through
it. DoRA merges too (``W ← g ⊙ (W + s B A)``, the bias unchanged) and has a gathered batched form
(each row's ``g`` and ``B A`` gathered; a plain LoRA at the same site has ``g = 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..placement import CONV_ROLES, LINEAR_ROLES
from ..registry import MethodConfig
from ..routing import groups, select, stack_padded
from .base import BindContext
from .conv_lora import ConvLoraDelta
from .merging import MergeableAdapter, MergeableDelta, linear_sites


@dataclass(frozen=True)
class LoraConfig(MethodConfig):
    """Args:
        r: rank of the update.
        alpha: the update is scaled by ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout on the LoRA branch's input.
        targets: roles of the projections to adapt.
        layers: which layers (None: all).
        use_rslora: rsLoRA's scaling ``alpha / sqrt(r)`` (Kalajdzievski 2023; peft's name).
        use_dora: DoRA's magnitude and direction (Liu et al. 2024, Eq. 5; peft's name).
    """

    method = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    layers: tuple[int, ...] | None = None
    use_rslora: bool = False
    use_dora: bool = False
    option_values = {"targets": LINEAR_ROLES + CONV_ROLES}
    default_learning_rate = 5e-4
    learning_rate_source = "Hu et al. 2021, RoBERTa-base GLUE: 4e-4 to 5e-4 with r = 8, alpha = 16"

    def validate(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora: r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora: dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LINEAR_ROLES + CONV_ROLES]
        if bad or not self.targets:
            raise ValueError(
                f"lora: unknown target role(s) {bad or '(none)'}; roles are {', '.join(LINEAR_ROLES)} "
                f"(convolutions of a CNN: {', '.join(CONV_ROLES)})"
            )

    @property
    def scaling(self) -> float:
        """``s``: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def column_norm(weight: torch.Tensor) -> torch.Tensor:
    """DoRA's ``‖W‖_c`` of an ``nn.Linear`` weight ``(d_out, d_in)``: one norm per output feature."""
    return torch.linalg.norm(weight, dim=1)


class LoraDelta(MergeableDelta):
    """``out + s · B A dropout(x)`` on one linear (DoRA: see the module docstring).

    Shapes: ``x (..., d_in)``, ``out (..., d_out)``, ``A (r, d_in)``, ``B (d_out, r)``, DoRA's
    ``magnitude (d_out,)``.
    """

    def __init__(self, linear: nn.Module, config: LoraConfig):
        super().__init__(linear, "lora")
        self.lora_A = nn.Parameter(torch.empty(config.r, linear.in_features))
        self.lora_B = nn.Parameter(torch.zeros(linear.out_features, config.r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.magnitude = nn.Parameter(column_norm(linear.weight.detach())) if config.use_dora else None
        self.reads_base_weight = config.use_dora

    def delta_weight(self) -> torch.Tensor:
        """``s B A``: ``(d_out, d_in)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def dora_factor(self) -> torch.Tensor:
        """DoRA's ``g = m / ‖W + s B A‖_c`` (``(d_out,)``), the norm detached (Sec. 4.3)."""
        weight = self.base_weight()
        norm = column_norm(weight + self.delta_weight().detach().to(weight.dtype)).detach()
        return self.magnitude / norm

    def forward(self, x, out):
        dropped = self.dropout(x)
        update = (dropped @ self.lora_A.T @ self.lora_B.T) * self.scaling
        if self.magnitude is None:
            return out + update
        g = self.dora_factor().to(out.dtype)
        return out + (g - 1) * self._base_term(out, dropped if self._dropping() else None) + g * update

    def _dropping(self) -> bool:
        return self.training and getattr(self.dropout, "p", 0.0) > 0

    def _base_term(self, out: torch.Tensor, dropped: torch.Tensor | None) -> torch.Tensor:
        """DoRA's ``W x``: the projection's output ``out`` less its bias or, while dropout acts,
        ``W dropout(x)`` from the ``dropped`` input (as peft)."""
        if dropped is not None:
            return nn.functional.linear(dropped, self.base_weight())
        bias = self.base_bias()
        return out if bias is None else out - bias

    def batch_key(self) -> object:
        return getattr(self.dropout, "p", 0.0) if self._dropping() else 0.0

    @classmethod
    def batched(cls, modules):
        """Several LoRA (and DoRA) deltas on one projection as two gathered ``bmm`` (ranks
        zero-padded) and, when a DoRA is among them, one gathered ``g`` (1 for plain LoRA and
        for rows without an adapter); all share one dropout rate in training (:meth:`batch_key`).

        Shapes: ``A (n+1, r, d_in)``, ``B (n+1, d_out, r)``, ``scaling (n+1,)``, ``g (n+1, d_out)``.
        """
        present = [m for m in modules if m is not None]
        first = present[0]
        training = any(m.training for m in present)
        p = getattr(first.dropout, "p", 0.0) if training else 0.0
        r = max(m.lora_A.shape[0] for m in present)
        d_in, d_out = first.lora_A.shape[1], first.lora_B.shape[0]
        a = stack_padded([m.lora_A if m else None for m in modules], (r, d_in))
        b = stack_padded([m.lora_B if m else None for m in modules], (d_out, r))
        scale = torch.tensor([m.scaling if m else 0.0 for m in modules] + [0.0], dtype=a.dtype, device=a.device)
        dora = any(m.magnitude is not None for m in present)
        if dora:
            ones = a.new_ones(d_out)
            factors = [m.dora_factor() if m is not None and m.magnitude is not None else ones for m in modules]
            g = torch.stack([*factors, ones])

        def forward(x, out, index):
            n = len(modules)
            dropped = nn.functional.dropout(x, p, training) if p else x
            low = torch.bmm(groups(dropped, index, n), select(a, index).transpose(1, 2))
            y = select(scale, index).view(-1, 1, 1) * torch.bmm(low, select(b, index).transpose(1, 2))
            if not dora:
                return out + y.reshape(out.shape)
            rows = select(g, index).to(out.dtype)[:, None, :]
            base = groups(first._base_term(out, dropped if p else None), index, n)
            return out + ((rows - 1) * base + rows * y).reshape(out.shape)

        return forward

    def folded(self):
        """LoRA: ``W + s B A``; DoRA: ``g ⊙ (W + s B A)`` (rows scaled); the bias unchanged."""
        weight = self.base_weight()
        combined = weight + self.delta_weight().to(weight.dtype)
        if self.magnitude is None:
            return combined, None
        return (self.dora_factor()[:, None] * combined).to(weight.dtype), None


class LoraAdapter(MergeableAdapter):
    """LoRA (or DoRA) deltas on every targeted projection of the chosen layers."""

    def __init__(self, config: LoraConfig, ctx: BindContext):
        super().__init__(config, ctx)
        for site in linear_sites(ctx, config.layers, config.targets, "lora"):
            delta = ConvLoraDelta if isinstance(site.output_module, nn.Conv2d) else LoraDelta
            self.attach(site, delta(site.output_module, config))
