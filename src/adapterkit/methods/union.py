"""Unions of methods, and the MAM adapter (He et al. 2022, arXiv:2110.04366).

A *union* is one adapter made of several methods' adapters on one model (LoRA + a bottleneck,
prefix + a parallel adapter, ...): one name, one head, one save file, trained and activated
together. Each member is built exactly as it would be alone; where two members act at the same
site they are applied in the order given. The config serialises its members with their own type
tags, so a saved union loads back member by member.

**MAM** ("mix-and-match", Sec. 4.6 of He et al.) is the union the paper recommends after its
"unified view" (Sec. 3): a prefix on the attention (``l = 30``, the attention being where a small
modification does best) and a *scaled parallel* adapter on the feed-forward sublayer (``s = 4``,
bottleneck 512 on a 768-wide model; the FFN being where added capacity pays), i.e.

    attention:  head = softmax(q [P_k; K]ᵀ / √d_h) [P_v; V]
    FFN:        h' = FFN(x) + 4 · W_up ReLU(W_down x)

Here the bottleneck scales with the model: ``d / 1.5`` (512 for d = 768, 256 for MiniLM's 384).
``FFN(x)`` is the FFN's output after its dropout, as for every bottleneck adapter
(``methods/bottleneck.py``): the parallel adapter's output is never dropped by the base.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..registry import MethodConfig, config_from_dict, method_spec
from ..sites import OUTPUT_KINDS, SiteInputs, SiteModule, site_input
from .base import AdapterMethod, BindContext
from .bottleneck import ACTIVATIONS, ScaledParallelConfig
from .prefix import INITS, PrefixConfig


@dataclass(frozen=True)
class UnionConfig(MethodConfig):
    """Args:
        configs: the members' configs (configs, or dicts with their ``method`` tag), at least two.
    """

    method = "union"
    configs: tuple[MethodConfig, ...] = ()

    def __post_init__(self) -> None:
        members = tuple(config_from_dict(c) if isinstance(c, dict) else c for c in self.configs)
        object.__setattr__(self, "configs", members)
        super().__post_init__()

    def validate(self) -> None:
        if len(self.configs) < 2:
            raise ValueError(f"union: give at least two member configs, got {len(self.configs)}")
        for config in self.configs:
            if not isinstance(config, MethodConfig):
                raise ValueError(f"union: members must be method configs or dicts with a 'method' tag, got {config!r}")
            if "modifies_base" in method_spec(config.method).capabilities:
                raise ValueError(f"union: {config.method!r} changes the base model itself and cannot be a member")

    def components(self) -> tuple[MethodConfig, ...]:
        return self.configs

    def with_components(self, configs: tuple[MethodConfig, ...]) -> MethodConfig:
        """The config describing this union with its members' configs now ``configs`` (after a
        member changed form, e.g. a folded prefix)."""
        return dataclasses.replace(self, configs=tuple(configs))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "configs": [c.to_dict() for c in self.configs]}


@dataclass(frozen=True)
class MamConfig(MethodConfig):
    """The MAM adapter: ``prefix`` on attention + ``scaled_parallel`` on the FFN.

    Args:
        prefix_length, reparameterize, reparam_hidden, init, init_text: the prefix's options.
        bottleneck_size: the parallel adapter's width (None: ``hidden_size / reduction_factor``).
        reduction_factor: 1.5 gives the paper's 512 on a 768-wide model.
        scaling: ``s``, the factor on the parallel adapter's output.
        non_linearity: the parallel adapter's activation.
        layers: which layers get both (None: all).
    """

    method = "mam"
    default_learning_rate = 1e-3
    learning_rate_source = "as prefix tuning (Li & Liang 2021): 1e-3; the parallel adapter trains well at it too"
    prefix_length: int = 30
    reparameterize: bool = True
    reparam_hidden: int = 512
    init: str | None = None
    init_text: str | None = None
    bottleneck_size: int | None = None
    reduction_factor: float = 1.5
    scaling: float | str = 4.0
    non_linearity: str = "relu"
    layers: tuple[int, ...] | None = None
    option_values = {"init": INITS, "non_linearity": tuple(ACTIVATIONS)}

    def validate(self) -> None:
        self.components()  # the members validate their own options

    def components(self) -> tuple[MethodConfig, ...]:
        return (
            PrefixConfig(
                prefix_length=self.prefix_length,
                reparameterize=self.reparameterize,
                reparam_hidden=self.reparam_hidden,
                init=self.init,
                init_text=self.init_text,
                layers=self.layers,
            ),
            ScaledParallelConfig(
                sublayers=("ffn",),
                bottleneck_size=self.bottleneck_size,
                reduction_factor=self.reduction_factor,
                scaling=self.scaling,
                non_linearity=self.non_linearity,
                layers=self.layers,
            ),
        )

    def with_components(self, configs: tuple[MethodConfig, ...]) -> MethodConfig:
        candidate = dataclasses.replace(self, reparameterize=configs[0].reparameterize)
        return candidate if candidate.components() == tuple(configs) else UnionConfig(configs=tuple(configs))


class SiteChain(SiteModule):
    """Several members' modules at one site, applied in order, each given ``x`` as it takes it."""

    def __init__(self, modules: list[SiteModule]):
        super().__init__()
        self.chain = nn.ModuleList(modules)
        self.needs_input = any(m.needs_input for m in modules)
        self.needs_residual = any(m.needs_residual for m in modules)

    def forward(self, x, out):
        for module in self.chain:
            out = module(self._given(module, x), out)
        return out

    def fusion_query(self, x, out):
        """The first member's query: it reads the sublayer output first."""
        return self.chain[0].fusion_query(self._given(self.chain[0], x), out)

    def _given(self, module: SiteModule, x):
        """What ``module`` takes as ``x`` out of what this chain took (the pair if any member reads
        the residual input, else the input)."""
        return site_input(module, x if self.needs_residual else SiteInputs(x))


class UnionAdapter(AdapterMethod):
    """The members as ``components.<method>`` (``<method>_2``, ... for repeats)."""

    capabilities = frozenset({"fold"})

    def __init__(self, config, ctx: BindContext):
        super().__init__(config, ctx)
        self.components = nn.ModuleDict()
        for member in config.components():
            key, n = member.method, 1
            while key in self.components:
                n += 1
                key = f"{member.method}_{n}"
            self.components[key] = method_spec(member.method).module_cls(member, ctx)
        for site, modules in self._by_site().items():
            if len(modules) > 1 and site.kind not in OUTPUT_KINDS:
                raise ValueError(f"union: two members act at the {site.kind} site {site.key}; combine them in a Stack instead")

    def _by_site(self) -> dict:
        by_site: dict = {}
        for member in self.components.values():
            for site, module in member.attachments():
                by_site.setdefault(site, []).append(module)
        return by_site

    def attachments(self):
        for site, modules in self._by_site().items():
            yield site, modules[0] if len(modules) == 1 else SiteChain(modules)

    def base_parameters(self) -> dict[str, nn.Parameter]:
        return {k: p for member in self.components.values() for k, p in member.base_parameters().items()}

    def fold(self) -> bool:
        """Fold every member that can be folded (a reparameterised prefix); whether anything changed."""
        changed = [member.fold() for member in self.components.values() if "fold" in member.capabilities]
        self.config = self.config.with_components(tuple(m.config for m in self.components.values()))
        return any(changed)
