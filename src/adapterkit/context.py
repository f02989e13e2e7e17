"""The state of the forward pass in flight, in one place.

A forward pass through an adapted model needs a little state besides the tensors: which setup
runs (a :class:`~adapterkit.execution.BoundSetup`), the depth AdapterDrop sampled for this pass,
the shared batch size once ``Parallel`` has replicated the batch, the row index of a ``Routed``
batch, the prompt positions prepended at the input, sublayer inputs captured for the sites that
read them, and per-pass caches (a reparameterised prefix's MLP output, computed once per pass).
All of it lives in one :class:`ForwardState`, held in a :class:`contextvars.ContextVar`: every
hook reads it with :func:`current`, and none of them holds the model or writes onto modules or
composition blocks. Two threads (or two asyncio tasks) running different setups on one shared
model each see only their own state.

**Owners.** A state belongs to one model (its site router, ``owner``). A hook of another model
ignores it, and a model that runs inside another's pass enters its own state, which shadows the
outer one until it returns.

**Recomputation.** Gradient checkpointing reruns a layer during the backward pass, which may run
in autograd's worker threads where context variables do not follow. :class:`Replay` wraps a
checkpoint function: it takes a copy of the state when the layer first runs and re-enters a copy
of that copy while the layer is recomputed, so the recomputation sees exactly what the forward
saw, not what later layers wrote into the state since (the fusion attention that mixes the next
layer norm, values cached for the rest of the pass).

**Taps.** Callers that want to observe passes (the fusion-attention recorder of
:mod:`adapterkit.inference.fusion`) set them with :func:`tapping` around the passes; each new
state picks them up. Plug-ins that read the model from outside (K-Adapter's knowledge adapters,
``methods/kadapter.py``) get the outputs of the layers they read in ``tapped``: the hooks of
``taps.py`` keep each such layer's output there as the layer returns, and the readout before the
head (``execution.BoundSetup.read_out``) takes them from there; nothing is written onto a module.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

_STATE: contextvars.ContextVar[ForwardState | None] = contextvars.ContextVar("adapterkit_forward_state", default=None)
_TAPS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("adapterkit_taps", default={})


@dataclass
class ForwardState:
    """What one forward pass (or one ``using`` block) of one model needs besides its tensors.

    Attributes:
        owner: the site router of the model this pass runs on.
        setup: the bound setup that decides what runs at every site (``execution.BoundSetup``).
        training: whether the model was in training mode when the pass started.
        drop_depth: AdapterDrop: adapters of layers ``< drop_depth`` are skipped in this pass
            (the fixed ``first``, or the depth sampled for this pass by robust AdapterDrop).
        expand_rows: a ``Routed`` batch may meet ``k`` times its rows, each row repeated ``k``
            times in place (what ``generate`` does for beams and returned sequences).
        row_index: ``Routed``: the adapter slot of every row, ``(batch,)`` on the batch's device.
        parallel_batch: ``Parallel``: rows of the shared batch, once it has been replicated.
        parallel_from: ``Parallel``: the first layer whose input is replicated in this pass.
        prompt_length: prompt positions prepended to the input in this pass (0: none).
        prompts: the prompt modules prepended in this pass, in order.
        captured: sublayer inputs captured for sites whose modules read them (``site`` -> the
            sublayer input, ``(site, "residual")`` -> its residual input).
        cache: per-pass values (key -> tensor), e.g. a prefix MLP's output.
        tapped: outputs of the base layers the setup reads from outside the model (layer index
            -> hidden states ``(batch, seq, d)``), kept by ``taps.LayerTaps`` for the readout.
        taps: observers set with :func:`tapping` (name -> object).
    """

    owner: Any
    setup: Any
    training: bool = False
    drop_depth: int = 0
    expand_rows: bool = False
    row_index: torch.Tensor | None = None
    parallel_batch: int | None = None
    parallel_from: int | None = None
    prompt_length: int = 0
    prompts: tuple = ()
    captured: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    tapped: dict[int, torch.Tensor] = field(default_factory=dict)
    taps: dict[str, Any] = field(default_factory=dict)

    def snapshot(self) -> ForwardState:
        """A copy whose per-pass dicts (``captured``, ``cache``, ``tapped``) are its own: what a
        layer saw when it started, kept apart from what later layers write."""
        return dataclasses.replace(self, captured=dict(self.captured), cache=dict(self.cache), tapped=dict(self.tapped))

    def cached(self, key: Any, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` once per pass under ``key``: later calls in the same pass reuse it."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


def current(owner: Any = None) -> ForwardState | None:
    """The state of the pass in flight in this thread or task (None: no pass), or only if it
    belongs to ``owner`` when one is given."""
    state = _STATE.get()
    if state is None or (owner is not None and state.owner is not owner):
        return None
    return state


class entered:  # noqa: N801  (used as a function: ``with entered(state):``)
    """Make ``state`` the current state for the enclosed code; the previous one comes back after.
    (A class rather than a generator: it is entered on every forward pass.)"""

    __slots__ = ("state", "token")

    def __init__(self, state: ForwardState):
        self.state = state

    def __enter__(self) -> ForwardState:
        self.token = _STATE.set(self.state)
        return self.state

    def __exit__(self, *exc_info: object) -> None:
        _STATE.reset(self.token)


@contextlib.contextmanager
def tapping(**taps: Any) -> Iterator[None]:
    """Observers for the passes started in the enclosed code (see :attr:`ForwardState.taps`)."""
    token = _TAPS.set({**_TAPS.get(), **taps})
    try:
        yield
    finally:
        _TAPS.reset(token)


def taps() -> dict[str, Any]:
    """The observers set by the enclosing :func:`tapping` blocks (a new state copies them)."""
    return dict(_TAPS.get())


class Replay:
    """A checkpoint function that recomputes a layer under the state its forward pass saw.

    ``checkpoint_fn(function, *args)`` (``torch.utils.checkpoint.checkpoint`` with its options,
    as transformers' layers call it) runs ``function`` once in the forward pass and again in the
    backward pass. The wrapper takes a snapshot of the current state at the first call and
    re-enters a fresh copy of it for every later call; dropout masks are replayed by checkpointing
    itself (``preserve_rng_state``).

    Reentrant checkpointing runs the layer under ``no_grad`` and backpropagates each layer on its
    own, so a value computed once per pass outside the layer (``state.cache``) must not enter
    its graph: a reentrant layer runs with an empty cache of its own and computes what it needs.
    """

    def __init__(self, checkpoint_fn: Callable[..., Any]):
        self.checkpoint_fn = checkpoint_fn
        self.reentrant = bool(getattr(checkpoint_fn, "keywords", {}).get("use_reentrant", False))

    def __call__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        state = _STATE.get()
        seen = state.snapshot() if state is not None else None
        calls = []

        def replay(*inner_args: Any, **inner_kwargs: Any) -> Any:
            calls.append(None)
            with contextlib.ExitStack() as stack:
                current = state
                if seen is not None and len(calls) > 1:  # a recomputation: what the layer saw
                    current = stack.enter_context(entered(seen.snapshot()))
                if current is not None and self.reentrant:
                    stack.enter_context(_own_cache(current))
                return function(*inner_args, **inner_kwargs)

        return self.checkpoint_fn(replay, *args, **kwargs)


@contextlib.contextmanager
def _own_cache(state: ForwardState) -> Iterator[None]:
    shared, state.cache = state.cache, {}
    try:
        yield
    finally:
        state.cache = shared
