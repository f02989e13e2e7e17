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
from torch.utils.checkpoint import checkpoint

from ..routing import features_back, features_last, groups, select, stack_padded
from ..sites import SiteModule


class BiasDelta(SiteModule):
    """``out + Δb``: BitFit's bias training, per adapter. ``layout`` is the site's: on an
    ``image`` site (``(batch, C, H, W)``) ``Δb`` is per channel (a convolution's or a
    BatchNorm's bias)."""

    def __init__(self, features: int, layout: str = "sequence"):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))
        self.layout = layout

    def forward(self, x, out):
        return out + (self.bias[:, None, None] if self.layout == "image" else self.bias)

    def batch_key(self) -> object:
        return self.layout

    @classmethod
    def batched(cls, modules):
        """Per-row biases: ``out + Δb[index]``."""
        first = next(m for m in modules if m is not None)
        bias = stack_padded([m.bias if m else None for m in modules], (first.bias.shape[0],))

        def forward(x, out, index):
            last = features_last(out, first.layout)
            added = groups(last, index, len(modules)) + select(bias, index).unsqueeze(1)
            return features_back(added.reshape(last.shape), first.layout)

        return forward


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

    def _gain_term(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.normalized(x)

    def forward(self, x, out):
        if self.weight is not None:
            if torch.is_grad_enabled():
                # x̂ is recomputed in backward from x, which the frozen norm keeps anyway: storing
                # it would cost one more batch x length x hidden tensor per norm
                out = out + checkpoint(self._gain_term, x, self.weight, use_reentrant=False)
            else:
                out = out + self._gain_term(x, self.weight)
        if self.bias is not None:
            out = out + self.bias
        return out

    @classmethod
    def batched(cls, modules):
        """Per-row gain and bias deltas on one norm: ``out + Δγ[index] ⊙ x̂ + Δβ[index]``."""
        present = [m for m in modules if m is not None]
        features = next(p for m in present for p in (m.weight, m.bias) if p is not None).shape[0]
        gain = [m.weight if m else None for m in modules]
        bias = [m.bias if m else None for m in modules]
        gain = stack_padded(gain, (features,)) if any(g is not None for g in gain) else None
        bias = stack_padded(bias, (features,)) if any(b is not None for b in bias) else None

        def forward(x, out, index):
            n = len(modules)
            result = groups(out, index, n)
            if gain is not None:
                result = result + select(gain, index).unsqueeze(1) * groups(present[0].normalized(x), index, n)
            if bias is not None:
                result = result + select(bias, index).unsqueeze(1)
            return result.reshape(out.shape)

        return forward
