"""LoRA: low-rank updates of frozen projections (Hu et al. 2021, arXiv:2106.09685).

A targeted linear ``y = W x + b`` (``W: d_out x d_in``) becomes

    y' = W x + b + (α / r) · B A dropout(x),      A: r x d_in,  B: d_out x r

with ``A`` Kaiming-uniform and ``B`` zero, so the adapter is the identity at init (Sec. 4.1).
Because the update is linear it can be *merged*: ``W ← W + (α/r) B A`` gives the same outputs with
no added latency (Sec. 4.2). ``unmerge`` restores the weight kept from before the merge, bit for
bit: subtracting the update again would not, as ``(W + ΔW) - ΔW`` rounds differently from ``W``
(in bfloat16 by up to a unit in the last place of ``W``, which then moves every other adapter's
outputs). While merged, the site adds nothing; merge and unmerge are idempotent. Targets are
chosen by role (q, k, v, o, ffn_in, ffn_out), so the same config works on every architecture
with a placement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


#: Attribute of a base linear listing the LoRA deltas merged into it, first merged first. Kept on
#: the linear itself so that a copy of the model (``copy.deepcopy``) stays consistent.
_MERGED = "_adapterkit_merged_lora"
_MERGED_UNDER_ANOTHER = (
    "it is merged on top of another LoRA adapter merged into the same projections, so its update "
    "cannot become part of the base weights below that one; unmerge that adapter first"
)


def _merged_into(linear: nn.Linear) -> list[LoraDelta]:
    """The LoRA deltas merged into ``linear``, first merged first."""
    return linear.__dict__.setdefault(_MERGED, [])


class LoraDelta(SiteModule):
    """``out + (α/r) · B A dropout(x)`` on one linear; can fold itself into that linear.

    While merged it keeps the linear's weight from before its merge (a non-persistent buffer: it
    follows ``.to()`` but is never part of a saved adapter or a state dict), one copy of that
    weight per merged projection.
    """

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
        self.register_buffer("_original", None, persistent=False)  # the weight before merge(); None: unmerged

    @property
    def merged(self) -> bool:
        return self._original is not None

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
        """``W ← W + (α/r) B A``, rounded to ``W``'s dtype, keeping ``W`` for :meth:`unmerge` (idempotent)."""
        if self.merged:
            return
        weight = self._linear[0].weight
        self._original = weight.detach().clone()
        weight += self.delta_weight().to(weight.dtype)
        _merged_into(self._linear[0]).append(self)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the weight kept by :meth:`merge` exactly (idempotent).

        Other LoRA deltas merged into the same linear after this one are merged again on top, so
        the weight ends exactly as if this one had never been merged.
        """
        if not self.merged:
            return
        merges = _merged_into(self._linear[0])
        position = merges.index(self)
        later = merges[position + 1 :]
        del merges[position:]
        self._linear[0].weight.copy_(self._original)
        self._original = None
        for delta in later:
            delta._original = None
            delta.merge()

    @property
    def merged_under_another(self) -> bool:
        """Merged into its linear after another LoRA delta that is still merged there."""
        return self.merged and _merged_into(self._linear[0])[0] is not self

    def release(self) -> None:
        """Make a merge permanent: the merged weight becomes the linear's base weight and the kept
        copy is freed (``merge_and_unload``). Nothing happens when not merged.

        Raises:
            ValueError: when :attr:`merged_under_another`: unmerging that other delta later
                would drop this one's update.
        """
        if self.merged_under_another:
            raise ValueError(f"this LoRA delta cannot be released: {_MERGED_UNDER_ANOTHER}")
        if self.merged:
            del _merged_into(self._linear[0])[0]
            self._original = None

    def base_output(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped linear's output without any merged LoRA: ``F.linear(x, W, b)`` with the
        weight from before the first merge into it, bit-identical to the base's output then.

        Shapes: ``x (..., d_in)`` -> ``(..., d_out)``.
        """
        linear = self._linear[0]
        merges = getattr(linear, _MERGED, None)
        weight = merges[0]._original if merges else linear.weight
        return F.linear(x, weight, linear.bias)


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

    def unbind(self, model, name: str) -> None:
        """Removing a merged adapter leaves its update in the base weights (``merge_and_unload``)
        and frees the weights kept for unmerging."""
        if any(delta.merged_under_another for delta in self.deltas()):  # refuse before changing anything
            raise ValueError(f"adapter {name!r} cannot be removed while merged: {_MERGED_UNDER_ANOTHER}")
        for delta in self.deltas():
            delta.release()


register_method(LoraConfig, LoraAdapter)
