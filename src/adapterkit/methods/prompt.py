"""Prompt tuning (Lester et al. 2021, arXiv:2104.08691) and deep prompts (P-tuning v2, Liu et al.
2022, arXiv:2110.07602).

**Prompt tuning** prepends ``k`` learned vectors ``P`` (``k x d``) to the token embeddings:

    X' = [P; E(x)],      the model runs on X' (k + n positions),  the head reads only the n tokens

and adds ``k·d`` parameters. Lester et al. (Sec. 3.2) compare three initialisations: ``random``,
sampled vocabulary embeddings (``vocab``) and the embeddings of the class-label words (``text``,
any text may be given; it is cycled to length ``k``); label words were best for small models, sampled
vocabulary close behind, random last. The default is ``vocab``: it works for every head, while label
words need a classification head's label names (regression, masked-LM and causal-LM heads have
none); ``init='text'`` asks for them. Here ``random`` draws N(0, σ²) with σ the standard deviation of the model's own token embeddings, so
the prompt starts at the scale of real tokens (``init_std`` sets σ instead). A prompt inserted after
the embedding layer (``insert_at``, below) starts from what tokens are there: the embedding
layer's outputs for the chosen tokens, and their σ (AdapterHub's ``from_string`` init copies the
token embeddings instead, off the scale of that place).

**Deep prompts** put prompts at every layer, not only at the input: at the input of each layer
``i >= 1`` the hidden states of the ``k`` prompt positions are *replaced* by that layer's learned
vectors ``P_i`` (``layers x k x d`` parameters in all), as in the paper's Fig. 2 (the deep
prompt tuning of VPT, Jia et al. 2022, is the same construction). The P-tuning v2 code realises its
per-layer prompts as key/value prefixes instead, which is what ``prefix`` with
``reparameterize=False`` gives. Layers' prompts start at the hidden states the frozen model
computes for the input prompt alone, so a fresh deep prompt behaves like a shallow one.

**Where the prompt goes** (``insert_at``). ``"input"`` (the default; Lester et al., peft): in front
of the token embeddings, *before* the embedding layer, so the prompt vectors get the position
embeddings of positions ``0 .. k-1`` (the tokens move to ``k ..``), the token-type embedding 0 and
the embedding LayerNorm, like tokens; ``k`` plus the input length must then fit the model's maximum
length. ``"embedding_output"`` (AdapterHub ``adapters`` 1.3, ``PromptTuningConfig`` with
``combine="prefix"``): in front of the embedding layer's *output*, so the prompt enters the first
layer as it is, without position or token-type embeddings or LayerNorm; the tokens keep their
positions ``0 .. n-1`` (so the prompt takes none of the model's positions) and their token types,
and the attention mask gains ``k`` attended positions in front, as AdapterHub does. Padding tokens
stay hidden from every query, the prompt's included: AdapterHub's eager BERT attention does the
same, while its SDPA attention (the default) widens the 4-D mask along the queries with "attend",
so there the prompt positions also attend to padding and a padded row's outputs depend on its
padding (unpadded rows agree). Models whose
embedding layer is only the token lookup (Llama: positions act inside attention) have no such
place, and refuse it. Either way the prompt positions are dropped before the head, and deep
prompts replace the same first ``k`` positions at every layer.

**How the input is changed** is the job of ``sequence.py``: the prompt adapter attaches itself at
the model's ``input`` site and its layer prompts at the ``layer_input`` sites.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..registry import MethodConfig
from ..sequence import embedding_layer, max_positions
from ..sites import Site
from .base import AdapterMethod, BindContext, require_transformer
from .prefix import INITS, init_token_ids

INSERTS = ("input", "embedding_output")
"""Where a prompt is inserted (see the module docstring)."""


@dataclass(frozen=True)
class PromptConfig(MethodConfig):
    """Args:
        prompt_length: ``k``, the number of prompt positions.
        init: ``vocab`` (sampled vocabulary tokens; the default: any head), ``text`` (the class-label
            words, best in Lester et al.; a classification head) or ``random`` (see the module docstring).
        init_text: the text for ``init='text'`` (default: the head's class-label words).
        init_std: for ``init='random'``, the standard deviation of the draw (None: that of the
            model's token embeddings; 1.0 is the unit normal of ``nn.Embedding``'s own init).
        insert_at: ``input`` (before the embedding layer: Lester et al., peft) or
            ``embedding_output`` (after it: AdapterHub); see the module docstring.
    """

    method = "prompt"
    deep: ClassVar[bool] = False
    prompt_length: int = 20
    init: str = "vocab"
    init_text: str | None = None
    init_std: float | None = None
    insert_at: str = "input"
    option_values = {"init": INITS, "insert_at": INSERTS}
    default_learning_rate = 3e-2
    learning_rate_source = "Lester et al. 2021 use 0.3 with Adafactor; with AdamW soft prompts need about 3e-2"

    def validate(self) -> None:
        if self.prompt_length < 1:
            raise ValueError(f"{self.method}: prompt_length must be >= 1, got {self.prompt_length}")
        if self.init not in INITS:
            raise ValueError(f"{self.method}: unknown init {self.init!r}; use one of {', '.join(INITS)}")
        if self.insert_at not in INSERTS:
            raise ValueError(f"{self.method}: unknown insert_at {self.insert_at!r}; use one of {', '.join(INSERTS)}")
        if self.init_text is not None and self.init != "text":
            raise ValueError(f"{self.method}: init_text is only read with init='text' (init is {self.init!r})")
        if self.init_std is not None and (self.init != "random" or not self.init_std > 0):
            raise ValueError(
                f"{self.method}: init_std must be > 0 and is only read with init='random' "
                f"(init is {self.init!r}, init_std {self.init_std})"
            )


@dataclass(frozen=True)
class DeepPromptConfig(PromptConfig):
    """Prompts at the input and at every layer (P-tuning v2); same options as ``prompt``."""

    method = "deep_prompt"
    deep = True
    default_learning_rate = 1e-2
    learning_rate_source = "free vectors like a soft prompt, but at every layer: between prompt (3e-2) and prefix (1e-3); not tuned"


class LayerPrompt(nn.Module):
    """The prompt replacing the prompt positions at the input of one layer: ``vectors (k, d)``."""

    def __init__(self, length: int, hidden_size: int):
        super().__init__()
        self.vectors = nn.Parameter(torch.zeros(length, hidden_size))


class PromptAdapter(AdapterMethod):
    """The input prompt (``prompt``, ``(k, d)``) and, for deep prompts, ``layers.<i>.prompt`` for
    ``i >= 1``. The adapter itself is what acts at the model's ``input`` site.

    Raises:
        ValueError: a prompt that leaves no positions for the input, or ``embedding_output`` on a
            model whose embedding layer is only the token lookup.
    """

    def __init__(self, config: PromptConfig, ctx: BindContext):
        super().__init__(config, ctx)
        require_transformer(ctx, config.method)
        parts = ctx.parts
        self.length = config.prompt_length
        self.insert_at = config.insert_at
        limit = max_positions(parts)
        if self.insert_at == "input" and limit is not None and self.length >= limit:
            raise ValueError(
                f"{config.method}: prompt_length {self.length} leaves no room for the input: this "
                f"{parts.model_type!r} model reads at most {limit} positions, prompt included; choose a prompt_length "
                "well below that"
            )
        if self.insert_at == "embedding_output" and embedding_layer(parts) is None:
            raise ValueError(
                f"{config.method}: insert_at='embedding_output' puts the prompt after the embedding layer's position "
                f"embeddings and LayerNorm (AdapterHub), but this {parts.model_type!r} model's embedding layer is only "
                "the token lookup (its positions act inside attention), so the two places are the same: use "
                "insert_at='input'"
            )
        self._input_site = ctx.sites["input"]
        self.prompt = nn.Parameter(torch.zeros(self.length, parts.hidden_size))
        if config.deep:
            for i in range(1, parts.num_layers):
                self.attach(ctx.sites[f"{i}.layer_input"], LayerPrompt(self.length, parts.hidden_size), key="prompt")
        self._initialise(ctx)

    @property
    def positions(self) -> int:
        """Positions of the model this prompt takes: ``k`` before the embedding layer, none after it."""
        return self.length if self.insert_at == "input" else 0

    def attachments(self) -> Iterator[tuple[Site, nn.Module]]:
        yield self._input_site, self
        yield from super().attachments()

    @torch.no_grad()
    def _initialise(self, ctx: BindContext) -> None:
        config, parts = self.config, ctx.parts
        if config.init == "random":
            std = config.init_std if config.init_std is not None else self._token_scale(ctx)
            self.prompt.normal_(0.0, std)
        else:
            ids = init_token_ids(ctx, config.init, config.init_text, self.length, config.method)
            self.prompt.copy_(self._tokens(ctx, ids))
        if config.deep:
            layers = [parts.layers[i].layer for i in range(1, parts.num_layers)]
            for i, hidden in enumerate(self._layer_inputs(ctx, layers), start=1):
                self.layers[str(i)]["prompt"].vectors.copy_(hidden)

    def _tokens(self, ctx: BindContext, ids: torch.Tensor) -> torch.Tensor:
        """What the tokens ``ids`` are where this prompt goes: their embeddings (``input``) or the
        embedding layer's output for them (``embedding_output``): ``(len(ids), d)``."""
        ids = ids.to(ctx.parts.embeddings.weight.device)
        if self.insert_at == "input":
            return ctx.parts.embeddings(ids)
        return ctx.record([embedding_layer(ctx.parts)], input_ids=ids[None])[0]

    def _token_scale(self, ctx: BindContext) -> float:
        """The standard deviation of real tokens where this prompt goes: over the whole embedding
        table (``input``), or over the embedding layer's output for ``k`` random tokens."""
        if self.insert_at == "input":
            return ctx.parts.embeddings.weight.float().std().item()
        return self._tokens(ctx, init_token_ids(ctx, "vocab", None, self.length, self.config.method)).float().std().item()

    def _layer_inputs(self, ctx: BindContext, layers: list[nn.Module]) -> list[torch.Tensor]:
        """What the frozen model computes at the inputs of ``layers`` for the input prompt alone,
        inserted where this prompt goes: ``(k, d)`` each."""
        if self.insert_at == "input":
            return ctx.record(layers, inputs=True, inputs_embeds=self.prompt[None])
        handle = embedding_layer(ctx.parts).register_forward_hook(lambda module, args, out: self.prompt[None].to(out.dtype))
        try:
            return ctx.record(layers, inputs=True, inputs_embeds=self.prompt[None])
        finally:
            handle.remove()
