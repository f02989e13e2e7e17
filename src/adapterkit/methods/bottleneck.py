"""Bottleneck adapters: Houlsby, Pfeiffer, parallel and scaled parallel (the "unified view").

A bottleneck adapter is a down-projection to ``m`` dimensions, a non-linearity and an
up-projection back to the hidden size ``d``:

    A(z) = W_up f(W_down z + b_down) + b_up,      W_down: m x d,  W_up: d x m

It adds ``2dm + d + m`` parameters. The variants differ in where ``z`` comes from and how the
result is added (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
Learning", Sec. 3). With ``x`` a sublayer's residual input and ``h`` its output after its output
dropout, a post-LN layer computes ``LN(x + h)``, and an adapter changes ``h`` to ``h'``:

* sequential, Houlsby et al. 2019 (Sec. 2.1, Fig. 2): ``h' = h + A(h)``, so the layer computes
  ``LN(x + h + A(h))``; one adapter after attention and one after the FFN, and the layer norms
  train. ``pfeiffer`` with ``original_ln_before=False`` is the FFN adapter of this form alone.
* Pfeiffer et al. 2020, the adapter of AdapterFusion (arXiv:2005.00247, Fig. 2; its architecture
  search keeps only the FFN adapter) and of MAD-X (arXiv:2005.00052, Eq. 1: the adapter reads
  ``h_l``, the output of the layer norm after the FFN, and adds the residual ``r_l``, the FFN's
  output): ``h' = h + A(LN(x + h))``, so the layer computes ``LN(x + h + A(LN(x + h)))``, the
  sublayer's own frozen norm applied twice, no new parameters. This is ``original_ln_before=True``
  (AdapterHub's name; its default ``seq_bn``, with ``residual_before_ln: True``: the skip around
  the adapter is ``h``), the default of ``pfeiffer``. Pre-LN models (Llama) have no norm after
  the residual add; there the adapter reads ``x + h`` (``h' = h + A(x + h)``, the layer adds
  ``x``), as AdapterHub does (its Llama layers pass no norm to ``BottleneckLayer``, whose
  ``pre_forward`` then only adds the residual). A ``Stack`` of such adapters runs each in turn,
  each reading ``LN(x + its input)``; MAD-X's stacked task adapter instead reads the language
  adapter's output directly and adds the same ``r_l`` (its task-adapter equation), which is not
  reproduced here.
* parallel (He et al. 2022, Sec. 3): ``h' = h + s * A(x_in)`` with ``x_in`` the sublayer's input
  (what its first projection reads), so the adapter runs beside the sublayer instead of after
  it; ``scaled_parallel`` uses ``s = 4``, which He et al. found better than ``s = 1`` on the FFN.
  On pre-LN models ``x_in`` is the normalised ``LN(x)`` the sublayer reads; AdapterHub's
  ``par_bn`` reads the residual input ``x`` there (on post-LN models the two are one tensor).

Every variant acts on ``h`` after the sublayer's output dropout (the ``sublayer`` site, see
``sites.py``), so in training the base's dropout never drops the adapter's output: Houlsby et
al.'s code (adapter-bert ``modeling.py``) applies the adapter to ``dropout(dense(...))`` before
the Add & Norm, and AdapterHub's ``seq_bn``, ``double_seq_bn`` and ``par_bn`` all act on
``hidden_states`` after ``self.dropout`` (``BertOutputWithAdapters``; ``ParallelAdapter.post_forward``
adds ``s * A(x)`` to it). Families without a dropout module there (Llama has no dropout, BART a
functional one) put the adapter on the last projection's output.

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
from .base import AdapterMethod, BindContext, require_transformer, select_layers
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
        original_ln_before: a sequential adapter reads the output of the sublayer's Add & Norm,
            ``LN(x + h)``, computed with the sublayer's own frozen norm (``x + h`` on pre-LN
            models), instead of ``h`` (Pfeiffer et al. 2020; see the module docstring).

    Raises:
        ValueError: an unknown sublayer or non-linearity, a size or factor out of range, or
            ``original_ln_before`` with ``parallel``.
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
    original_ln_before: bool = False

    option_values = {"sublayers": tuple(SUBLAYERS), "non_linearity": tuple(ACTIVATIONS)}
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
        if self.original_ln_before and self.parallel:
            raise ValueError(
                f"{self.method}: original_ln_before makes a sequential adapter read the sublayer's Add & Norm output, "
                "but a parallel adapter reads the sublayer input; set original_ln_before=False or parallel=False"
            )

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
    """Houlsby et al. 2019: a sequential adapter after attention and after the FFN; the layer norms train."""

    method = "houlsby"
    sublayers: tuple[str, ...] = ("attn", "ffn")
    train_layer_norms: bool = True


@dataclass(frozen=True)
class PfeifferConfig(BottleneckConfig):
    """Pfeiffer et al. 2020 (AdapterFusion, MAD-X): one sequential adapter after the FFN, reading its Add & Norm output."""

    method = "pfeiffer"
    original_ln_before: bool = True
    options_added_later = {"original_ln_before": False}  # pfeiffer computed Houlsby's FFN form before it


@dataclass(frozen=True)
class ParallelConfig(BottleneckConfig):
    """He et al. 2022: an adapter beside the FFN, reading the FFN's input."""

    method = "parallel"
    parallel: bool = True


@dataclass(frozen=True)
class ScaledParallelConfig(BottleneckConfig):
    """He et al. 2022: the parallel adapter with its output scaled by s = 4."""

    method = "scaled_parallel"
    parallel: bool = True
    scaling: float | str = 4.0
    default_learning_rate = 5e-4
    learning_rate_source = "s = 4 multiplies the adapter's output (and so its effective step) by four: half the bottleneck rate"


class Bottleneck(SiteModule):
    """``out + s * up(f(down(z)))`` with ``z`` what the adapter reads (:meth:`reads`): the site
    output (sequential), the sublayer input (parallel) or the sublayer's Add & Norm output
    (``original_ln_before``, given the sublayer's ``norm``; None on pre-LN models).

    Shapes: ``x, out: (batch, seq, d)``; ``down: d -> m``; ``up: m -> d``.
    """

    def __init__(self, hidden_size: int, size: int, config: BottleneckConfig, norm: nn.Module | None = None):
        super().__init__()
        self.needs_input = config.parallel
        self.needs_residual = config.original_ln_before
        # the base model's norm, called without its hooks and not owned (so not saved or trained)
        self.add_norm = norm.forward if norm is not None and config.original_ln_before else None
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

    def reads(self, x, out: torch.Tensor) -> torch.Tensor:
        """``z``: ``LN(x + out)`` (``x + out`` without a norm) with ``x`` the residual input when
        ``original_ln_before`` (``x``: :class:`~adapterkit.sites.SiteInputs`), else ``x`` (the
        sublayer input) when parallel, else ``out``."""
        if self.needs_residual:
            added = x.residual + out
            return added if self.add_norm is None else self.add_norm(added)
        return x if self.needs_input else out

    def forward(self, x, out):
        return out + self.scaling * self.residual(self.reads(x, out))

    def fusion_query(self, x, out):
        """The output of the sublayer's Add & Norm when ``original_ln_before`` (the paper's
        Fig. 2: AdapterFusion's query is what the adapters read there), else ``out``."""
        return self.reads(x, out) if self.needs_residual else out

    def batch_key(self) -> object:
        return type(self.activation)

    @classmethod
    def batched(cls, modules):
        """Several bottlenecks at one site as one gathered ``baddbmm`` pair (see ``routing.py``).

        Widths are zero-padded to the largest ``m``; sequential and parallel adapters may mix (each
        row reads ``out`` or ``x``); all share one non-linearity (:meth:`batch_key`) and either all
        or none read the residual input (``routing.apply_batched`` groups them so; those all read
        ``LN(x + out)`` with the site's one norm). Shapes: ``W_down (n+1, m, d)``, ``W_up (n+1, d, m)``.
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
            if present[0].needs_residual:
                z = present[0].reads(x, out)
            elif x is None or not any(reads_input):
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
        require_transformer(ctx, config.method)
        parts, sites = ctx.parts, ctx.sites
        size = config.size_for(parts.hidden_size)
        for layer in select_layers(config.layers, parts.num_layers, config.method):
            for sublayer in config.sublayers:
                site = sites.get(f"{layer}.{sublayer}")
                if site is None:  # a sublayer only some layers have (cross-attention)
                    continue
                self.attach(site, Bottleneck(site.width, size, config, site.norm))
                norm_site = sites.get(f"{layer}.{SUBLAYERS[sublayer].norm}")
                if config.train_layer_norms and norm_site is not None:
                    self.attach(norm_site, NormDelta(norm_site.output_module))
        if not self._sites:
            raise ValueError(f"{config.method}: no layer of this model has the sublayers {config.sublayers}")
