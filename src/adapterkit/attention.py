"""Prefixes on attention: extra keys and values that every attention layer sees.

Prefix tuning (Li & Liang 2021, arXiv:2101.00190, Sec. 4) gives each attention layer ``l`` learned
key and value vectors ``P_k, P_v`` (``l x d_kv``) in front of the keys and values of the tokens:

    head = softmax(q [P_k; K]ᵀ / √d_h + [0 | M]) [P_v; V]

where ``M`` is the model's own mask (padding, causality). The prefix is visible to every query;
the tokens keep their positions, because prefix keys carry none (absolute position embeddings
live in the hidden states; RoPE is applied to the tokens' keys before they get here).

**One place for every model.** Transformers 5 routes the attention of most models through one
registry of attention functions, ``ALL_ATTENTION_FUNCTIONS``, keyed by
``config._attn_implementation`` and called as ``f(module, query, key, value, attention_mask,
**kwargs)`` *after* the key/value cache is updated. adapterkit registers a wrapper per supported
implementation (``adapterkit_sdpa``, ``adapterkit_eager``) that asks the pass in flight
(``context.current()``) which prefixes this attention module prepends, in which order and for
which rows (``BoundSetup.prefixes``, from the ``attention`` sites), prepends them and extends the
mask, then calls the original function. A model's config is switched to the wrapper while it
carries a prefix and switched back when the last one goes (:class:`PrefixHooks`); the wrapper's
mask builder is the original one, so masks are built exactly as before. Nothing of the model is
copied or renamed.

**The cache.** Since the wrapper runs after the cache update, the cache only ever holds the
tokens' keys and values; the prefix is prepended afresh at every step, so a cached and an
uncached generation attend over the same keys and give the same tokens.

**Grouped-query attention.** Keys and values arrive per key/value head (``batch, kv_heads, seq,
head_dim``) before any repetition, so a prefix is ``l x (kv_heads · head_dim)``: the width of the
model's key projection, which is what is stored.

Models whose attention does not go through the registry (MPNet computes it inline, with its
relative position bias) cannot take a prefix without copying their forward code: adding one
raises an error that says so.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from . import context

SUPPORTED_IMPLEMENTATIONS = ("sdpa", "eager")
_WRAPPED = {impl: f"adapterkit_{impl}" for impl in SUPPORTED_IMPLEMENTATIONS}
_UNWRAPPED = {wrapped: impl for impl, wrapped in _WRAPPED.items()}


class Prefix(Protocol):
    """What a prefix attached to one attention layer provides."""

    visible: torch.Tensor | None
    """Optional ``(batch, l)`` bool: which examples of the batch see the prefix (None: all)."""
    position_shift: int
    """How far the tokens' positions move in passes with this prefix (peft's numbering; applied
    by ``sequence.py``, 0: none)."""

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P_k, P_v)``, each ``(l, d_kv)``."""
        ...


# ---------------------------------------------------------------------------------- the math
def prepend_prefixes(
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    prefixes: list[tuple[Prefix, torch.Tensor | None]],
    query_length: int,
    causal: bool,
    additive: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Prepend ``prefixes`` (in order) to ``key``/``value`` and give the mask matching columns.

    Args:
        key, value: ``(batch, kv_heads, seq, head_dim)``, ``seq`` counting cached tokens.
        prefixes: ``(prefix, rows)`` pairs; ``rows`` (``(batch,)`` bool or None: all) are the
            examples that see the prefix (per-sample routing), further limited by
            ``prefix.visible``.
        mask: the model's 4-D mask ``(batch or 1, heads or 1, query_length, seq)``: bool (True =
            attend) or additive float; None when the implementation needs none (no padding, and
            causality left to the kernel).
        causal: the layer is causal (decoders): when ``mask`` is None and several queries are
            processed, the causal mask of the tokens must be spelled out, because the kernel's
            own causal flag aligns queries with the first key, i.e. with the prefix.
        additive: build an additive float mask (eager attention) rather than a bool one when
            ``mask`` is None.
    """
    batch, kv_heads, seq, head_dim = key.shape
    keys, values, columns = [], [], []
    some_hidden = False
    for prefix, rows in prefixes:
        p_key, p_value = prefix.key_value()
        length = p_key.shape[0]
        if p_key.shape[-1] != kv_heads * head_dim:
            raise ValueError(
                f"prefix width {p_key.shape[-1]} does not match the attention's keys "
                f"({kv_heads} key/value heads x {head_dim}); was the adapter built for another model?"
            )
        # (l, kv_heads * head_dim) -> (batch, kv_heads, l, head_dim)
        for part, out in ((p_key, keys), (p_value, values)):
            out.append(part.to(key.dtype).view(length, kv_heads, head_dim).transpose(0, 1).expand(batch, -1, -1, -1))
        seen = torch.ones(1, length, dtype=torch.bool, device=key.device)
        if rows is not None:
            seen = seen & rows.to(key.device).bool()[:, None]
        if prefix.visible is not None:
            seen = seen & prefix.visible.to(key.device).bool()
        if seen.shape[0] not in (1, batch):
            raise ValueError(f"a prefix is routed to {seen.shape[0]} examples but the batch has {batch}")
        some_hidden = some_hidden or rows is not None or prefix.visible is not None
        columns.append(seen)
    if not keys:
        return key, value, mask
    key = torch.cat([*keys, key], dim=2)
    value = torch.cat([*values, value], dim=2)

    if mask is None:
        if not (causal and query_length > 1) and not some_hidden:
            return key, value, None  # every query sees every key, prefix included
        # the tokens' own mask, (1, 1, query_length, seq): query i sits at position seq - query_length + i
        if causal:
            at = torch.arange(query_length, device=key.device)[:, None] + (seq - query_length)
            mask = torch.arange(seq, device=key.device)[None, :] <= at
        else:
            mask = torch.ones(query_length, seq, dtype=torch.bool, device=key.device)
        mask = mask[None, None]
        if additive:
            mask = _additive(mask, key.dtype)
    # prefix columns: (batch or 1, 1, 1, l_total), broadcast over heads and queries
    visible = torch.cat([c.expand(max(x.shape[0] for x in columns), -1) for c in columns], dim=1)
    visible = visible[:, None, None, :]
    out_batch = max(mask.shape[0], visible.shape[0])
    shape = (out_batch, mask.shape[1], mask.shape[2])
    if mask.dtype == torch.bool:
        prefix_mask = visible.expand(*shape, -1)
    else:
        prefix_mask = _additive(visible, mask.dtype).expand(*shape, -1)
    mask = torch.cat([prefix_mask, mask.expand(*shape, -1)], dim=-1)
    return key, value, mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (True = attend) -> 0 / most negative value, as transformers' eager masks."""
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Plain attention for models whose file has no ``eager_attention_forward`` of its own.

    Shapes: ``query (batch, heads, q, head_dim)``, ``key/value (batch, kv_heads, k, head_dim)``.
    """
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


# ---------------------------------------------------------------------------------- the wrapper
def _wrapper(impl: str) -> Callable:
    def prefixed_attention(module, query, key, value, attention_mask, **kwargs):
        if impl == "sdpa":
            inner = ALL_ATTENTION_FUNCTIONS["sdpa"]
        else:
            inner = getattr(inspect.getmodule(type(module)), "eager_attention_forward", eager_attention)
        state = context.current()
        prefixes = state.setup.prefixes(module, state, key.shape[0], key.device) if state is not None else []
        if prefixes:
            causal = kwargs.get("is_causal")
            causal = getattr(module, "is_causal", False) if causal is None else causal
            key, value, attention_mask = prepend_prefixes(
                key, value, attention_mask, prefixes, query.shape[2], bool(causal), additive=impl == "eager"
            )
        return inner(module, query, key, value, attention_mask, **kwargs)

    prefixed_attention.__name__ = f"adapterkit_{impl}_attention"
    return prefixed_attention


for _impl, _name in _WRAPPED.items():
    AttentionInterface.register(_name, _wrapper(_impl))
    AttentionMaskInterface.register(_name, ALL_MASK_ATTENTION_FUNCTIONS[_impl])


def _unsupported(impl: str) -> str:
    return (
        f"prefix tuning supports the {' and '.join(SUPPORTED_IMPLEMENTATIONS)} attention implementations; "
        f"this model uses {impl!r}: call model.base.set_attn_implementation('sdpa')"
    )


def check_attention_module(module: nn.Module, model_type: str) -> None:
    """Check that ``module`` (a layer's attention, the parent of its q projection) routes through
    ``ALL_ATTENTION_FUNCTIONS``, where prefixes enter.

    Raises:
        ValueError: the architecture computes attention some other way (MPNet).
    """
    forward = inspect.unwrap(type(module).forward)
    if "ALL_ATTENTION_FUNCTIONS" not in forward.__code__.co_names or not hasattr(module, "config"):
        raise ValueError(
            f"prefix tuning needs a model whose attention goes through transformers' ALL_ATTENTION_FUNCTIONS, "
            f"but {type(module).__name__} (model type {model_type!r}) computes attention in its own forward"
            f"{' with its relative position bias' if model_type == 'mpnet' else ''}, so a prefix cannot be "
            "added without copying that code; on this model use prompt or deep_prompt (input-side prompts), "
            "LoRA or a bottleneck adapter instead"
        )


class PrefixHooks:
    """The model-wide part of prefix tuning: its attention switched to the wrapper while any prefix
    is attached, with a guard on every attention module that re-installs the wrapper when the
    implementation was changed afterwards (``set_attn_implementation``), so a prefix is never
    silently skipped. :meth:`remove` gives the model its original implementation back.

    Raises:
        ValueError: the model uses an attention implementation the wrapper does not support.
    """

    def __init__(self, modules: list[nn.Module]):
        self.configs = list({id(m.config): m.config for m in modules}.values())
        for config in self.configs:
            impl = config._attn_implementation
            if impl not in _WRAPPED and impl not in _UNWRAPPED:
                raise ValueError(_unsupported(impl))
        for config in self.configs:
            config._attn_implementation = _WRAPPED.get(config._attn_implementation, config._attn_implementation)
        self.handles = [m.register_forward_pre_hook(self._ensure_wrapped) for m in modules]

    @staticmethod
    def _ensure_wrapped(module: nn.Module, args) -> None:
        impl = module.config._attn_implementation
        if impl in _WRAPPED:
            module.config._attn_implementation = _WRAPPED[impl]
        elif impl not in _UNWRAPPED:
            state = context.current()
            if state is not None and state.setup.has_prefixes(module):
                raise ValueError(_unsupported(impl))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for config in self.configs:
            config._attn_implementation = _UNWRAPPED.get(config._attn_implementation, config._attn_implementation)


