"""Additive deltas on base parameters, kept outside the base model.

Training a base bias or a layer norm's gain in place would change the shared frozen model and
every other adapter with it. Instead an adapter holds *deltas*:

    Linear:    y' = W x + (b + Δb)             = y + Δb
    LayerNorm: y' = (γ + Δγ) x̂ + (β + Δβ)     = y + Δγ ⊙ x̂ + Δβ,   x̂ = (x - μ) / σ
    RMSNorm:   y' = (γ + Δγ) x̂                = y + Δγ ⊙ x̂,        x̂ = x / rms(x)

All deltas start at zero, so the adapted model is exactly the base model at init, and training
the delta is the same optimisation problem as training the parameter itself (the gradient of the
loss w.r.t. Δ equals that w.r.t. the parameter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..sites import SiteModule


class BiasDelta(SiteModule):
    """``out + Δb``: BitFit's bias training, per adapter."""

    def __init__(self, features: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x, out):
        return out + self.bias


class NormDelta(SiteModule):
    """Per-adapter gain (and bias) of a LayerNorm or RMSNorm, as deltas on the frozen norm."""

    needs_input = True

    def __init__(self, norm: nn.Module, train_gain: bool = True):
        super().__init__()
        weight = norm.weight
        self.rms = not isinstance(norm, nn.LayerNorm)
        self.eps = float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6))
        self.weight = nn.Parameter(torch.zeros_like(weight)) if train_gain else None
        has_bias = getattr(norm, "bias", None) is not None
        self.bias = nn.Parameter(torch.zeros_like(weight)) if has_bias else None

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            x32 = x.float()
            return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)

    def forward(self, x, out):
        if self.weight is not None:
            out = out + self.weight * self.normalized(x)
        if self.bias is not None:
            out = out + self.bias
        return out
