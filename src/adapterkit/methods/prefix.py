"""Prefix tuning: learned keys and values prepended at every attention layer (Li & Liang 2021,
arXiv:2101.00190).

Each adapted layer gets ``l`` key and ``l`` value vectors that every query attends to besides the
tokens (the math and the single place where they enter the model are in ``attention.py``):

    head = softmax(q [P_k; K]ᵀ / √d_h + [0 | M]) [P_v; V],      P_k, P_v: l x d_kv

so a prefix adapter adds ``layers x 2 x l x d_kv`` parameters (``d_kv`` the width of the key
projection: the hidden size, or ``kv_heads x head_dim`` under grouped-query attention).

**Reparameterisation** (Sec. 4.3): optimising ``P`` directly is unstable, so during training
``P = MLP(P')`` with a small ``P'`` (``l x d``) and a two-layer tanh MLP whose output holds every
layer's keys and values. Only ``P`` matters afterwards: :meth:`PrefixAdapter.fold` replaces the
MLP by the plain prefixes it computes (same outputs, config ``reparameterize=False``), so an
adapter folded before saving is saved, and loads, as a plain prefix. Saving never folds by itself:
a checkpoint taken mid-training must resume with the MLP and its optimizer state. While
reparameterised the adapter trains ``l·d + (d·h + h) + (h·n + n)`` parameters (``h`` the MLP
width, ``n = layers x 2 x d_kv``); at inference the MLP costs one small matrix product per layer.

**Positions** (``shift_positions``). The prefix takes no positions: the tokens keep theirs, as in Li
& Liang's formulation (and AdapterHub's). peft 0.21 hands the prefix to the model as a key/value
cache of length ``l``, so the model numbers the tokens after it, ``l .. l+n-1`` (and peft moves
given ``position_ids`` by ``l``, ``PeftModel._adjust_prompt_learning_kwargs``); on models with
absolute position embeddings (BERT) that changes every output, and on rotary decoders the
query-prefix scores. ``shift_positions=True`` reproduces it; the shift is applied by the sequence
hooks (``sequence.py``), the prefix module only declares it (:attr:`PrefixLayer.position_shift`),
and the shifted positions count against the model's maximum length.

**Initialisation** (Sec. 7.2: real-word activations beat random ones): ``vocab`` takes the keys and
values the frozen model computes for ``l`` random vocabulary tokens, ``text`` those of a given
text (cycled to length ``l``), ``random`` draws N(0, 1). Reparameterised, the choice concerns
``P'``: N(0, 1), or those tokens' embeddings scaled to unit variance. The default is ``random``
with the MLP (whose own initialisation spreads the prefix) and ``vocab`` without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .. import context
from ..attention import check_attention_module
from ..registry import MethodConfig
from .base import AdapterMethod, BindContext, require_transformer, select_layers

INITS = ("random", "vocab", "text")


def init_token_ids(ctx: BindContext, init: str, init_text: str | None, length: int, method: str) -> torch.Tensor:
    """The ``length`` token ids an init choice stands for: random vocabulary tokens (special tokens
    excluded when the tokenizer is known) or ``init_text`` (default: the head's label names)
    tokenised without special tokens and cycled to ``length``.

    Raises:
        ValueError: ``text`` without a text or label names, without a tokenizer, or a text that
            tokenises to nothing.
    """
    vocab_size = ctx.parts.embeddings.num_embeddings
    tokenizer = ctx.tokenizer
    if init == "vocab":
        special = set(getattr(tokenizer, "all_special_ids", None) or [])
        allowed = torch.tensor([i for i in range(vocab_size) if i not in special])
        return allowed[torch.randint(len(allowed), (length,))]
    text = init_text
    if text is None:
        if ctx.head is None or not ctx.head.label_names:
            raise ValueError(
                f"{method}: init='text' without init_text takes the class-label words from the head, but adapter "
                f"{ctx.name!r} has no head with label_names; pass init_text='...' or use init='vocab'"
            )
        text = " ".join(ctx.head.label_names)
    if tokenizer is None:
        raise ValueError(
            f"{method}: init='text' needs the model's tokenizer to read {text!r}; this model has none: give it "
            "one (AdapterModel(base, tokenizer=...)) or use init='vocab'"
        )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{method}: init_text {text!r} tokenises to no tokens; give a text with at least one word")
    return torch.tensor(ids)[torch.arange(length) % len(ids)]


@dataclass(frozen=True)
class PrefixConfig(MethodConfig):
    """Args:
        prefix_length: ``l``, the number of prefix positions per layer.
        reparameterize: train ``P = MLP(P')`` (Li & Liang) instead of ``P`` itself.
        reparam_hidden: width ``h`` of the reparameterisation MLP.
        init: ``vocab``, ``text`` or ``random``; None: ``random`` when reparameterised, else
            ``vocab`` (see the module docstring).
        init_text: the text for ``init='text'`` (default: the head's class-label words).
        layers: which layers get a prefix (None: all).
        shift_positions: number the tokens after the prefix, ``l .. l+n-1``, as peft does (see
            the module docstring); False keeps their positions ``0 .. n-1``.
    """

    method = "prefix"
    prefix_length: int = 30
    reparameterize: bool = True
    reparam_hidden: int = 512
    init: str | None = None
    init_text: str | None = None
    layers: tuple[int, ...] | None = None
    shift_positions: bool = False
    option_values = {"init": INITS}
    default_learning_rate = 1e-3
    learning_rate_source = "Li & Liang 2021 / P-tuning v2 train prefixes at 1e-4 .. 1e-2 depending on length and model"

    @property
    def initialisation(self) -> str:
        """``init`` with its default resolved."""
        return self.init or ("random" if self.reparameterize else "vocab")

    def validate(self) -> None:
        if self.prefix_length < 1:
            raise ValueError(f"{self.method}: prefix_length must be >= 1, got {self.prefix_length}")
        if self.reparam_hidden < 1:
            raise ValueError(f"{self.method}: reparam_hidden must be >= 1, got {self.reparam_hidden}")
        if self.init not in (*INITS, None):
            raise ValueError(f"{self.method}: unknown init {self.init!r}; use one of {', '.join(INITS)}")
        if self.init_text is not None and self.init != "text":
            raise ValueError(f"{self.method}: init_text is only read with init='text' (init is {self.init!r})")


class PrefixLayer(nn.Module):
    """The prefix of one attention layer: its own ``key``/``value`` (``l x d_kv``) or, while
    reparameterised, a view into the shared MLP's output.

    ``visible`` (``(batch, l)`` bool or None) hides the prefix from chosen examples of a batch;
    None, the default, shows it to all. ``position_shift`` is how far the tokens' positions move
    in passes with this prefix (``l`` with ``shift_positions``, else 0).
    """

    def __init__(
        self, length: int, width: int, source: PrefixMLP | None = None, index: int = 0, position_shift: int = 0
    ):
        super().__init__()
        self._source = [source] if source is not None else []  # a list: not a submodule
        self.index = index
        self.position_shift = position_shift
        if source is None:
            self.key = nn.Parameter(torch.randn(length, width))
            self.value = nn.Parameter(torch.randn(length, width))
        self.visible: torch.Tensor | None = None

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_k, P_v)``, each ``(l, d_kv)``; while reparameterised, read from the MLP's output,
        which the pass computes once for all layers (:meth:`pass_values`)."""
        if self._source:
            source = self._source[0]
            state = context.current()
            every = state.cached(self.cache_key, source.all) if state is not None else source.all()
            return every[self.index, 0], every[self.index, 1]
        return self.key, self.value

    @property
    def cache_key(self) -> tuple[str, int]:
        return ("prefix", id(self._source[0])) if self._source else ("prefix", id(self))

    def pass_values(self) -> dict:
        """What a pass computes once, before its first layer, for this prefix: the MLP's output
        for every layer while reparameterised (key -> function); nothing for a plain prefix.
        Computed outside any layer, it is also safe under gradient checkpointing."""
        return {self.cache_key: self._source[0].all} if self._source else {}


class PrefixMLP(nn.Module):
    """``P = MLP(P')``: ``P' (l, d) -> tanh(P' W_1ᵀ + b_1) W_2ᵀ + b_2``, the output ``(l, n·2·d_kv)``
    holding the keys and values of all ``n`` adapted layers."""

    def __init__(self, length: int, hidden_size: int, mlp_width: int, layers: int, width: int):
        super().__init__()
        self.layers, self.width = layers, width
        self.embedding = nn.Parameter(torch.randn(length, hidden_size))
        self.down = nn.Linear(hidden_size, mlp_width)
        self.up = nn.Linear(mlp_width, layers * 2 * width)

    def hidden(self) -> torch.Tensor:
        return torch.tanh(self.down(self.embedding))

    def all(self) -> torch.Tensor:
        """``(n, 2, l, d_kv)``."""
        out = self.up(self.hidden())  # (l, n * 2 * d_kv)
        return out.view(-1, self.layers, 2, self.width).permute(1, 2, 0, 3)


class PrefixAdapter(AdapterMethod):
    """Prefixes on the attention of the chosen layers; stored as ``layers.<i>.prefix``."""

    capabilities = frozenset({"fold"})

    def __init__(self, config: PrefixConfig, ctx: BindContext):
        super().__init__(config, ctx)
        require_transformer(ctx, config.method)
        parts = ctx.parts
        self.layer_indices = select_layers(config.layers, parts.num_layers, config.method)
        sites = [ctx.sites[f"{i}.attention"] for i in self.layer_indices]
        for site in sites:
            check_attention_module(site.output_module, parts.model_type)
        self.width = sites[0].width
        self.reparam = None
        if config.reparameterize:
            n = len(self.layer_indices)
            self.reparam = PrefixMLP(config.prefix_length, parts.hidden_size, config.reparam_hidden, n, self.width)
        shift = config.prefix_length if config.shift_positions else 0
        for j, site in enumerate(sites):
            self.attach(site, PrefixLayer(config.prefix_length, self.width, self.reparam, j, shift), key="prefix")
        self._initialise(ctx)

    def prefix_layers(self) -> list[PrefixLayer]:
        return [self.layers[str(i)]["prefix"] for i in self.layer_indices]

    @torch.no_grad()
    def _initialise(self, ctx: BindContext) -> None:
        config, parts = self.config, ctx.parts
        if config.initialisation == "random":
            return
        ids = init_token_ids(ctx, config.initialisation, config.init_text, config.prefix_length, config.method)
        ids = ids.to(parts.embeddings.weight.device)
        if self.reparam is not None:
            table = parts.embeddings.weight
            self.reparam.embedding.copy_(parts.embeddings(ids) / table.float().std().to(table.dtype))
            return
        modules = [m for i in self.layer_indices for m in (parts.layers[i].role("k")[0], parts.layers[i].role("v")[0])]
        outputs = ctx.record(modules, input_ids=ids[None])
        for j, layer in enumerate(self.prefix_layers()):
            layer.key.copy_(outputs[2 * j])
            layer.value.copy_(outputs[2 * j + 1])

    # ----------------------------------------------------------------- folding
    @torch.no_grad()
    def fold(self) -> bool:
        """Replace the reparameterisation MLP by the plain prefixes it computes (idempotent): the
        same outputs from ``layers x 2 x l x d_kv`` parameters. An optimizer holding the MLP's
        parameters must be rebuilt to train on. Returns whether anything changed."""
        if self.reparam is None:
            return False
        trainable = any(p.requires_grad for p in self.reparam.parameters())
        key_value = self.reparam.all()  # (n, 2, l, d_kv)
        for j, layer in enumerate(self.prefix_layers()):
            layer.key = nn.Parameter(key_value[j, 0].clone(), requires_grad=trainable)
            layer.value = nn.Parameter(key_value[j, 1].clone(), requires_grad=trainable)
            layer._source = []
        self.reparam = None
        self.config = dataclasses.replace(self.config, reparameterize=False)
        return True
