"""Prompt tuning (Lester et al. 2021, arXiv:2104.08691) and deep prompts (P-tuning v2, Liu et al.
2022, arXiv:2110.07602).

**Prompt tuning** prepends ``k`` learned vectors ``P`` (``k x d``) to the token embeddings:

    X' = [P; E(x)],      the model runs on X' (k + n positions),  the head reads only the n tokens

and adds ``k·d`` parameters. Lester et al. (Sec. 3.2) compare three initialisations: ``random``,
sampled vocabulary embeddings (``vocab``) and the embeddings of the class-label words (``text``,
any text may be given; it is cycled to length ``k``); label words were best for small models. Here
``random`` draws N(0, σ²) with σ the standard deviation of the model's own token embeddings, so
the prompt starts at the scale of real tokens (``init_std`` sets σ instead).

**Deep prompts** put prompts at every layer, not only at the input: at the input of each layer
``i >= 1`` the hidden states of the ``k`` prompt positions are *replaced* by that layer's learned
vectors ``P_i`` (``layers x k x d`` parameters in all), as in the paper's Fig. 2 (the deep
prompt tuning of VPT, Jia et al. 2022, is the same construction). The P-tuning v2 code realises its
per-layer prompts as key/value prefixes instead, which is what ``prefix`` with
``reparameterize=False`` gives. Layers' prompts start at the hidden states the frozen model
computes for the input prompt alone, so a fresh deep prompt behaves like a shallow one.

**How the input is changed** is the job of ``sequence.py``: the prompt adapter attaches itself at
the model's ``input`` site and its layer prompts at the ``layer_input`` sites; the prompt takes the
first ``k`` positions, so ``k`` plus the input length must fit the model's maximum length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..registry import MethodConfig
from ..sequence import max_positions
from ..sites import Site
from .base import AdapterMethod, BindContext
from .prefix import INITS, init_token_ids


@dataclass(frozen=True)
class PromptConfig(MethodConfig):
    """Args:
        prompt_length: ``k``, the number of prompt positions.
        init: ``vocab``, ``text`` or ``random`` (see the module docstring).
        init_text: the text for ``init='text'`` (default: the head's class-label words).
        init_std: for ``init='random'``, the standard deviation of the draw (None: that of the
            model's token embeddings; 1.0 is the unit normal of ``nn.Embedding``'s own init).
    """

    method = "prompt"
    deep: ClassVar[bool] = False
    prompt_length: int = 20
    init: str = "vocab"
    init_text: str | None = None
    init_std: float | None = None
    default_learning_rate = 3e-2
    learning_rate_source = "Lester et al. 2021 use 0.3 with Adafactor; with AdamW soft prompts need about 3e-2"

    def validate(self) -> None:
        if self.prompt_length < 1:
            raise ValueError(f"{self.method}: prompt_length must be >= 1, got {self.prompt_length}")
        if self.init not in INITS:
            raise ValueError(f"{self.method}: unknown init {self.init!r}; use one of {', '.join(INITS)}")
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
    ``i >= 1``. The adapter itself is what acts at the model's ``input`` site."""

    def __init__(self, config: PromptConfig, ctx: BindContext):
        super().__init__(config, ctx)
        parts = ctx.parts
        self.length = config.prompt_length
        limit = max_positions(parts)
        if limit is not None and self.length >= limit:
            raise ValueError(
                f"{config.method}: prompt_length {self.length} leaves no room for the input: this "
                f"{parts.model_type!r} model reads at most {limit} positions, prompt included; choose a prompt_length "
                "well below that"
            )
        self._input_site = ctx.sites["input"]
        self.prompt = nn.Parameter(torch.zeros(self.length, parts.hidden_size))
        if config.deep:
            for i in range(1, parts.num_layers):
                self.attach(ctx.sites[f"{i}.layer_input"], LayerPrompt(self.length, parts.hidden_size), key="prompt")
        self._initialise(ctx)

    def attachments(self) -> Iterator[tuple[Site, nn.Module]]:
        yield self._input_site, self
        yield from super().attachments()

    @torch.no_grad()
    def _initialise(self, ctx: BindContext) -> None:
        config, parts = self.config, ctx.parts
        embeddings = parts.embeddings
        if config.init == "random":
            std = config.init_std if config.init_std is not None else embeddings.weight.float().std().item()
            self.prompt.normal_(0.0, std)
        else:
            ids = init_token_ids(ctx, config.init, config.init_text, self.length, config.method)
            self.prompt.copy_(embeddings(ids.to(embeddings.weight.device)))
        if config.deep:
            layers = [parts.layers[i].layer for i in range(1, parts.num_layers)]
            inputs = ctx.record(layers, inputs=True, inputs_embeds=self.prompt[None])
            for i, hidden in enumerate(inputs, start=1):
                self.layers[str(i)]["prompt"].vectors.copy_(hidden)
