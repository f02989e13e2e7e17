"""Gradient checkpointing of a base model's layers, with adapters recomputed as they ran.

Checkpointing recomputes a layer's forward pass during the backward pass, after the forward
pass has left its state (``context.py``): a plain recomputation would run no adapters, or other
ones, and non-reentrant checkpointing would then raise a metadata mismatch (or, worse, give
silently wrong gradients). The base model's checkpoint function is therefore wrapped in
:class:`~adapterkit.context.Replay`, which re-enters the forward pass's state while the layer is
recomputed.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .context import Replay


def enable_gradient_checkpointing(
    model: nn.Module,
    *,
    reentrant: bool = False,
    every_n_layers: int = 1,
    offload: bool = False,
    checkpoint_kwargs: dict[str, Any] | None = None,
) -> None:
    """Recompute each layer's activations of ``model`` (an ``AdapterModel``, or its base: a
    transformers ``PreTrainedModel``) in the backward pass instead of storing them.

    Non-reentrant checkpointing (the default) works with a frozen embedding layer as is. The
    reentrant variant only passes gradients through a layer whose *inputs* require grad; with
    frozen embeddings none does, so the embedding output is made to require grad
    (``enable_input_require_grads``).

    Args:
        reentrant: use ``torch.utils.checkpoint``'s reentrant implementation.
        every_n_layers, offload: as in transformers' ``activation_checkpointing_enable``.
        checkpoint_kwargs: more ``torch.utils.checkpoint.checkpoint`` options (its
            ``use_reentrant`` wins over ``reentrant``).
    """
    kwargs = {"use_reentrant": reentrant, **(checkpoint_kwargs or {})}
    base = getattr(model, "base", model)
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload)
    else:  # transformers releases before the rename
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if kwargs["use_reentrant"] and not getattr(base, "_require_grads_hooks", None) and not getattr(base, "_require_grads_hook", None):
        base.enable_input_require_grads()
    for module in base.modules():
        function = getattr(module, "_gradient_checkpointing_func", None)
        if function is not None and not isinstance(function, Replay):
            module._gradient_checkpointing_func = Replay(function)
