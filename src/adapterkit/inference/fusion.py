"""What a trained AdapterFusion attends to, and AdapterDrop's fusion pruning.

:func:`fusion_attention` runs batches through a fusion and reports the mean attention each fused
adapter receives, per layer and overall (padding excluded): the fusion layers report to an
:class:`AttentionRecorder` tapped into the passes (``context.tapping``), nothing is written onto
the model. :func:`prune_fusion` keeps the adapters that receive the most (Rücklé et al. 2021,
Sec. 5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .. import context

if TYPE_CHECKING:
    from ..model import AdapterModel
@dataclass
class FusionAttention:
    """Mean attention each fused adapter received, per layer (site key) and over all layers."""

    per_layer: dict[str, dict[str, float]]

    @property
    def mean(self) -> dict[str, float]:
        names = list(dict.fromkeys(n for layer in self.per_layer.values() for n in layer))
        return {n: sum(layer.get(n, 0.0) for layer in self.per_layer.values()) / len(self.per_layer) for n in names}

    def format(self) -> str:
        """A plain-text table: one row per layer, one column per adapter, and the mean."""
        names = list(self.mean)
        width = max(8, *(len(n) for n in names))
        lines = ["site     " + " ".join(f"{n:>{width}}" for n in names)]
        for key, values in sorted(self.per_layer.items(), key=lambda kv: int(kv[0].split(".")[0])):
            lines.append(f"{key:<8} " + " ".join(f"{values.get(n, 0.0):>{width}.3f}" for n in names))
        lines.append("mean     " + " ".join(f"{self.mean[n]:>{width}.3f}" for n in names))
        return "\n".join(lines)


class AttentionRecorder:
    """Accumulates fusion attention per site and adapter, over the non-padding tokens."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None  # (batch, seq) of the batch in flight, set by the caller
        self._sums: dict[str, dict[str, float]] = {}
        self._tokens: dict[str, float] = {}

    def add(self, site_key: str, names: list[str], attention: torch.Tensor) -> None:
        attention = attention.detach().float()
        if self.mask is not None and attention.shape[:2] == self.mask.shape:
            weight = self.mask.to(attention.device, attention.dtype).unsqueeze(-1)
            sums, tokens = (attention * weight).sum((0, 1)), float(weight.sum())
        else:
            sums, tokens = attention.reshape(-1, len(names)).sum(0), attention.numel() / len(names)
        layer = self._sums.setdefault(site_key, {})
        for name, value in zip(names, sums.tolist()):
            layer[name] = layer.get(name, 0.0) + value
        self._tokens[site_key] = self._tokens.get(site_key, 0.0) + tokens

    def report(self) -> FusionAttention:
        return FusionAttention(
            {key: {n: v / max(self._tokens[key], 1e-12) for n, v in sums.items()} for key, sums in self._sums.items()}
        )


_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "inputs_embeds")


@torch.no_grad()
def fusion_attention(model: AdapterModel, fusion: str, batches: Iterable[Mapping[str, Any]], setup=None) -> FusionAttention:
    """Run ``batches`` (dicts with ``input_ids`` and ``attention_mask``) through the fusion and
    report the mean attention each adapter receives, per layer and overall (padding excluded)."""
    model.fusion(fusion)  # checks that it is one
    recorder = AttentionRecorder()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with context.tapping(fusion_attention=recorder):
            for batch in batches:
                inputs = {k: v.to(device) for k, v in batch.items() if k in _MODEL_INPUTS}
                recorder.mask = inputs.get("attention_mask")
                model(**inputs, adapters=setup or fusion)
    finally:
        model.train(was_training)
    if not recorder._tokens:
        raise ValueError(f"fusion {fusion!r} saw no tokens: give at least one batch")
    return recorder.report()


def prune_fusion(
    model: AdapterModel,
    fusion: str,
    batches: Iterable[Mapping[str, Any]],
    keep: int | None = 2,
    min_attention: float | None = None,
) -> tuple[tuple[str, ...], FusionAttention]:
    """AdapterDrop's fusion pruning (Rücklé et al. 2021, Sec. 5): drop the adapters that receive
    little fusion attention on validation data.

    Keeps the ``keep`` adapters with the highest mean attention over all layers and tokens (and,
    with ``min_attention``, only those receiving at least that much), in their original order. The
    fusion's config then lists only those, so ``model(..., adapters=fusion)`` and a saved fusion use
    the pruned set; the fusion weights are shared across adapters and stay as they are.

    Returns:
        the kept adapter names and the attention report they were chosen from.
    """
    adapter = model.fusion(fusion)
    if keep is None and min_attention is None:
        raise ValueError("prune_fusion: give keep=<count> and/or min_attention=<weight>")
    if keep is not None and keep < 1:
        raise ValueError(f"prune_fusion: keep must be >= 1, got {keep}")
    report = fusion_attention(model, fusion, batches)
    ranked = sorted(report.mean.items(), key=lambda kv: -kv[1])
    chosen = [n for n, w in ranked if min_attention is None or w >= min_attention][: keep or len(ranked)]
    chosen = chosen or [ranked[0][0]]
    kept = tuple(n for n in adapter.config.adapters if n in chosen)
    model.restrict_fusion(fusion, kept)
    return kept, report
