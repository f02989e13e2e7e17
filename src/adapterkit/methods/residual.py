"""Residual adapters for CNNs: one frozen network, a few small modules per visual domain.

**Series** (``residual``; Rebuffi, Bilen & Vedaldi 2017, "Learning multiple visual domains with
residual adapters", arXiv:1705.08045, the residual adapter module of its Sec. 3 and Fig. 2). The
adapter module is a 1x1 convolution with its own skip connection, ``g(x) = x + α * x``, preceded by a BatchNorm,
and the BatchNorm that follows it in the network is domain-specific. After a frozen convolution
whose output is ``x`` (``C`` channels):

    out' = BN_d( x + α * BN_a(x) ),       α: C x C (1x1, no bias)

``BN_a`` starts fresh (γ = 1, β = 0), ``BN_d`` as a copy of the base's BatchNorm (its affine
parameters and running statistics). ``α`` starts at zero, so a fresh adapter *is* the base block
(in eval mode, bit for bit), which the paper's form allows (``α = 0`` gives the identity); the
authors' code (``srebuffi/residual_adapters``) initialises ``α`` like any convolution instead.
By default it sits after each block's last convolution (EfficientNet's ``project``, before the
skip connection: the second convolution of Rebuffi et al.'s residual unit); ``targets`` names
other convolutions of the block (``conv1`` and ``conv2`` of a ResNet unit: the paper's two per unit).

**Parallel** (``residual_parallel``; Rebuffi, Bilen & Vedaldi 2018, "Efficient parametrization
of multi-domain deep neural networks", arXiv:1803.10082, its parallel adapter). The 1x1
adapter runs beside the filter bank, on the same input, and the sum goes through the
domain-specific BatchNorm: ``y = BN_d(W * x + α * x)``. On a block (the site ``<i>.block``:
``x`` the block's input, ``W * x`` its convolutions' output before their last BatchNorm):

    out' = W * x + α *_s x,              α: C_out x C_in (1x1, stride s = the block's stride)

then ``BN_d`` (a copy of the block's last BatchNorm) normalises ``out'``. ``α`` starts at zero.
On an inverted-residual block this is the paper's parallel adapter with the block as the filter
bank: a 1x1 adapter beside each 1x1 convolution would be as large as that convolution.

**Domain-specific BatchNorm** (``domain_norms``, default on): every other BatchNorm of an adapted
block is replaced by the adapter's own copy too, trained with it, as in both papers ("the
BN layers are domain specific"); with it off, the base's BatchNorms (frozen, eval mode) apply.
The adapter's BatchNorms are trained in train mode (batch statistics, their running statistics
updated with ``norm_momentum``; 0.1 as in PyTorch and the authors' code, where EfficientNet's
own 0.01 would leave ImageNet's statistics in place over a short run) and saved with the adapter
(running statistics are buffers: ``methods/base.py``). The base's BatchNorms stay in eval mode
(``AdapterModel.train``).

**Routing.** In eval mode a BatchNorm is a per-channel affine map, so a mixed-domain batch runs
every adapter at a site at once (gathered per-row affine maps and a batched matmul for the 1x1
convolutions). In training mode a BatchNorm normalises with its domain's batch statistics, so
each adapter runs on its own rows (one call per domain present), which is what separate runs
compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..placement import CONV_ROLES, norm_role
from ..registry import MethodConfig
from ..routing import features_back, features_last, row_slots, stack_padded
from ..sites import SiteModule
from .base import AdapterMethod, BindContext, select_layers


@dataclass(frozen=True)
class ResidualConfig(MethodConfig):
    """Args:
        layers: which blocks (None: all).
        targets: the convolution roles of a block after which an adapter sits (None: each
            block's last convolution).
        domain_norms: the other BatchNorms of an adapted block are the adapter's own too.
        norm_momentum: momentum of the adapter's BatchNorms' running statistics.
    """

    method = "residual"
    layers: tuple[int, ...] | None = None
    targets: tuple[str, ...] | None = None
    domain_norms: bool = True
    norm_momentum: float = 0.1
    option_values = {"targets": CONV_ROLES}
    default_learning_rate = 1e-3
    learning_rate_source = "a few fresh parameters on a frozen CNN with AdamW (the papers use SGD at 0.1 for 120 epochs)"

    def validate(self) -> None:
        bad = [t for t in self.targets or () if t not in CONV_ROLES]
        if bad or self.targets == ():
            raise ValueError(f"{self.method}: unknown convolution role(s) {bad or '(none)'}; roles are {', '.join(CONV_ROLES)}")
        if not 0 < self.norm_momentum <= 1:
            raise ValueError(f"{self.method}: norm_momentum must be in (0, 1], got {self.norm_momentum}")


@dataclass(frozen=True)
class ResidualParallelConfig(MethodConfig):
    """Args:
        layers: which blocks (None: all).
        domain_norms: the adapted blocks' BatchNorms are the adapter's own (the last one
            normalises the sum; off: the base's).
        norm_momentum: momentum of the adapter's BatchNorms' running statistics.
    """

    method = "residual_parallel"
    layers: tuple[int, ...] | None = None
    domain_norms: bool = True
    norm_momentum: float = 0.1
    default_learning_rate = 1e-3
    learning_rate_source = ResidualConfig.learning_rate_source

    def validate(self) -> None:
        if not 0 < self.norm_momentum <= 1:
            raise ValueError(f"{self.method}: norm_momentum must be in (0, 1], got {self.norm_momentum}")


def copy_norm(base: nn.Module, momentum: float) -> nn.BatchNorm2d:
    """A BatchNorm with ``base``'s affine parameters and running statistics (a domain's own)."""
    norm = nn.BatchNorm2d(base.num_features, eps=base.eps, momentum=momentum, affine=base.affine)
    norm.load_state_dict(base.state_dict())
    return norm


def frozen_norm(base: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``base`` (a BatchNorm of the frozen model) in eval mode on ``x``."""
    return F.batch_norm(x, base.running_mean, base.running_var, base.weight, base.bias, False, 0.0, base.eps)


def affine_of(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm in eval mode as ``x · scale + shift``, per channel: ``(scale, shift)``."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    return scale, shift if norm.bias is None else shift + norm.bias


def pointwise(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """A 1x1 convolution ``weight (C_out, C_in)`` of ``x (B, C_in, H, W)`` with ``stride``."""
    return F.conv2d(x, weight[:, :, None, None], stride=stride)


class DomainNorm(SiteModule):
    """A domain's own BatchNorm in place of the base's: ``out' = BN_d(x)`` (``x``: the base
    BatchNorm's input). Shapes: ``x, out (B, C, H, W)``."""

    needs_input = True

    def __init__(self, base: nn.Module, momentum: float):
        super().__init__()
        self.norm = copy_norm(base, momentum)

    def forward(self, x, out):
        return self.norm(x)

    def batch_key(self) -> object:
        return self.training

    @classmethod
    def batched(cls, modules):
        """Eval: gathered per-row affine maps. Training: each domain on its rows."""
        return _routed(modules, lambda slots, x, out: _gathered_affine(modules, slots, x, lambda m: m.norm))


class SeriesResidual(SiteModule):
    """``out' = BN_d(x + α * BN_a(x))`` on a BatchNorm site (Rebuffi et al. 2017, Fig. 2); without
    a domain BatchNorm the base's (frozen) one gives ``BN_d``. Shapes: ``x (B, C, H, W)`` (the
    convolution's output), ``α (C, C)``."""

    needs_input = True

    def __init__(self, base: nn.Module, domain_norm: bool, momentum: float):
        super().__init__()
        channels = base.num_features
        self.inner = nn.BatchNorm2d(channels, eps=base.eps, momentum=momentum)
        self.alpha = nn.Parameter(torch.zeros(channels, channels))
        self.norm = copy_norm(base, momentum) if domain_norm else None
        self._base = [base]  # a list so the base BatchNorm is not registered as a submodule

    def outer(self) -> nn.Module:
        return self.norm if self.norm is not None else self._base[0]

    def forward(self, x, out):
        z = x + pointwise(self.inner(x), self.alpha)
        return self.norm(z) if self.norm is not None else frozen_norm(self._base[0], z)

    def batch_key(self) -> object:
        return self.training

    @classmethod
    def batched(cls, modules):
        """Eval: gathered ``BN_a``, one batched matmul for every row's ``α``, gathered ``BN_d``."""
        present = [m for m in modules if m is not None]
        channels = present[0].alpha.shape[0]
        alpha = stack_padded([m.alpha if m else None for m in modules], (channels, channels))

        def eval_form(slots, x, out):
            inner = _gathered_affine(modules, slots, x, lambda m: m.inner)
            z = x + _gathered_pointwise(alpha[slots], inner)
            return _gathered_affine(modules, slots, z, lambda m: m.outer())

        return _routed(modules, eval_form)


class ParallelResidual(SiteModule):
    """``out' = out + α *_s x`` on a block site (Rebuffi et al. 2018's parallel form): ``x (B, C_in, H, W)``
    the block's input, ``out (B, C_out, H/s, W/s)`` its last convolution's output, ``α (C_out,
    C_in)``, ``s`` the block's stride."""

    needs_input = True

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(c_out, c_in))
        self.stride = stride

    def branch(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        y = pointwise(x, self.alpha, self.stride)
        if y.shape != out.shape:
            raise ValueError(
                f"residual_parallel: the block maps {tuple(x.shape)} to {tuple(out.shape)}, which a 1x1 convolution of "
                f"stride {self.stride} does not; adapt blocks whose stride divides their input size"
            )
        return y

    def forward(self, x, out):
        return out + self.branch(x, out)

    def batch_key(self) -> object:
        return self.stride

    @classmethod
    def batched(cls, modules):
        """One batched matmul over the (strided) input for every row's ``α`` (no BatchNorm here,
        so training and eval are one form)."""
        present = [m for m in modules if m is not None]
        c_out, c_in = (max(m.alpha.shape[k] for m in present) for k in (0, 1))
        alpha = stack_padded([m.alpha if m else None for m in modules], (c_out, c_in))
        stride = present[0].stride

        def forward(x, out, index):
            slots = row_slots(index, len(modules), out.shape[0], out.device)
            y = _gathered_pointwise(alpha[slots], x[:, :, ::stride, ::stride])
            return out + y[:, : out.shape[1]]

        return forward


# ----------------------------------------------------------------------------- routing helpers
def _gathered_pointwise(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Row ``r`` of ``x (rows, C_in, H, W)`` through its own 1x1 ``weights[r] (C_out, C_in)``."""
    last = features_last(x, "image")
    y = torch.bmm(last.reshape(x.shape[0], -1, x.shape[1]), weights.transpose(1, 2))
    return features_back(y.reshape(*last.shape[:-1], weights.shape[1]), "image")


def _gathered_affine(modules, slots: torch.Tensor, x: torch.Tensor, norm_of) -> torch.Tensor:
    """Row ``r`` of ``x`` through the eval-mode BatchNorm ``norm_of(modules[slots[r]])`` (identity
    for the no-adapter slot)."""
    channels = x.shape[1]
    pairs = [affine_of(norm_of(m)) if m is not None else None for m in modules]
    ones = x.new_ones(channels)
    scale = torch.stack([p[0] if p else ones for p in pairs] + [ones])
    shift = torch.stack([p[1] if p else torch.zeros_like(ones) for p in pairs] + [torch.zeros_like(ones)])
    return x * scale[slots][:, :, None, None] + shift[slots][:, :, None, None]


def _routed(modules, eval_form):
    """The batched form of modules holding BatchNorms: ``eval_form(slots, x, out)`` for every row
    at once in eval mode (rows without an adapter keep ``out``); in training mode each module on
    its own rows, so its BatchNorm sees its domain's batch statistics alone."""
    n = len(modules)

    def forward(x, out, index):
        slots = row_slots(index, n, out.shape[0], out.device)
        if any(m is not None and m.training for m in modules):
            result = out
            for k, module in enumerate(modules):
                rows = (slots == k).nonzero().squeeze(1)
                if module is not None and rows.numel():
                    result = result.index_copy(0, rows, module(x[rows], out[rows]))
            return result
        unadapted = torch.tensor([s >= n or modules[s] is None for s in slots.tolist()], device=out.device)
        return torch.where(unadapted[:, None, None, None], out, eval_form(slots, x, out))

    return forward


# ----------------------------------------------------------------------------- the adapters
def _block_stride(parts, layer: int) -> int:
    """The stride of block ``layer``: the product of its convolutions' strides."""
    roles = [role for role, _, _ in parts.placement.convs]
    block = parts.layers[layer]
    return math.prod(block.role(r)[0].stride[0] for r in roles if block.has(r))


def _require_cnn(ctx: BindContext, method: str) -> None:
    if ctx.parts.placement.layout != "image":
        raise ValueError(
            f"{method} adapts the convolutions of a CNN; this {ctx.parts.model_type!r} model is a transformer "
            "(use houlsby, pfeiffer or parallel adapters there)"
        )


class ResidualAdapter(AdapterMethod):
    """Series residual adapters (2017) or parallel ones (2018) on the chosen blocks, with the
    blocks' domain-specific BatchNorms."""

    def __init__(self, config: ResidualConfig | ResidualParallelConfig, ctx: BindContext):
        super().__init__(config, ctx)
        _require_cnn(ctx, config.method)
        parts, momentum = ctx.parts, config.norm_momentum
        targets = getattr(config, "targets", None) or (parts.placement.last_role,)
        found: set[str] = set()
        for layer in select_layers(config.layers, parts.num_layers, config.method):
            block = parts.layers[layer]
            roles = [role for role, _, _ in parts.placement.convs if block.has(role)]
            adapted = [t for t in targets if t in roles] if config.method == "residual" else []
            found.update(adapted)
            for role in adapted:
                site = ctx.sites[f"{layer}.{norm_role(role)}"]
                self.attach(site, SeriesResidual(site.output_module, config.domain_norms, momentum))
            if config.method == "residual_parallel":
                site = ctx.sites[f"{layer}.block"]
                c_in = block.role(roles[0])[0].in_channels
                self.attach(site, ParallelResidual(c_in, site.width, _block_stride(parts, layer)))
            for role in roles if config.domain_norms else ():
                if role not in adapted:
                    site = ctx.sites[f"{layer}.{norm_role(role)}"]
                    self.attach(site, DomainNorm(site.output_module, momentum))
        missing = [t for t in targets if t not in found] if config.method == "residual" else []
        if missing:
            roles = [role for role, _, _ in parts.placement.convs]
            raise ValueError(f"residual: no chosen block has the convolution(s) {missing}; this model's roles are {roles}")
