"""Bottleneck adapters: Houlsby, Pfeiffer, parallel and scaled parallel (the "unified view").

A bottleneck adapter is a down-projection to ``m`` dimensions, a non-linearity and an
up-projection back to the hidden size ``d``:

    A(z) = W_up f(W_down z + b_down) + b_up,      W_down: m x d,  W_up: d x m

It adds ``2dm + d + m`` parameters. The variants differ in where ``z`` comes from and how the
result is added (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
Learning", Sec. 3):

* sequential (Houlsby et al. 2019; Pfeiffer et al. 2021): ``h' = h + A(h)`` on the output ``h``
  of a sublayer's last projection, before the residual add and layer norm. Houlsby puts one
  after attention and one after the FFN and trains the layer norms; Pfeiffer keeps only the FFN
  one (found as good at half the cost in the AdapterFusion paper).
* parallel: ``h' = h + s * A(x)`` with ``x`` the sublayer's input, so the adapter runs beside the
  sublayer instead of after it; ``scaled_parallel`` uses ``s = 4``, which He et al. found better
  than ``s = 1`` on the FFN.

``W_down`` starts as N(0, init_scale²) and ``W_up`` at zero, so every variant is exactly the
identity at init (the near-identity initialisation Houlsby et al. ask for, made exact) while
``W_up`` still receives gradient on the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..placement import SUBLAYERS
from ..registry import MethodConfig
from ..routing import groups, select, stack_padded
from ..sites import SiteModule
from .base import AdapterMethod, BindContext, select_layers
from .deltas import NormDelta

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "swish": nn.SiLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class BottleneckConfig(MethodConfig):
    """Options shared by the bottleneck family.

    Args:
        sublayers: which sublayers get an adapter: ``attn``, ``ffn``, ``cross_attn`` (seq2seq
            decoders; layers without one are skipped).
        parallel: read the sublayer input (parallel) instead of its output (sequential).
        bottleneck_size: ``m``; if None, ``hidden_size // reduction_factor``.
        reduction_factor: ``d / m`` when ``bottleneck_size`` is not given.
        non_linearity: relu, gelu, silu/swish or tanh.
        init_scale: standard deviation of the down-projection at init.
        scaling: the factor ``s`` on the adapter output, or ``"learned"`` (a trained scalar from 1).
        train_layer_norms: give the adapter its own (delta) layer norms of the adapted sublayers.
        layers: which layers get adapters (None: all).
    """

    sublayers: tuple[str, ...] = ("ffn",)
    parallel: bool = False
    bottleneck_size: int | None = None
    reduction_factor: float = 16.0
    non_linearity: str = "relu"
    init_scale: float = 1e-2
    scaling: float | str = 1.0
    train_layer_norms: bool = False
    layers: tuple[int, ...] | None = None

    default_learning_rate = 1e-3
    learning_rate_source = (
        "Houlsby et al. 2019 swept {3e-5, 3e-4, 3e-3}; AdapterHub trains bottleneck adapters at 1e-4 for "
        "10-30 epochs. With 1-3 epochs, 1e-3 converges where 1e-4 is still far from it"
    )

    def validate(self) -> None:
        bad = [s for s in self.sublayers if s not in SUBLAYERS]
        if bad or not self.sublayers:
            raise ValueError(
                f"{self.method}: sublayers must be a non-empty subset of {tuple(SUBLAYERS)}, got {self.sublayers}"
            )
        if self.non_linearity not in ACTIVATIONS:
            raise ValueError(f"{self.method}: unknown non_linearity {self.non_linearity!r}; use one of {sorted(ACTIVATIONS)}")
        if self.bottleneck_size is not None and self.bottleneck_size < 1:
            raise ValueError(f"{self.method}: bottleneck_size must be >= 1, got {self.bottleneck_size}")
        if self.reduction_factor <= 0:
            raise ValueError(f"{self.method}: reduction_factor must be > 0, got {self.reduction_factor}")
        if isinstance(self.scaling, str) and self.scaling != "learned":
            raise ValueError(f"{self.method}: scaling must be a number or 'learned', got {self.scaling!r}")

    def size_for(self, hidden_size: int) -> int:
        size = self.bottleneck_size or max(1, int(hidden_size // self.reduction_factor))
        if size > hidden_size:
            raise ValueError(
                f"{self.method}: bottleneck_size {size} is larger than the hidden size {hidden_size}; "
                f"a bottleneck must be narrower than the model (try {max(1, hidden_size // 16)})"
            )
        return size


@dataclass(frozen=True)
class HoulsbyConfig(BottleneckConfig):
    method = "houlsby"
    sublayers: tuple[str, ...] = ("attn", "ffn")
    train_layer_norms: bool = True


@dataclass(frozen=True)
class PfeifferConfig(BottleneckConfig):
    method = "pfeiffer"


@dataclass(frozen=True)
class ParallelConfig(BottleneckConfig):
    method = "parallel"
    parallel: bool = True


@dataclass(frozen=True)
class ScaledParallelConfig(BottleneckConfig):
    method = "scaled_parallel"
    parallel: bool = True
    scaling: float | str = 4.0
    default_learning_rate = 5e-4
    learning_rate_source = "s = 4 multiplies the adapter's output (and so its effective step) by four: half the bottleneck rate"


class Bottleneck(SiteModule):
    """``out + s * up(f(down(z)))`` with ``z`` the site output (sequential) or input (parallel).

    Shapes: ``x, out: (batch, seq, d)``; ``down: d -> m``; ``up: m -> d``.
    """

    def __init__(self, hidden_size: int, size: int, config: BottleneckConfig):
        super().__init__()
        self.needs_input = config.parallel
        self.down = nn.Linear(hidden_size, size)
        self.activation = ACTIVATIONS[config.non_linearity]()
        self.up = nn.Linear(size, hidden_size)
        nn.init.normal_(self.down.weight, std=config.init_scale)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        if config.scaling == "learned":
            self.scaling = nn.Parameter(torch.ones(()))
        else:
            self.register_buffer("scaling", torch.tensor(float(config.scaling)), persistent=False)

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """``A(z) = up(f(down(z)))``: the adapter's contribution before scaling."""
        return self.up(self.activation(self.down(z)))

    def forward(self, x, out):
        return out + self.scaling * self.residual(x if self.needs_input else out)

    def batch_key(self) -> object:
        return type(self.activation)

    @classmethod
    def batched(cls, modules):
        """Several bottlenecks at one site as one gathered ``baddbmm`` pair (see ``routing.py``).

        Widths are zero-padded to the largest ``m``; sequential and parallel adapters may mix (each
        row reads ``out`` or ``x``); all share one non-linearity (:meth:`batch_key`). Shapes:
        ``W_down (n+1, m, d)``, ``W_up (n+1, d, m)``.
        """
        present = [m for m in modules if m is not None]
        activation = type(present[0].activation)
        d = present[0].down.in_features
        m = max(module.down.out_features for module in present)
        w_down = stack_padded([a.down.weight if a else None for a in modules], (m, d))
        b_down = stack_padded([a.down.bias if a else None for a in modules], (m,))
        w_up = stack_padded([a.up.weight if a else None for a in modules], (d, m))
        b_up = stack_padded([a.up.bias if a else None for a in modules], (d,))
        scale = stack_padded([a.scaling.reshape(()) if a else None for a in modules], ())
        reads_input = [bool(a is not None and a.needs_input) for a in modules] + [False]
        act = activation()

        def forward(x, out, index):
            # identity slots give zero whatever they read, so only the present modules decide
            if x is None or not any(reads_input):
                z = out
            elif all(a.needs_input for a in present):
                z = x
            else:
                rows = torch.tensor(reads_input, device=out.device)
                rows = rows[:-1].repeat_interleave(out.shape[0] // len(modules)) if index is None else rows[index]
                z = torch.where(rows.view(-1, *([1] * (out.dim() - 1))), x, out)
            hidden = torch.baddbmm(
                select(b_down, index).unsqueeze(1), groups(z, index, len(modules)), select(w_down, index).transpose(1, 2)
            )
            y = torch.baddbmm(select(b_up, index).unsqueeze(1), act(hidden), select(w_up, index).transpose(1, 2))
            return out + (select(scale, index).view(-1, 1, 1) * y).reshape(out.shape)

        return forward


class BottleneckAdapter(AdapterMethod):
    """One bottleneck per chosen sublayer of the chosen layers (and, with ``train_layer_norms``,
    a delta of that sublayer's layer norm)."""

    capabilities = frozenset({"fuse"})

    def __init__(self, config: BottleneckConfig, ctx: BindContext):
        super().__init__(config, ctx)
        parts, sites = ctx.parts, ctx.sites
        size = config.size_for(parts.hidden_size)
        for layer in select_layers(config.layers, parts.num_layers, config.method):
            for sublayer in config.sublayers:
                site = sites.get(f"{layer}.{sublayer}")
                if site is None:  # a sublayer only some layers have (cross-attention)
                    continue
                self.attach(site, Bottleneck(site.width, size, config))
                norm_site = sites.get(f"{layer}.{SUBLAYERS[sublayer][2]}")
                if config.train_layer_norms and norm_site is not None:
                    self.attach(norm_site, NormDelta(norm_site.output_module))
        if not self._sites:
            raise ValueError(f"{config.method}: no layer of this model has the sublayers {config.sublayers}")
