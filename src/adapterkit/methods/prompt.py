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

**How the input is changed.** A hook on the transformer body (the same for encoders and decoders,
for ``forward`` and ``generate``) turns ``input_ids`` into embeddings, prepends the prompts of the
adapters active in the pass (in setup order), extends a 2-D attention mask, shifts given
``position_ids`` and extends ``token_type_ids``; a hook on its output drops the prompt positions,
so heads, pooling and the LM loss see exactly the tokens. The prompt takes the first ``k``
positions, so ``k`` plus the input length must fit the model's maximum length. During cached
generation the prompt enters the cache with the first step; later steps only extend the mask and
shift positions, so cached and uncached generation agree.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..attention import plan, record
from ..placement import ResolvedModel
from ..registry import MethodConfig, register_method
from .base import AdapterMethod
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
    # free vectors like a soft prompt, but at every layer: between the prompt (3e-2) and prefix (1e-3)
    # defaults of training/config.py; not tuned
    default_learning_rate = 1e-2


def max_positions(parts: ResolvedModel) -> int | None:
    """How many positions the model reads (None: no fixed limit known). Models that number
    positions from ``padding_idx + 1`` (RoBERTa, MPNet) lose those first ones."""
    limit = getattr(parts.root.config, "max_position_embeddings", None)
    if limit is None:
        return None
    for module in parts.root.modules():
        offset = getattr(module, "padding_idx", None)
        if getattr(module, "word_embeddings", None) is parts.embeddings and offset is not None:
            return limit - offset - 1
    return limit


class LayerPrompt(nn.Module):
    """The prompt replacing the prompt positions at the input of one layer: ``vectors (k, d)``."""

    def __init__(self, length: int, hidden_size: int):
        super().__init__()
        self.vectors = nn.Parameter(torch.zeros(length, hidden_size))


class PromptAdapter(AdapterMethod):
    """The input prompt (``prompt``) and, for deep prompts, ``layers.<i>.prompt`` for ``i >= 1``."""

    def __init__(self, config: PromptConfig, parts, sites):
        super().__init__(config, parts, sites)
        self.length = config.prompt_length
        limit = max_positions(parts)
        if limit is not None and self.length >= limit:
            raise ValueError(
                f"{config.method}: prompt_length {self.length} leaves no room for the input: this "
                f"{parts.model_type!r} model reads at most {limit} positions, prompt included"
            )
        self.prompt = nn.Parameter(torch.zeros(self.length, parts.hidden_size))
        if config.deep:
            for i in range(1, parts.num_layers):
                self.layers[str(i)] = nn.ModuleDict({"prompt": LayerPrompt(self.length, parts.hidden_size)})

    def layer_prompt(self, layer: int) -> torch.Tensor | None:
        key = str(layer)
        return self.layers[key]["prompt"].vectors if key in self.layers else None

    def bind(self, model, name: str) -> None:
        self._initialise(model, name)
        PromptRouting.of(model).prompts[name] = self

    def unbind(self, model, name: str) -> None:
        routing = PromptRouting.find(model)
        if routing is not None:
            routing.prompts.pop(name, None)
            if not routing.prompts:
                routing.remove()

    @torch.no_grad()
    def _initialise(self, model, name: str) -> None:
        config = self.config
        embeddings = model.parts.embeddings
        if config.init == "random":
            std = config.init_std if config.init_std is not None else embeddings.weight.float().std().item()
            self.prompt.normal_(0.0, std)
        else:
            ids = init_token_ids(model, config.init, config.init_text, self.length, config.method, name)
            self.prompt.copy_(embeddings(ids.to(embeddings.weight.device)))
        if config.deep:
            layers = [model.parts.layers[i].layer for i in range(1, model.parts.num_layers)]
            inputs = record(model, layers, inputs=True, inputs_embeds=self.prompt[None])
            for i, hidden in enumerate(inputs, start=1):
                self.layers[str(i)]["prompt"].vectors.copy_(hidden)


class PromptRouting:
    """The hooks on one model's body that put the active prompts in front of the input.

    ``current`` holds the prompt adapters of the latest body call that prepended them (empty when
    it did not: no prompt active, or a cached generation step). It is kept until the next call, so
    layers re-run during a backward pass (gradient checkpointing) see the same prompts.
    """

    _of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, model):
        self.model = weakref.ref(model)
        self.prompts: dict[str, PromptAdapter] = {}
        self.current: tuple[PromptAdapter, ...] = ()
        self.depth = 0  # AdapterDrop: layers below this keep the prompt positions' own states
        body = model.body
        self.limit = max_positions(model.parts)
        self.names = [
            p.name
            for p in inspect.signature(body.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self.handles = [
            body.register_forward_pre_hook(self._before, with_kwargs=True),
            body.register_forward_hook(self._after),
        ]
        for parts in model.parts.layers[1:]:
            self.handles.append(parts.layer.register_forward_pre_hook(self._layer_hook(parts.index), with_kwargs=True))

    @classmethod
    def of(cls, model) -> PromptRouting:
        routing = cls._of.get(model)
        if routing is None:
            routing = cls._of[model] = cls(model)
        return routing

    @classmethod
    def find(cls, model) -> PromptRouting | None:
        return cls._of.get(model)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        model = self.model()
        if model is not None:
            self._of.pop(model, None)

    def _active(self) -> tuple[tuple[PromptAdapter, ...], int]:
        """The prompt adapters of the pass in order, and the layers below which deep prompts rest."""
        model = self.model()
        acting, depth = plan(model.current_setup() if model is not None else None, self.prompts, "prompt")
        return tuple(self.prompts[name] for name, _ in acting), depth

    # ----------------------------------------------------------------- hooks
    def _before(self, body: nn.Module, args: tuple, kwargs: dict):
        prompts, self.depth = self._active()
        self.current = ()
        if not prompts:
            return None
        kwargs = {**dict(zip(self.names, args)), **kwargs}
        k = sum(p.length for p in prompts)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ValueError(
                f"prompt tuning extends 2-D attention masks (batch, seq); got a {mask.dim()}-D mask: "
                "pass the tokenizer's attention_mask"
            )
        positions = kwargs.get("position_ids")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and cache.get_seq_length() > 0:
            # a later generation step: the prompt is in the cache already
            if mask is not None:
                kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], k), mask], dim=1)
            if positions is not None:
                kwargs["position_ids"] = positions + k
            return (), kwargs
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = self.model().parts.embeddings(kwargs["input_ids"])
        batch, length = embeds.shape[:2]
        if self.limit is not None and length + k > self.limit:
            raise ValueError(
                f"an input of {length} tokens plus {k} prompt positions exceeds the {self.limit} positions this "
                f"model reads; truncate inputs to at most {self.limit - k} tokens"
            )
        prompt = torch.cat([p.prompt for p in prompts]).to(embeds.dtype)
        kwargs["inputs_embeds"] = torch.cat([prompt.expand(batch, -1, -1), embeds], dim=1)
        kwargs["input_ids"] = None
        if mask is not None:
            kwargs["attention_mask"] = torch.cat([mask.new_ones(batch, k), mask], dim=1)
        if positions is not None:
            first = torch.arange(k, device=positions.device, dtype=positions.dtype)
            kwargs["position_ids"] = torch.cat([first.expand(*positions.shape[:-1], k), positions + k], dim=-1)
        types = kwargs.get("token_type_ids")
        if types is not None:
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(*types.shape[:-1], k), types], dim=-1)
        self.current = prompts
        return (), kwargs

    def _layer_hook(self, layer: int):
        def replace_prompts(module: nn.Module, args: tuple, kwargs: dict):
            if layer < self.depth or not any(p.layer_prompt(layer) is not None for p in self.current):
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            pieces, start = [], 0
            for p in self.current:
                own = p.layer_prompt(layer)
                if own is None:  # a shallow prompt keeps what the layers below made of it
                    pieces.append(hidden[:, start : start + p.length])
                else:
                    pieces.append(own.to(hidden.dtype).expand(hidden.shape[0], -1, -1))
                start += p.length
            hidden = torch.cat([*pieces, hidden[:, start:]], dim=1)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return replace_prompts

    def _after(self, body: nn.Module, args: tuple, output):
        k = sum(p.length for p in self.current)
        if not k:
            return None
        if isinstance(output, tuple):
            return (output[0][:, k:], *output[1:])
        output.last_hidden_state = output.last_hidden_state[:, k:]
        if getattr(output, "hidden_states", None) is not None:
            output.hidden_states = tuple(h[:, k:] for h in output.hidden_states)
        return output


register_method(PromptConfig, PromptAdapter)
register_method(DeepPromptConfig, PromptAdapter)
