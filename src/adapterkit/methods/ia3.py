"""(IA)³: learned vectors that rescale inner activations (Liu et al. 2022, "Few-Shot
Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
arXiv:2205.05638, Sec. 3.3).

Three vectors per layer rescale the attention's keys and values and the feed-forward's hidden
activations:

    softmax(Q (l_k ⊙ K)ᵀ / √d_k) (l_v ⊙ V),        W_2 (l_ff ⊙ γ(W_1 x))

all initialised to ones, so a fresh adapter is the identity. The vectors act on projections
chosen by role, in one of two ways:

* ``targets`` (default ``k``, ``v``): the projection's OUTPUT is scaled, ``l ⊙ (W x + b)``
  (``l``: ``d_out``), the bias included, as in peft;
* ``input_targets`` (default ``ffn_out``): the projection's INPUT is scaled, ``W (l ⊙ x) + b``
  (``l``: ``d_in``). On ``ffn_out`` that is the paper's ``l_ff`` after the non-linearity
  (and after the gate product on SwiGLU models), which is also peft's placement (its
  ``feedforward_modules``). Computed as ``out + W ((l − 1) ⊙ x)``, so it composes with other
  changes of the same projection; this costs one more product with ``W`` until merged.

AdapterHub (``adapters`` 1.3, ``IA3Config``) implements (IA)³ through its LoRA layer with the
``"scale"`` composition: it scales the OUTPUT of the FFN's input projection (its
``intermediate_lora``), i.e. ``γ(l_ff ⊙ (W_1 x + b_1))``, before the non-linearity, and multiplies
every vector by ``alpha`` (1 by default). That placement is
``targets=("k", "v", "ffn_in"), input_targets=()`` here (a non-default ``alpha`` folds into the
vectors). It differs from the paper's whenever ``γ`` is not linear, i.e. always.

**Merging**: ``l ⊙ (W x + b) = (diag(l) W) x + l ⊙ b`` and ``W (l ⊙ x) = (W diag(l)) x``, so each
vector folds into its projection (rows and bias, or columns); see ``merging.py`` for the kept
originals and the bit-exact unmerge. peft merges (IA)³ the same way (but unmerges by division).

**Batched form** (routing, ``Parallel``): the vectors of all adapters at a site are stacked with
ones for rows without one and gathered per row: one multiply (and, for an input scale, one
product with the shared ``W``).

Parameters: ``Σ d_out`` over the output targets plus ``Σ d_in`` over the input targets, per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..placement import LINEAR_ROLES
from ..registry import MethodConfig
from ..routing import groups, select
from .base import BindContext, require_transformer
from .merging import MergeableAdapter, MergeableDelta, linear_sites

SCALED = ("output", "input")
"""What an :class:`IA3Scale` rescales: its projection's output or its input."""


@dataclass(frozen=True)
class IA3Config(MethodConfig):
    """Args:
        targets: roles of the projections whose OUTPUT is scaled (the paper's ``l_k``, ``l_v``).
        input_targets: roles of the projections whose INPUT is scaled (the paper's ``l_ff`` on
            ``ffn_out``); AdapterHub's placement is ``targets=("k", "v", "ffn_in"), input_targets=()``.
        layers: which layers (None: all).
    """

    method = "ia3"
    targets: tuple[str, ...] = ("k", "v")
    input_targets: tuple[str, ...] = ("ffn_out",)
    layers: tuple[int, ...] | None = None
    option_values = {"targets": LINEAR_ROLES, "input_targets": LINEAR_ROLES}
    default_learning_rate = 3e-3
    learning_rate_source = (
        "Liu et al. 2022 (T-Few), Sec. 3.3: 3e-3 with Adafactor; peft's IA3 examples use 1e-3 "
        "(sequence classification) to 8e-3 (mt0 seq2seq) with AdamW"
    )

    def validate(self) -> None:
        bad = [t for t in (*self.targets, *self.input_targets) if t not in LINEAR_ROLES]
        if bad:
            raise ValueError(f"ia3: unknown target role(s) {bad}; roles are {', '.join(LINEAR_ROLES)}")
        if not self.targets and not self.input_targets:
            raise ValueError("ia3: give at least one role in targets or input_targets")
        both = sorted(set(self.targets) & set(self.input_targets))
        if both:
            raise ValueError(
                f"ia3: role(s) {both} are in both targets and input_targets; scale either a projection's output "
                "or its input (one vector folds into it either way)"
            )


class IA3Scale(MergeableDelta):
    """One learned vector rescaling one linear's output (``out * scale``) or input
    (``out + W ((scale − 1) ⊙ x)``).

    Shapes: ``x (..., d_in)``, ``out (..., d_out)``, ``scale (d_out,)`` or ``(d_in,)``.
    """

    def __init__(self, linear: nn.Module, scaled: str):
        super().__init__(linear, "ia3")
        self.scaled = scaled
        self.scale = nn.Parameter(torch.ones(linear.out_features if scaled == "output" else linear.in_features))
        self.needs_input = self.reads_base_weight = scaled == "input"

    def forward(self, x, out):
        if self.scaled == "output":
            return out * self.scale
        return out + nn.functional.linear(x * (self.scale - 1), self.base_weight())

    def batch_key(self) -> object:
        return self.scaled

    @classmethod
    def batched(cls, modules):
        """The vectors of several adapters at one projection (all scaling the same side,
        :meth:`batch_key`) stacked, ``(n+1, width)``, ones for absent adapters and the identity
        slot, and gathered per row."""
        present = [m for m in modules if m is not None]
        first = present[0]
        ones = torch.ones_like(first.scale)
        stacked = torch.stack([m.scale if m is not None else ones for m in modules] + [ones])

        def forward(x, out, index):
            n = len(modules)
            rows = select(stacked, index)[:, None, :]
            if first.scaled == "output":
                return (groups(out, index, n) * rows).reshape(out.shape)
            shifted = groups(x, index, n) * (rows - 1)
            return out + nn.functional.linear(shifted, first.base_weight()).reshape(out.shape)

        return forward

    def folded(self):
        """Output: ``diag(l) W`` and ``l ⊙ b``; input: ``W diag(l)``, the bias unchanged."""
        weight, bias = self.base_weight(), self.base_bias()
        scale = self.scale.detach().to(weight.dtype)
        if self.scaled == "input":
            return weight * scale[None, :], None
        return weight * scale[:, None], (None if bias is None else bias * scale)


class IA3Adapter(MergeableAdapter):
    """(IA)³ vectors on the targeted projections of the chosen layers, stored as
    ``layers.<i>.<position>.scale``."""

    def __init__(self, config: IA3Config, ctx: BindContext):
        super().__init__(config, ctx)
        require_transformer(ctx, config.method)  # its roles are a transformer's, whatever the targets
        for scaled, roles in (("output", config.targets), ("input", config.input_targets)):
            if roles:
                for site in linear_sites(ctx, config.layers, roles, "ia3"):
                    self.attach(site, IA3Scale(site.output_module, scaled))
