"""Prompt positions in front of the input: the hooks behind prompt tuning and deep prompts.

Prompt tuning prepends ``k`` learned vectors to the token embeddings; deep prompts also replace
the hidden states of those ``k`` positions at the input of every layer (``methods/prompt.py``
has the math). :class:`PromptHooks` does this for one model, the same way for encoders and
decoders, for ``forward`` and ``generate``:

* a pre-hook on the transformer body turns ``input_ids`` into embeddings, prepends the prompts of
  the pass (``BoundSetup.prompts``, in stack order), extends a 2-D attention mask, shifts given
  ``position_ids`` and extends ``token_type_ids``; for prompts inserted after the embedding layer
  (``insert_at='embedding_output'``) it only extends the mask, and a hook on the embedding layer
  prepends them to its output;
* a pre-hook on each layer puts the layer's own prompt vectors in place (deep prompts);
* a hook on the body's output drops the prompt positions, so heads, pooling and the LM loss see
  exactly the tokens.

**Positions on decoders.** A causal decoder given no ``position_ids`` numbers positions
``0, 1, ...`` across padding; with rotary embeddings only distances matter, so a left-padded row
still computes what it computes alone, until something without those positions enters: a
prompt's distance to the tokens grows with the padding, and a prefix's keys carry no rotation, so
a query's score against them depends on its absolute position. So in every pass with prompts or
prefixes on a decoder the hook numbers each row's tokens from its first real token (at 0, or
right after the prompt), as ``generate`` does, and every row gets the result it gets alone
whatever the padding side. Rows without left padding keep the model's own numbering, and passes
without prompts or prefixes are left alone.

**Positions after a prefix** (``shift_positions``, peft's numbering; ``methods/prefix.py``): in passes
with such prefixes the hook moves the tokens' positions by their lengths (each ``Routed`` row by
its own): the positions the model would give the tokens itself (RoBERTa's padding tokens stay at
its padding index) or those given, as peft moves given ones. They count against the model's
maximum length like prompts before the embedding layer, and cannot be combined with those.

During cached generation the prompt enters the cache with the first step; later steps only
extend the mask and shift positions, so cached and uncached generation agree. What was prepended
is kept in the pass's state (``state.prompts``), so layers recomputed by gradient checkpointing
see the same prompts.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from . import context
from .heads import SEQUENCE_START
from .placement import ResolvedModel


def embedding_layer(parts: ResolvedModel) -> nn.Module | None:
    """The model's embedding layer around its token lookup, the module whose output enters the
    first layer (BERT's ``embeddings``: token, position and token-type embeddings, LayerNorm,
    dropout); None when the token lookup is all there is (Llama: its positions act in attention)."""
    first_layer = parts.layers[0].layer
    for module in parts.root.modules():
        if any(child is parts.embeddings for child in module.children()):
            holds_layers = any(m is first_layer for m in module.modules())
            return None if holds_layers else module
    return None


def max_positions(parts: ResolvedModel) -> int | None:
    """How many positions the model reads (None: no fixed limit known). Models that number
    positions from ``padding_idx + 1`` (RoBERTa, MPNet) lose those first ones."""
    limit = getattr(parts.root.config, "max_position_embeddings", None)
    if limit is None:
        return None
    offset = getattr(embedding_layer(parts), "padding_idx", None)
    return limit if offset is None else limit - offset - 1


def _mask_positions(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Positions of the last ``length`` tokens, each row numbered from its first real token (left
    padding takes no positions): ``(batch, length)`` from ``mask (batch, total)``. A row without
    left padding keeps the model's own ``0, 1, ...``, its right padding included."""
    first = mask.long().argmax(-1, keepdim=True)  # where each row's tokens start
    return (torch.arange(mask.shape[-1], device=mask.device) - first).clamp(min=0)[:, -length:]


def _attended_first(mask: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """A 2-D mask ``(batch, seq)`` with ``k`` attended positions in front (None stays None)."""
    return None if mask is None else torch.cat([mask.new_ones(mask.shape[0], k), mask], dim=1)


class PromptHooks:
    """The hooks of one model's body and layers that put the pass's prompts in place and, on a
    decoder, number positions from the mask in passes with prompts or prefixes (see the module
    docstring).

    Args:
        parts: the resolved model.
        body: the transformer without any LM head (its ``forward`` takes ``input_ids``,
            ``inputs_embeds``, ``attention_mask``, ...).
        owner: the model's site router; only passes of that model are acted on.
    """

    def __init__(self, parts: ResolvedModel, body: nn.Module, owner: Any):
        self.parts = parts
        self.owner = owner
        self.limit = max_positions(parts)
        self.decoder = parts.placement.decoder
        self.names = [
            p.name
            for p in inspect.signature(body.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        self.handles = [
            body.register_forward_pre_hook(self._before, with_kwargs=True),
            body.register_forward_hook(self._after),
        ]
        self.embedding = embedding_layer(parts)
        if self.embedding is not None:
            self.handles.append(self.embedding.register_forward_hook(self._after_embeddings))
        for layer in parts.layers[1:]:
            self.handles.append(layer.layer.register_forward_pre_hook(self._layer_hook(layer.index), with_kwargs=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _before(self, body: nn.Module, args: tuple, kwargs: dict):
        state = context.current(self.owner)
        if state is None:
            return None
        setup = state.setup
        prompts = setup.prompts
        state.prompts, state.prompt_length = (), 0
        numbered = self.decoder and (bool(prompts) or setup.has_prefixes())
        if not numbered and not prompts and not setup.shifts_positions:
            return None
        kwargs = {**dict(zip(self.names, args)), **kwargs}
        k = setup.prompt_length
        mask = kwargs.get("attention_mask")
        if prompts and mask is not None and mask.dim() != 2:
            raise ValueError(
                f"prompt tuning extends 2-D attention masks (batch, seq); got a {mask.dim()}-D mask: "
                "pass the tokenizer's attention_mask"
            )
        given = kwargs.get("position_ids")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        tokens = kwargs.get("inputs_embeds")
        tokens = tokens if tokens is not None else kwargs["input_ids"]
        length = tokens.shape[1]
        positions = given
        if positions is None and mask is not None and mask.dim() == 2 and self.decoder:
            positions = _mask_positions(mask, length)
        if setup.shifts_positions:  # peft's numbering: the tokens after the prefix
            shift = setup.position_shift(state, tokens.shape[0], tokens.device)
            if positions is None:
                positions = self._own_positions(kwargs.get("input_ids"), length, past, shift, tokens.device)
            else:
                positions = positions + (shift[:, None] if isinstance(shift, torch.Tensor) else shift)
        if (prompts or setup.shifts_positions) and not past:
            self._check_length(length, setup.positions_taken)
        if not prompts:  # prefixes only: the tokens numbered from the mask (or shifted), nothing prepended
            if positions is None or (given is not None and not setup.shifts_positions):
                return None
            return (), {**kwargs, "position_ids": positions}
        if past:  # a later generation step: the prompt is in the cache already
            kwargs["attention_mask"] = _attended_first(mask, k)
            if positions is not None:
                kwargs["position_ids"] = positions + k
            return (), kwargs
        state.prompts, state.prompt_length = prompts, k
        kwargs["attention_mask"] = _attended_first(mask, k)
        if setup.prompt_insert_at == "embedding_output":  # the tokens keep their embeddings and positions
            if positions is not None:
                kwargs["position_ids"] = positions
            return (), kwargs
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = self.parts.embeddings(kwargs["input_ids"])
        batch = embeds.shape[0]
        prompt = torch.cat([p.prompt for p in prompts]).to(embeds.dtype)
        kwargs["inputs_embeds"] = torch.cat([prompt.expand(batch, -1, -1), embeds], dim=1)
        kwargs["input_ids"] = None
        if positions is not None:
            first = torch.arange(k, device=positions.device, dtype=positions.dtype)
            kwargs["position_ids"] = torch.cat([first.expand(*positions.shape[:-1], k), positions + k], dim=-1)
        types = kwargs.get("token_type_ids")
        if types is not None:
            kwargs["token_type_ids"] = torch.cat([types.new_zeros(*types.shape[:-1], k), types], dim=-1)
        return (), kwargs

    def _own_positions(
        self, input_ids: torch.Tensor | None, length: int, past: int, shift: int | torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        """The positions the model would give the tokens itself after ``past`` cached ones and
        ``shift`` more (an int, or ``(batch,)``): ``(batch or 1, length)``. Models numbering from
        ``padding_idx + 1`` (RoBERTa) keep their padding tokens at ``padding_idx``, as their
        embedding layer does with a cache."""
        offset = past + (shift[:, None] if isinstance(shift, torch.Tensor) else shift)
        steps = torch.arange(length, device=device)[None]
        pad = getattr(self.embedding, "padding_idx", None)
        if pad is None:
            return steps + offset
        if input_ids is None:
            return steps + pad + 1 + offset
        real = input_ids.ne(pad).long()
        return (real.cumsum(-1) + offset) * real + pad

    def _check_length(self, length: int, taken: int) -> None:
        """Refuse an input of ``length`` tokens that does not fit the model's positions beside the
        ``taken`` ones."""
        if self.limit is not None and length + taken > self.limit:
            raise ValueError(
                f"an input of {length} tokens plus {taken} positions for prompts or shifted prefixes exceeds the "
                f"{self.limit} positions this model reads; truncate inputs to at most {self.limit - taken} tokens "
                "(AdapterModel.token_budget tells it for a setup; the trainer, predict and evaluate truncate to it)"
            )

    def _after_embeddings(self, module: nn.Module, args: tuple, output: torch.Tensor):
        """Prompts inserted after the embedding layer (``insert_at='embedding_output'``): in front of its output."""
        state = context.current(self.owner)
        if state is None or not state.prompts or state.setup.prompt_insert_at != "embedding_output":
            return None
        prompt = torch.cat([p.prompt for p in state.prompts]).to(output.dtype)
        return torch.cat([prompt.expand(output.shape[0], -1, -1), output], dim=1)

    def _layer_hook(self, layer: int):
        def replace_prompts(module: nn.Module, args: tuple, kwargs: dict):
            state = context.current(self.owner)
            if state is None or not state.prompts:
                return None
            own = state.setup.prompts_at(layer, state)
            if not own:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            pieces, start = [], 0
            for prompt, vectors in zip(state.prompts, own):
                if vectors is None:  # a shallow prompt keeps what the layers below made of it
                    pieces.append(hidden[:, start : start + prompt.length])
                else:
                    pieces.append(vectors.vectors.to(hidden.dtype).expand(hidden.shape[0], -1, -1))
                start += prompt.length
            hidden = torch.cat([*pieces, hidden[:, start:]], dim=1)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return replace_prompts

    def _after(self, body: nn.Module, args: tuple, output):
        state = context.current(self.owner)
        k = state.prompt_length if state is not None else 0
        if not k:
            return None
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        state.cache[SEQUENCE_START] = hidden[:, 0]  # what heads pooling "first" read
        if isinstance(output, tuple):
            return (output[0][:, k:], *output[1:])
        output.last_hidden_state = output.last_hidden_state[:, k:]
        if getattr(output, "hidden_states", None) is not None:
            output.hidden_states = tuple(h[:, k:] for h in output.hidden_states)
        return output
