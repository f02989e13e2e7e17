"""K-Adapter: knowledge adapters outside the frozen model (Wang et al. 2020, arXiv:2002.01808).

Two methods:

* ``k_adapter``: one knowledge adapter, a plug-in that reads the outputs of chosen base layers
  through its own network (``knowledge_net.py``, Sec. 3.1) and changes nothing inside the model.
  Its head reads ``[h_L ; o_K]``: the model's last hidden state and the adapter's output,
  concatenated (``2 d`` features). Pretrained alone on its knowledge task (Sec. 3.2-3.3:
  relation classification for facts, dependency relations for linguistic knowledge); no
  information flows between knowledge adapters, so each trains independently, even in separate
  processes, and adding or retraining one leaves every other bit-identical.
* ``k_task``: a downstream task head over the model and named knowledge adapters: it reads
  ``[h_L ; o^1_K ; o^2_K ; ...]`` (Sec. 3: "when multiple knowledge-specific adapters are adopted,
  we concatenate the output features of different adapter models as the input for task-specific
  layers"; ``h_L`` appears once here where each adapter model's feature repeats it in the paper;
  the released code also puts a linear layer per adapter before concatenating, which is not
  done). The knowledge adapters stay frozen; ``train_adapters=True`` retrains them with the task
  (the released code's default) on copies the task owns, so the originals stay as they are.

Either runs alone, by name (``composition.check`` refuses them inside blocks). The base layers are
read through taps in the per-pass state (``taps.py``, ``context.ForwardState.tapped``), the
readout before the head is ``execution.BoundSetup.read_out``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from ..registry import MethodConfig
from .base import AdapterMethod, BindContext, require_adapter_names, require_transformer, select_layers
from .knowledge_net import KnowledgeNetwork

COMBINES = ("concat", "sum")


def default_taps(num_layers: int) -> tuple[int, ...]:
    """The paper's pattern, first, middle and last layer (0, 11, 23 of RoBERTa-large's 24):
    ``{0, L/2 - 1, L - 1}``."""
    return tuple(sorted({0, max(num_layers // 2 - 1, 0), num_layers - 1}))


@dataclass(frozen=True)
class KAdapterConfig(MethodConfig):
    """Args:
        layers: the base layers read (``l_1 .. l_K``; negative indices count from the top);
            None: first, middle and last (:func:`default_taps`; the paper's 0, 11, 23 of 24).
        transformer_layers: ``N``, transformer layers per adapter layer (the paper: 2).
        bottleneck_size: ``H_d = H_A``, the width the down-projection maps to and the adapter's
            transformer layers run at (the paper: 768 beside RoBERTa-large's 1024).
        intermediate_size: FFN width of those layers; None: ``4 · bottleneck_size`` (the
            released code: 3072).
        num_heads: their attention heads (the paper: 12); must divide ``bottleneck_size``.
        combine: ``concat`` (the paper's text) or ``sum`` (the released code): how an adapter
            layer's input joins the base layer's output and the former adapter layer's output.
        dropout: dropout inside the transformer layers (the released code: 0.1).
        init_std: initial standard deviation of the projections (the released code: 2e-4).
    """

    method = "k_adapter"
    layers: tuple[int, ...] | None = None
    transformer_layers: int = 2
    bottleneck_size: int = 128
    intermediate_size: int | None = None
    num_heads: int = 4
    combine: str = "concat"
    dropout: float = 0.1
    init_std: float = 2e-4
    option_values = {"combine": COMBINES}
    default_learning_rate = 5e-4
    learning_rate_source = (
        "the released code pretrains RoBERTa-large's adapters at 1e-5..3e-5 for hundreds of thousands of steps; "
        "small adapters trained from scratch for a few hundred CPU steps need more: 5e-4, what "
        "benchmarks/bench_kadapter.py pretrains with (not swept)"
    )

    def validate(self) -> None:
        if self.layers is not None and not self.layers:
            raise ValueError("k_adapter: layers names no layer; give base layer indices, e.g. layers=(0, 2, 5), or None")
        for name in ("transformer_layers", "bottleneck_size", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"k_adapter: {name} must be >= 1, got {getattr(self, name)}")
        if self.bottleneck_size % self.num_heads:
            raise ValueError(
                f"k_adapter: num_heads={self.num_heads} must divide bottleneck_size={self.bottleneck_size}"
            )
        if self.intermediate_size is not None and self.intermediate_size < 1:
            raise ValueError(f"k_adapter: intermediate_size must be >= 1 (or None), got {self.intermediate_size}")
        if self.combine not in COMBINES:
            raise ValueError(f"k_adapter: combine must be one of {COMBINES}, got {self.combine!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"k_adapter: dropout must be in [0, 1), got {self.dropout}")
        if not self.init_std > 0:
            raise ValueError(f"k_adapter: init_std must be > 0, got {self.init_std}")


class KAdapter(AdapterMethod):
    """One knowledge adapter: its :class:`KnowledgeNetwork` and a head over ``[h_L ; o_K]``."""

    capabilities = frozenset({"knowledge"})

    def __init__(self, config: KAdapterConfig, ctx: BindContext):
        super().__init__(config, ctx)
        require_transformer(ctx, config.method)
        count = ctx.parts.num_layers
        taps = default_taps(count) if config.layers is None else select_layers(config.layers, count, "k_adapter")
        self.network = KnowledgeNetwork(
            taps, ctx.parts.hidden_size, config.bottleneck_size, config.num_heads,
            config.intermediate_size or 4 * config.bottleneck_size, config.transformer_layers,
            config.combine, config.dropout, config.init_std,
        )  # fmt: skip

    def head_width(self, hidden_size: int) -> int:
        return 2 * hidden_size

    def readers(self, adapters: Mapping[str, AdapterMethod]) -> tuple[nn.Module, ...]:
        return (self.network,)


@dataclass(frozen=True)
class KTaskConfig(MethodConfig):
    """Args:
        adapters: the knowledge adapters (``k_adapter``) whose outputs the head reads, in order.
        train_adapters: retrain them with the task, on copies this adapter owns and saves (the
            originals stay bit-identical); False (default): only the head trains.
    """

    method = "k_task"
    adapters: tuple[str, ...] = ()
    train_adapters: bool = False
    default_learning_rate = 1e-3
    learning_rate_source = "a head on frozen features (the knowledge adapters frozen): 1e-3, as for a probe"

    def validate(self) -> None:
        require_adapter_names("k_task", self.adapters, "('facts', 'syntax')")


class KTask(AdapterMethod):
    """A task head over the model and knowledge adapters; owns nothing else unless it retrains
    them (``train_adapters``: copies of their networks, ``copies.<name>``)."""

    capabilities = frozenset({"knowledge"})

    def __init__(self, config: KTaskConfig, ctx: BindContext):
        super().__init__(config, ctx)
        self.who = f"k_task {ctx.name!r}"
        networks = _networks(config.adapters, ctx.adapters, self.who)
        self.copies = nn.ModuleDict({n: copy.deepcopy(net) for n, net in networks.items()}) if config.train_adapters else None

    def head_width(self, hidden_size: int) -> int:
        return hidden_size * (1 + len(self.config.adapters))

    def readers(self, adapters: Mapping[str, AdapterMethod]) -> tuple[nn.Module, ...]:
        networks = self.copies if self.copies is not None else _networks(self.config.adapters, adapters, self.who)
        return tuple(networks[name] for name in self.config.adapters)


def _networks(names: tuple[str, ...], adapters: Mapping[str, nn.Module], who: str) -> dict[str, nn.Module]:
    """The knowledge networks of ``names`` among ``adapters``.

    Raises:
        ValueError: a name that is no adapter of the model, or no ``k_adapter``.
    """
    missing = [n for n in names if n not in adapters]
    if missing:
        raise ValueError(
            f"{who} reads knowledge adapters {missing}, which are not on the model; add or load them first "
            "(model.load_adapter(folder) for a saved one; --knowledge DIR with `adapterkit train`)"
        )
    wrong = [n for n in names if not isinstance(adapters[n], KAdapter)]
    if wrong:
        methods = {n: adapters[n].config.method for n in wrong}
        raise ValueError(f"{who} reads knowledge adapters (k_adapter); {methods} are not")
    return {n: adapters[n].network for n in names}
