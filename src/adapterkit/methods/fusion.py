"""AdapterFusion: learn to combine trained adapters (Pfeiffer et al. 2021, arXiv:2005.00247).

Two stages (Sec. 3):

1. *Knowledge extraction*: train one adapter per source task, each alone (ST-A: ordinary
   ``model.train_adapter(name)``) or all jointly on a mixture of tasks (MT-A: every row of a batch
   routed to its task's adapter and head with :class:`~adapterkit.composition.Routed`, see
   :func:`adapterkit.training.multitask.train_multitask`).
2. *Knowledge composition*: freeze the base model and those adapters, add a fusion (this module)
   with a head for the target task, and train only the two (``model.train_adapter(fusion)``).

A fusion is an adapter of the method ``fusion``: it owns one :class:`FusionLayer` per sublayer
where the fused adapters act (the FFN output for Pfeiffer adapters, attention and FFN outputs for
Houlsby's), is saved and loaded as its own artefact (``model.save_adapter(fusion, dir)``; the
fused adapters are separate artefacts), and is used through ``Fuse(a, b, ..., fusion=name)`` or
simply by its name, which expands to ``Fuse(*config.adapters, fusion=name)``. Where fused
adapters also change a layer norm (Houlsby's trainable norms), their norm outputs are mixed with
the attention weights the fusion gave them at the sublayer before (``execution.py``).

Per layer ``l``, with ``h`` the sublayer output (after its dropout) as the fused adapters read
it, the query, and ``z_n`` the output of adapter ``n`` (its skip connection included: ``z_n = r +
u_n`` with ``r`` the sublayer output and ``u_n`` the adapter's own contribution), Sec. 3.2:

    s_n = softmax_n( (Q h) · (K z_n) / T )
    o   = Σ_n s_n · V z_n                        (residual_before=True: the paper)

Pfeiffer adapters with ``original_ln_before`` read the output of the FFN's Add & Norm, and that
is the query (the paper's Fig. 2; AdapterHub's ``query_before_ln: False``, its default): ``h =
LN(x + r)`` (``x + r`` on pre-LN models); for other adapters ``h = r``. Where the fused adapters
read different things, the last fused adapter acting at the site decides, as in AdapterHub.

AdapterHub's default fusion (``residual_before: False``; its ``BertFusion`` given the residual the
bottleneck layer keeps, ``adapter_residual``, which is ``r``) feeds the adapters' own
contributions ``u_n`` to the key and the value and adds the residual after the value matrix:

    s_n = softmax_n( (Q h) · (K u_n) / T )      (the same weights: K r adds Q h · K r to every score)
    o   = r + Σ_n s_n · V u_n                    (residual_before=False)

The two differ only in whether ``V`` transforms ``r``. Either way the fused output ``o`` goes on
to the layer's Add & Norm. AdapterHub's value matrix has no bias (``b_V = 0`` here) and its key
one does (it cancels, see below). AdapterHub's fusion also drops attention scores out in training (at the
model's attention dropout rate) and can anneal its temperature from 50; neither is done here.

``V`` starts as the identity, so at initialisation the fusion returns an attention-weighted mean
of the adapter outputs (both forms agree there); an L2 penalty ``λ ‖V - I‖²`` (plus ``λ ‖b_V‖²``)
keeps it near the identity and is added to the training loss by ``AdapterModel.forward`` while
the fusion's parameters train.

The computation is re-associated without changing its value: ``(Q h) · (K z_n) = (Kᵀ Q h) · z_n``
(a key bias would add the same ``Q h · b_K`` to every score and cancel in the softmax, so there is
none), and because the weights sum to one, ``Σ s_n V z_n = V (Σ s_n z_n)`` (likewise for ``u_n``,
the value bias included). One ``d × d`` product each for Q, Kᵀ and V per token instead of
``1 + 2N``: an 8-adapter fusion costs about the same as a 2-adapter one. The attention weights
each adapter receives are recorded on request and drive AdapterDrop's fusion pruning
(``adapterkit.inference.fusion``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..composition import check_covered, check_fusable
from ..placement import SUBLAYERS
from ..registry import MethodConfig
from ..sites import SiteModule
from .base import AdapterMethod, BindContext, require_adapter_names, select_layers



@dataclass(frozen=True)
class FusionConfig(MethodConfig):
    """Args:
        adapters: the adapters fused, in order (the default ``Fuse`` of this fusion).
        sublayers: where fusion layers sit (``attn``, ``ffn``, ``cross_attn``); None: every
            sublayer where the fused adapters act (``ffn`` for Pfeiffer adapters, both for Houlsby),
            resolved when the fusion is added and saved resolved.
        layers: which layers (None: all).
        temperature: softmax temperature ``T`` (> 1 flattens the attention over adapters).
        regularization: ``λ`` of the penalty ``λ ‖V - I‖²`` added to the training loss.
        init_scale: standard deviation of the query and key weights at initialisation.
        residual_before: True: the value matrix transforms the adapters' whole outputs (the
            paper's Sec. 3.2); False: their own contributions, with the sublayer output added
            after it (AdapterHub's default; see the module docstring).

    Raises:
        ValueError: no adapters, a bad name or a repeated one, unknown sublayers, a temperature
            that is not positive or a negative regularization.
    """

    method = "fusion"
    adapters: tuple[str, ...] = ()
    sublayers: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    temperature: float = 1.0
    regularization: float = 0.01
    init_scale: float = 0.02
    residual_before: bool = True
    option_values = {"sublayers": tuple(SUBLAYERS)}
    default_learning_rate = 1e-3
    learning_rate_source = (
        "Pfeiffer et al. 2021 train fusion at 5e-5 for 10 epochs on large targets; from identity values and "
        "near-uniform attention on targets of a few hundred examples and 5-10 epochs, 1e-3 is what "
        "benchmarks/bench_fusion_quality.py measured with"
    )

    def validate(self) -> None:
        require_adapter_names("fusion", self.adapters, "('sst2', 'mnli')")
        if self.sublayers is not None and (not self.sublayers or any(s not in SUBLAYERS for s in self.sublayers)):
            raise ValueError(f"fusion: sublayers must be a non-empty subset of {tuple(SUBLAYERS)}, got {self.sublayers}")
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
        self.residual_before = config.residual_before

    def forward(self, x, out):
        raise TypeError("a fusion layer combines several adapters' outputs: use it through Fuse(...), not in a Stack")

    def fuse(self, h: torch.Tensor, outputs: list[torch.Tensor], residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(o, s)``: the fused output ``(..., d)`` and the attention over adapters ``(..., N)``.

        Args:
            h: the query ``(..., d)``.
            outputs: the adapters' outputs ``z_n`` ``(..., d)`` each, skip connection included.
            residual: ``r`` ``(..., d)``, the sublayer output the adapters added to (read only
                when ``residual_before`` is False).
        """
        z = torch.stack(outputs, dim=-2)  # (..., N, d)
        if not self.residual_before:
            z = z - residual.unsqueeze(-2)  # u_n: the adapters' own contributions
        q = self.query(h) @ self.key.weight  # (..., d): Kᵀ Q h, so that score_n = q · z_n
        scores = (z @ q.unsqueeze(-1)).squeeze(-1)  # (..., N)
        attention = torch.softmax(scores / self.temperature, dim=-1)
        mixed = (attention.unsqueeze(-2) @ z).squeeze(-2)  # (..., d): Σ_n s_n z_n
        fused = self.value(mixed)
        return (fused if self.residual_before else residual + fused), attention

    def value_penalty(self) -> torch.Tensor:
        """``‖V - I‖² + ‖b_V‖²``."""
        eye = torch.eye(self.value.weight.shape[0], device=self.value.weight.device, dtype=self.value.weight.dtype)
        return (self.value.weight - eye).pow(2).sum() + self.value.bias.pow(2).sum()


class FusionAdapter(AdapterMethod):
    """The fusion layers of one fusion, saved and loaded like any adapter.

    The fused adapters already on the model are checked here, when the fusion is added, as a
    ``Fuse`` over them would be (``composition.check_fusable`` and ``check_covered``); adapters
    loaded later are checked when a ``Fuse`` runs.

    Raises:
        ValueError: a fused adapter that cannot be fused (a fusion, or an adapter acting elsewhere
            than on sublayer outputs and their norms: LoRA, BitFit, prefix, prompt, ...), one
            acting where the fusion has no layer, or ``sublayers=None`` while the fused adapters
            are not on the model to read them from.
    """

    capabilities = frozenset({"fusion"})

    def __init__(self, config: FusionConfig, ctx: BindContext):
        super().__init__(config, ctx)
        present = [a for a in config.adapters if ctx.view is not None and a in ctx.view.adapters]
        check_fusable(ctx.view, present, f"fusion {ctx.name!r}")
        if config.sublayers is None:
            config = self.config = dataclasses.replace(config, sublayers=_sublayers_of(config.adapters, ctx))
        for layer in select_layers(config.layers, ctx.parts.num_layers, "fusion"):
            for sublayer in config.sublayers:
                site = ctx.sites.get(f"{layer}.{sublayer}")
                if site is not None:
                    self.attach(site, FusionLayer(site.width, config))
        check_covered(ctx.view, present, ctx.name, frozenset(site.key for site, _ in self.attachments()))

    def fusion_layers(self) -> list[FusionLayer]:
        return [module for _, module in self.attachments()]

    def regularization(self) -> torch.Tensor:
        """``λ Σ_layers (‖V - I‖² + ‖b_V‖²)``, the term added to the training loss."""
        return self.config.regularization * sum(layer.value_penalty() for layer in self.fusion_layers())


def _sublayers_of(adapters: tuple[str, ...], ctx: BindContext) -> tuple[str, ...]:
    """The sublayers where the fused adapters act, from the model's view of them (checked to be
    fusable already)."""
    view = ctx.view
    missing = [a for a in adapters if view is None or a not in view.adapters]
    if missing:
        raise ValueError(
            f"fusion: adapters {missing} are not on the model, so where to put the fusion layers is unknown; "
            "add (or load) the adapters to fuse first, or give sublayers=('ffn',) explicitly"
        )
    acting = {key.split(".", 1)[1] for a in adapters for key in view.adapters[a].sublayer_sites}
    return tuple(s for s in SUBLAYERS if s in acting)
