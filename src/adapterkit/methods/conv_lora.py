"""LoRA on convolutions: a low-rank update of a frozen ``nn.Conv2d`` (Hu et al. 2021,
arXiv:2106.09685, Sec. 4.1, applied to a convolution's weight as peft's ``Conv2d`` LoRA does).

A convolution ``y = W * x + b`` (``W: C_out x C_in x k x k``) becomes

    y' = W * x + b + s · B * (A * dropout(x)),     A: r x C_in x k x k,  B: C_out x r x 1 x 1

with ``A`` the same stride, padding and dilation as ``W`` (Kaiming-uniform) and ``B`` a 1x1
convolution (zero), so a fresh adapter is the identity. ``B * A`` is the convolution with kernel
``ΔW[o, i] = Σ_r B[o, r] A[r, i]``, which folds into ``W`` (merge, Sec. 4.2). Grouped (depthwise)
convolutions are refused: a full-rank-across-channels update does not fold into a grouped weight.
A convolution that pads in its own forward (EfficientNet's static "same" padding, its
``static_padding`` module) is padded the same way here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..routing import features_back, row_slots, stack_padded
from .merging import MergeableDelta


def padded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``conv`` sees it before its ``F.conv2d`` (its own "same" padding applied)."""
    pad = getattr(conv, "static_padding", None)
    return x if pad is None else pad(x)


class ConvLoraDelta(MergeableDelta):
    """``out + s · B * (A * dropout(x))`` on one convolution. Shapes: ``x (B, C_in, H, W)``,
    ``out (B, C_out, H', W')``, ``lora_A (r, C_in, k, k)``, ``lora_B (C_out, r)``.

    Raises:
        ValueError: a grouped convolution, or DoRA (not defined here for convolutions).
    """

    adapts = (nn.Conv2d,)

    def __init__(self, conv: nn.Module, config):
        super().__init__(conv, "lora")
        if conv.groups != 1:
            raise ValueError(
                f"lora: a grouped convolution (groups={conv.groups}, e.g. depthwise) cannot take a LoRA update that folds "
                "into its weight; target the block's pointwise convolutions (expand, project) instead"
            )
        if config.use_dora:
            raise ValueError("lora: use_dora is defined for linear projections only; drop it to adapt convolutions")
        self.lora_A = nn.Parameter(torch.empty(config.r, conv.in_channels, *conv.kernel_size))
        self.lora_B = nn.Parameter(torch.zeros(conv.out_channels, config.r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = config.scaling
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        self.magnitude = None

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        c = self.linear
        return F.conv2d(padded(c, x), weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def delta_weight(self) -> torch.Tensor:
        """``s ΔW``: ``(C_out, C_in, k, k)``."""
        return torch.einsum("or,rikl->oikl", self.lora_B, self.lora_A) * self.scaling

    def forward(self, x, out):
        low = self._conv(self.dropout(x), self.lora_A)
        return out + pointwise_up(low, self.lora_B) * self.scaling

    def base_output(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.base_weight(), self.base_bias())

    def folded(self):
        weight = self.base_weight()
        return weight + self.delta_weight().to(weight.dtype), None

    def batch_key(self) -> object:
        return getattr(self.dropout, "p", 0.0) if self.training else 0.0

    @classmethod
    def batched(cls, modules):
        """Several conv LoRA deltas on one convolution as two gathered ``bmm`` over its unfolded
        input patches (``F.unfold``: ``(rows, C_in k k, H' W')``), ranks zero-padded."""
        present = [m for m in modules if m is not None]
        first = present[0]
        r = max(m.lora_A.shape[0] for m in present)
        shape_a = first.lora_A.shape[1:]
        a = stack_padded([m.lora_A if m else None for m in modules], (r, *shape_a)).flatten(2)
        b = stack_padded([m.lora_B if m else None for m in modules], (first.lora_B.shape[0], r))
        scale = torch.tensor([m.scaling if m else 0.0 for m in modules] + [0.0], dtype=a.dtype, device=a.device)
        p = first.batch_key()
        conv = first.linear

        def forward(x, out, index):
            slots = row_slots(index, len(modules), out.shape[0], out.device)
            dropped = F.dropout(x, p, True) if p else x
            patches = F.unfold(padded(conv, dropped), conv.kernel_size, conv.dilation, conv.padding, conv.stride)
            low = torch.bmm(patches.transpose(1, 2), a[slots].transpose(1, 2))  # (rows, H'W', r)
            y = torch.bmm(low, b[slots].transpose(1, 2)) * scale[slots].view(-1, 1, 1)  # (rows, H'W', C_out)
            return out + features_back(y.reshape(out.shape[0], out.shape[2], out.shape[3], -1), "image")

        return forward


def pointwise_up(low: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """LoRA's ``B`` as a 1x1 convolution: ``low (B, r, H, W)``, ``weight (C_out, r)``."""
    return F.conv2d(low, weight[:, :, None, None])
