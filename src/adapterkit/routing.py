"""Batched site computation: many adapters in one batch, one gathered operation per site.

Per-sample routing (each row of a batch names its own adapter: different tasks or different users
in one batch, the seeds' "per-user prefixes run in parallel inside one mini-batch") and
:class:`~adapterkit.composition.Parallel` (one input replicated once per task) both need, at every
site, to apply a *different* adapter to each row. A Python loop over adapter groups (what peft's
mixed-adapter batches do) runs one small kernel per group and copies rows in and out; instead each
method's site module offers a *batched form* (:meth:`SiteModule.batched`) that stacks the weights
of the adapters at the site and applies them to every row at once:

    W_stack: (n + 1, ...)               weights of the n adapters, plus an all-zero identity slot
    W_rows = W_stack[index]             (rows, ...)   gathered: row r uses adapter index[r]
    y_r = bmm(z_r, W_rows^T)            one batched matmul for all rows

Two layouts share the code (``index`` argument of a batched form):

* ``index`` a ``LongTensor (rows,)``: row ``r`` uses adapter ``index[r]``; the value ``n`` (the
  identity slot) means "no adapter here" (a row that routes to none, or to an adapter with nothing
  attached at this site). Used by :class:`~adapterkit.composition.Routed`.
* ``index`` None: the batch is ``n`` equal blocks of rows, block ``k`` using adapter ``k`` (a
  ``None`` module is an identity block). No gather is needed: the rows are viewed as
  ``(n, block_rows * seq, d)`` and multiplied with the stacked weights directly. Used by
  :class:`~adapterkit.composition.Parallel`.

**Image layout.** The gathered operations read the features on the last dimension. A CNN's site
(``(batch, C, H, W)``) is viewed channels-last first (:func:`features_last`, a permuted view, no
copy) and the result permuted back (:func:`features_back`), so ``groups`` sees ``(rows, H·W, C)``.

Adapters of different sizes (bottleneck widths, LoRA ranks) are zero-padded to the largest: padded
down-projection rows give ``f(0) = 0`` for every supported non-linearity, and the matching padded
up-projection columns are zero, so padding changes nothing. The identity slot is all zeros, so an
unrouted row gets ``out + 0`` exactly.

Options one batched operation cannot mix (a ReLU and a GELU bottleneck, LoRA dropouts of 0.1
and 0 in training) split the modules into groups by :meth:`SiteModule.batch_key`; each group
runs its batched form with the other groups' rows as identity, so every row still gets exactly
its own adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .sites import SiteInputs, SiteModule

BatchedForward = Callable[[torch.Tensor | SiteInputs | None, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""``forward(x, out, index) -> out'`` of a batched form (see the module docstring for ``index``;
``x`` as the modules take it, see :func:`~adapterkit.sites.site_input`)."""


def has_batched_form(module: SiteModule) -> bool:
    """Whether ``module``'s class overrides :meth:`SiteModule.batched`."""
    return type(module).batched.__func__ is not SiteModule.batched.__func__


def stack_padded(tensors: Sequence[torch.Tensor | None], shape: Sequence[int]) -> torch.Tensor:
    """Stack ``tensors`` (``None``: zeros) zero-padded to ``shape``, plus a final all-zero slot.

    Returns ``(len(tensors) + 1, *shape)``. Differentiable: gradients reach every stacked tensor,
    so a routed batch trains all of its adapters at once (multi-task training).
    """
    like = next(t for t in tensors if t is not None)
    rows = []
    for t in [*tensors, None]:
        if t is None:
            rows.append(like.new_zeros(shape))
            continue
        pad = []
        for have, want in zip(reversed(t.shape), reversed(shape)):
            pad += [0, want - have]
        rows.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.stack(rows)


def select(stacked: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Per-row weights: ``stacked[index]`` (rows layout) or the ``n`` adapter slots (blocks layout)."""
    return stacked[:-1] if index is None else stacked[index]


def row_slots(index: torch.Tensor | None, n: int, rows: int, device: torch.device) -> torch.Tensor:
    """Each row's adapter slot, ``(rows,)``: ``index`` itself, or for the blocks layout (``index``
    None) ``k`` for the rows of block ``k``."""
    if index is not None:
        return index
    return torch.arange(n, device=device).repeat_interleave(rows // n)


def features_last(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``(batch, C, H, W)`` viewed as ``(batch, H, W, C)`` for the ``image`` layout; else ``t``."""
    return t.permute(0, 2, 3, 1) if layout == "image" else t


def features_back(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The inverse of :func:`features_last`."""
    return t.permute(0, 3, 1, 2) if layout == "image" else t


def groups(t: torch.Tensor, index: torch.Tensor | None, n: int) -> torch.Tensor:
    """View ``t (rows, ..., d)`` as ``(groups, tokens_per_group, d)`` for a batched matmul.

    Rows layout: one group per row. Blocks layout: one group per adapter (``n`` equal blocks).
    """
    if index is not None:
        return t.reshape(t.shape[0], -1, t.shape[-1])
    if t.shape[0] % n:
        raise ValueError(f"a batch of {t.shape[0]} rows does not split into {n} equal blocks")
    return t.reshape(n, -1, t.shape[-1])


def apply_batched(
    modules: Sequence[SiteModule | None], x: SiteInputs, out: torch.Tensor, index: torch.Tensor | None
) -> torch.Tensor:
    """Apply ``modules[index[r]]`` to row ``r`` of ``out`` (or module ``k`` to block ``k``).

    A site may hold modules of several classes (a LoRA delta and a BitFit bias on one projection)
    and, within a class, modules whose options one batched operation cannot mix; each group
    (class, :meth:`SiteModule.batch_key` and whether it reads the residual input) runs its batched
    form once with the other groups' rows as identity, given ``x`` as its modules take it
    (:func:`~adapterkit.sites.site_input`). Rows are disjoint between groups, so the order does
    not matter.
    """

    def key(m: SiteModule) -> tuple:
        return type(m), m.batch_key(), m.needs_residual

    for kind, batch_key, residual in dict.fromkeys(key(m) for m in modules if m is not None):
        group = [m if m is not None and key(m) == (kind, batch_key, residual) else None for m in modules]
        out = kind.batched(group)(x if residual else x.input, out, index)
    return out
