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
implementation (``adapterkit_sdpa``, ``adapterkit_eager``) that prepends the prefixes of the
adapters active in the forward pass and extends the mask, then calls the original function. A
model's config is switched to the wrapper while it carries a prefix and switched back when the
last one goes; the wrapper's mask builder is the original one, so masks are built exactly as
before. Nothing of the model is copied or renamed.

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
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from .placement import ResolvedModel

if TYPE_CHECKING:
    from .composition import Setup
    from .model import AdapterModel

SUPPORTED_IMPLEMENTATIONS = ("sdpa", "eager")
_WRAPPED = {impl: f"adapterkit_{impl}" for impl in SUPPORTED_IMPLEMENTATIONS}
_UNWRAPPED = {wrapped: impl for impl, wrapped in _WRAPPED.items()}


class Prefix(Protocol):
    """What a prefix attached to one attention layer provides."""

    visible: torch.Tensor | None
    """Optional ``(batch, l)`` bool: which examples of the batch see the prefix (None: all)."""

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


# ---------------------------------------------------------------------------------- routing
def plan(setup: Setup | None, available, what: str) -> tuple[list[tuple[str, torch.Tensor | None]], int]:
    """Which of the adapters named in ``available`` act in a forward pass with ``setup``, in order,
    each with the rows it acts on (None: all), and below which layer nothing acts.

    Prefixes and prompts change the attention's keys or the input sequence rather than a site's
    output, so composition blocks map onto them as follows: ``Stack`` concatenates them in
    stack order (``[P_a; P_b; K]``); ``AdapterDrop`` skips the lower layers; ``Routed`` shows each
    row only its own adapter's prefix (several users' prefixes in one batch). Fusing or running
    them in ``Parallel`` has no defined meaning and is an error, as is routing prompts per row
    (prompts of other rows would shift a row's positions).
    """
    from .composition import AdapterDrop, Routed, Stack

    if setup is None:
        return [], 0
    depth = 0
    if isinstance(setup, AdapterDrop):
        depth, setup = setup.depth, setup.inner
    if isinstance(setup, Routed):
        chosen = [(k, name) for k, name in enumerate(setup.names) if name in available]
        if chosen and what != "prefix":
            raise ValueError(f"{what} adapters ({', '.join(n for _, n in chosen)}) cannot be routed per row: "
                             "other rows' prompts would shift this row's positions; use prefix adapters or Stack")
        return [(name, setup.index == k) for k, name in chosen], depth
    items = setup.items if isinstance(setup, Stack) else (setup,)
    acting: list[tuple[str, torch.Tensor | None]] = []
    for item in items:
        if isinstance(item, str):
            if item in available:
                acting.append((item, None))
        elif any(name in available for name in item.adapter_names()):
            names = [n for n in item.adapter_names() if n in available]
            raise ValueError(
                f"{what} adapters ({', '.join(names)}) cannot run inside {type(item).__name__}: they change what "
                "attention sees rather than a sublayer's output; use them in a Stack, Routed or AdapterDrop"
            )
    return acting, depth


class _AttentionSite:
    """The prefixes attached to one attention module (of layer ``layer``), by adapter name.

    A forward pre-hook on the module re-installs the wrapper when the model's attention
    implementation was changed after the prefix was added (``set_attn_implementation``), so a
    prefix is never silently skipped.
    """

    def __init__(self, model: AdapterModel, layer: int, module: nn.Module):
        self.model = weakref.ref(model)  # the registry must not keep the model alive
        self.layer = layer
        self.prefixes: dict[str, Prefix] = {}
        self.handle = module.register_forward_pre_hook(self._ensure_wrapped)

    def _ensure_wrapped(self, module: nn.Module, args) -> None:
        impl = module.config._attn_implementation
        if impl in _WRAPPED:
            module.config._attn_implementation = _WRAPPED[impl]
        elif impl not in _UNWRAPPED and self.active():
            raise ValueError(_unsupported(impl))

    def active(self) -> list[tuple[Prefix, torch.Tensor | None]]:
        model = self.model()
        acting, depth = plan(model.current_setup() if model is not None else None, self.prefixes, "prefix")
        if self.layer < depth:
            return []
        return [(self.prefixes[name], rows) for name, rows in acting]


_SITES: weakref.WeakKeyDictionary[nn.Module, _AttentionSite] = weakref.WeakKeyDictionary()


def _wrapper(impl: str) -> Callable:
    def prefixed_attention(module, query, key, value, attention_mask, **kwargs):
        if impl == "sdpa":
            inner = ALL_ATTENTION_FUNCTIONS["sdpa"]
        else:
            inner = getattr(inspect.getmodule(type(module)), "eager_attention_forward", eager_attention)
        site = _SITES.get(module)
        prefixes = site.active() if site is not None else []
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


def attention_module(parts: ResolvedModel, layer: int) -> nn.Module:
    """The module of ``layer`` that computes attention (the parent of the q projection), checked
    to route through ``ALL_ATTENTION_FUNCTIONS``.

    Raises:
        ValueError: the architecture computes attention some other way (MPNet).
    """
    q_path = parts.placement.q
    holder = parts.layers[layer].layer
    module = holder.get_submodule(q_path.rsplit(".", 1)[0]) if "." in q_path else holder
    forward = inspect.unwrap(type(module).forward)
    if "ALL_ATTENTION_FUNCTIONS" not in forward.__code__.co_names or not hasattr(module, "config"):
        raise ValueError(
            f"prefix tuning needs a model whose attention goes through transformers' ALL_ATTENTION_FUNCTIONS, "
            f"but {type(module).__name__} (model type {parts.model_type!r}) computes attention in its own forward"
            f"{' with its relative position bias' if parts.model_type == 'mpnet' else ''}, so a prefix cannot be "
            "added without copying that code; on this model use prompt or deep_prompt (input-side prompts), "
            "LoRA or a bottleneck adapter instead"
        )
    return module


def attach_prefix(model: AdapterModel, layer: int, module: nn.Module, adapter_name: str, prefix: Prefix) -> None:
    """Make ``module`` (see :func:`attention_module`) prepend ``prefix`` whenever adapter
    ``adapter_name`` is active, switching the model's attention to the wrapper if needed."""
    configs = {id(c): c for c in (module.config, model.body.config)}.values()
    for config in configs:
        impl = config._attn_implementation
        if impl not in _WRAPPED and impl not in _UNWRAPPED:
            raise ValueError(_unsupported(impl))
    site = _SITES.get(module)
    if site is None:
        site = _SITES[module] = _AttentionSite(model, layer, module)
    site.prefixes[adapter_name] = prefix
    for config in configs:
        config._attn_implementation = _WRAPPED.get(config._attn_implementation, config._attn_implementation)


def detach_prefixes(model: AdapterModel, adapter_name: str) -> None:
    """Remove every prefix of ``adapter_name``; once the model carries no prefix at all, give it
    back its original attention implementation."""
    configs = {id(model.body.config): model.body.config}
    for module, site in list(_SITES.items()):
        if site.model() is model:
            site.prefixes.pop(adapter_name, None)
            configs[id(module.config)] = module.config
            if not site.prefixes:
                site.handle.remove()
                del _SITES[module]
    if not any(site.model() is model for site in _SITES.values()):
        for config in configs.values():
            config._attn_implementation = _UNWRAPPED.get(config._attn_implementation, config._attn_implementation)


# ---------------------------------------------------------------------------------- initialisation
@torch.no_grad()
def record(
    model: AdapterModel, modules: list[nn.Module], inputs: bool = False, **model_inputs: torch.Tensor
) -> list[torch.Tensor]:
    """Run the plain base model (its body) on ``model_inputs`` (``input_ids`` or ``inputs_embeds``
    of one example) in eval mode and return, for that example, what each of ``modules`` produced
    or, with ``inputs=True``, received (its first positional or ``hidden_states`` argument).
    Used to initialise prefixes and deep prompts from the activations of real tokens (Li & Liang
    2021, Sec. 7.2)."""
    seen: dict[int, torch.Tensor] = {}

    def grab(index: int):
        if inputs:
            def hook(module, args, kwargs):
                seen[index] = (args[0] if args else kwargs["hidden_states"])[0]
            return hook

        def hook(module, args, output):
            seen[index] = (output[0] if isinstance(output, tuple) else output)[0]
        return hook

    handles = [
        m.register_forward_pre_hook(grab(i), with_kwargs=True) if inputs else m.register_forward_hook(grab(i))
        for i, m in enumerate(modules)
    ]
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with model.using(None):
            model.body(**model_inputs)
    finally:
        for module, mode in modes.items():
            module.training = mode
        for handle in handles:
            handle.remove()
    return [seen[i].detach().clone() for i in range(len(modules))]
