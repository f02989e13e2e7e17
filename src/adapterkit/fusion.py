"""AdapterFusion: learn to combine trained adapters (Pfeiffer et al. 2021, arXiv:2005.00247).

Two stages (Sec. 3):

1. *Knowledge extraction*: train one adapter per source task, each alone (ST-A: ordinary
   ``model.train_adapter(name)``) or all jointly on a mixture of tasks (MT-A: every row of a batch
   routed to its task's adapter and head with :class:`~adapterkit.composition.Routed`, see
   :func:`adapterkit.multitask.train_multitask`).
2. *Knowledge composition*: freeze the base model and those adapters, add a fusion (this module)
   with a head for the target task, and train only the two (``model.train_adapter(fusion)``).

A fusion is an adapter of the method ``fusion``: it owns one :class:`FusionLayer` per adapted
sublayer (the FFN output by default, where Pfeiffer adapters sit), is saved and loaded as its own
artefact (``model.save_adapter(fusion, dir)``; the fused adapters are separate artefacts), and is
used through ``Fuse(a, b, ..., fusion=name)`` or simply by its name, which expands to
``Fuse(*config.adapters, fusion=name)``.

Per layer ``l``, with ``h`` the sublayer output (the query) and ``z_n = A_n(h)`` the output of
adapter ``n`` (its skip connection included), Sec. 3.2:

    s_n = softmax_n( (Q h) · (K z_n) / T )
    o   = Σ_n s_n · V z_n

``V`` starts as the identity, so at initialisation the fusion returns an attention-weighted mean
of the adapter outputs; an L2 penalty ``λ ‖V - I‖²`` (plus ``λ ‖b_V‖²``) keeps it near the identity
and is added to the training loss by ``AdapterModel.forward`` whenever a fusion is trained.

The computation is re-associated without changing its value: ``(Q h) · (K z_n) = (Kᵀ Q h) · z_n``
(a key bias would add the same ``Q h · b_K`` to every score and cancel in the softmax, so there is
none), and because the weights sum to one, ``Σ s_n V z_n = V (Σ s_n z_n)``. One ``d × d`` product
each for Q, Kᵀ and V per token instead of ``1 + 2N``: an 8-adapter fusion costs about the same as a
2-adapter one. The attention weights each adapter receives are recorded on request
(:func:`fusion_attention`) and drive AdapterDrop's fusion pruning (:func:`prune_fusion`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .methods.base import AdapterMethod, select_layers
from .registry import MethodConfig, register_method
from .sites import SiteModule

if TYPE_CHECKING:
    from .model import AdapterModel

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class FusionConfig(MethodConfig):
    """Args:
        adapters: the adapters fused, in order (the default ``Fuse`` of this fusion).
        sublayers: where fusion layers sit: ``ffn`` (Pfeiffer adapters), ``attn`` or both (Houlsby).
        layers: which layers (None: all).
        temperature: softmax temperature ``T`` (> 1 flattens the attention over adapters).
        regularization: ``λ`` of the penalty ``λ ‖V - I‖²`` added to the training loss.
        init_scale: standard deviation of the query and key weights at initialisation.
    """

    method = "fusion"
    adapters: tuple[str, ...] = ()
    sublayers: tuple[str, ...] = ("ffn",)
    layers: tuple[int, ...] | None = None
    temperature: float = 1.0
    regularization: float = 0.01
    init_scale: float = 0.02

    def validate(self) -> None:
        if not self.adapters:
            raise ValueError("fusion: name the adapters to fuse, e.g. adapters=('sst2', 'mnli')")
        bad = [a for a in self.adapters if not isinstance(a, str) or not _NAME.match(a)]
        if bad:
            raise ValueError(f"fusion: {bad} are not adapter names")
        if len(set(self.adapters)) != len(self.adapters):
            raise ValueError(f"fusion: adapters {self.adapters} name an adapter twice")
        if not self.sublayers or any(s not in ("attn", "ffn") for s in self.sublayers):
            raise ValueError(f"fusion: sublayers must be a non-empty subset of ('attn', 'ffn'), got {self.sublayers}")
        if not self.temperature > 0:
            raise ValueError(f"fusion: temperature must be > 0, got {self.temperature}")
        if self.regularization < 0:
            raise ValueError(f"fusion: regularization must be >= 0, got {self.regularization}")


class FusionLayer(SiteModule):
    """Attention over the adapters' outputs at one site (see the module docstring).

    Shapes: query ``h: (..., d)``; adapter outputs ``z_n: (..., d)`` each; attention ``(..., N)``.
    """

    def __init__(self, hidden_size: int, config: FusionConfig):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)
        self.value = nn.Linear(hidden_size, hidden_size)
        nn.init.normal_(self.query.weight, std=config.init_scale)
        nn.init.zeros_(self.query.bias)
        nn.init.normal_(self.key.weight, std=config.init_scale)
        with torch.no_grad():
            self.value.weight.copy_(torch.eye(hidden_size))
        nn.init.zeros_(self.value.bias)
        self.temperature = config.temperature
        self.recorder: AttentionRecorder | None = None

    def forward(self, x, out):
        raise TypeError("a fusion layer combines several adapters' outputs: use it through Fuse(...), not in a Stack")

    def fuse(self, h: torch.Tensor, outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(o, s)``: the fused output ``(..., d)`` and the attention over adapters ``(..., N)``."""
        z = torch.stack(outputs, dim=-2)  # (..., N, d)
        q = self.query(h) @ self.key.weight  # (..., d): Kᵀ Q h, so that score_n = q · z_n
        scores = (z @ q.unsqueeze(-1)).squeeze(-1)  # (..., N)
        attention = torch.softmax(scores / self.temperature, dim=-1)
        mixed = (attention.unsqueeze(-2) @ z).squeeze(-2)  # (..., d): Σ_n s_n z_n
        return self.value(mixed), attention

    def value_penalty(self) -> torch.Tensor:
        """``‖V - I‖² + ‖b_V‖²``."""
        eye = torch.eye(self.value.weight.shape[0], device=self.value.weight.device, dtype=self.value.weight.dtype)
        return (self.value.weight - eye).pow(2).sum() + self.value.bias.pow(2).sum()


class FusionAdapter(AdapterMethod):
    """The fusion layers of one fusion, saved and loaded like any adapter."""

    fuses_adapters = True

    def __init__(self, config: FusionConfig, parts, sites):
        super().__init__(config, parts, sites)
        for layer in select_layers(config.layers, parts.num_layers, "fusion"):
            for sublayer in config.sublayers:
                self.attach(sites[f"{layer}.{sublayer}"], FusionLayer(parts.hidden_size, config))

    def fusion_layers(self) -> list[FusionLayer]:
        return [module for _, module in self.attachments()]

    def regularization(self) -> torch.Tensor:
        """``λ Σ_layers (‖V - I‖² + ‖b_V‖²)``, the term added to the training loss."""
        return self.config.regularization * sum(layer.value_penalty() for layer in self.fusion_layers())

    @contextlib.contextmanager
    def recording(self) -> Iterator[AttentionRecorder]:
        """Record the attention each adapter receives in the enclosed forward passes."""
        recorder = AttentionRecorder()
        layers = self.fusion_layers()
        for layer in layers:
            layer.recorder = recorder
        try:
            yield recorder
        finally:
            for layer in layers:
                layer.recorder = None


register_method(FusionConfig, FusionAdapter)


# ----------------------------------------------------------------------------- attention reports
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


def _fusion(model: AdapterModel, name: str) -> FusionAdapter:
    model._check_names([name])
    adapter = model.adapters[name]
    if not getattr(adapter, "fuses_adapters", False):
        raise ValueError(f"adapter {name!r} is a {adapter.config.method} adapter, not a fusion")
    return adapter


_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "inputs_embeds")


@torch.no_grad()
def fusion_attention(model: AdapterModel, fusion: str, batches: Iterable[Mapping[str, Any]], setup=None) -> FusionAttention:
    """Run ``batches`` (dicts with ``input_ids`` and ``attention_mask``) through the fusion and
    report the mean attention each adapter receives, per layer and overall (padding excluded)."""
    adapter = _fusion(model, fusion)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with adapter.recording() as recorder:
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
    adapter = _fusion(model, fusion)
    if keep is None and min_attention is None:
        raise ValueError("prune_fusion: give keep=<count> and/or min_attention=<weight>")
    if keep is not None and keep < 1:
        raise ValueError(f"prune_fusion: keep must be >= 1, got {keep}")
    report = fusion_attention(model, fusion, batches)
    ranked = sorted(report.mean.items(), key=lambda kv: -kv[1])
    chosen = [n for n, w in ranked if min_attention is None or w >= min_attention][: keep or len(ranked)]
    chosen = chosen or [ranked[0][0]]
    kept = tuple(n for n in adapter.config.adapters if n in chosen)
    from .composition import Fuse

    active = model.active_setup
    adapter.config = dataclasses.replace(adapter.config, adapters=kept)
    if isinstance(active, Fuse) and active.fusion == fusion:  # the fusion's own default: now the pruned one
        model.set_active(fusion)
    return kept, report
