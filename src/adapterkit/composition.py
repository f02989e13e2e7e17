"""Composition of adapters: which adapters run in a forward pass, and how they combine.

A *setup* is a small tree of blocks, checked for shape when it is built and against the model
(names, heads, fusion layers) when it is activated. At every site the router hands the setup the
modules attached there (keyed by adapter name) and the setup combines them:

* ``Stack(a, b)``: ``out -> a -> b``; the output of ``a`` feeds ``b`` (a language adapter under a
  task adapter, LoRA plus a bottleneck, ...). A single adapter name is a one-element stack.
* ``Fuse(a, b, ..., fusion=f)``: AdapterFusion (``fusion.py``): every child reads the same ``out``
  and the fusion layer ``f`` attends over their outputs. The name of a fusion alone means
  ``Fuse(*its adapters, fusion=name)``.
* ``Parallel(a, b, ...)``: several tasks on one input in one forward pass. The layers below the
  first adapted one run once on the shared batch; there the batch is replicated, one copy per
  branch (rows ``[k·B, (k+1)·B)`` belong to branch ``k``), and each branch gets its own head output.
* ``Routed([a, None, b, a, ...])``: per-sample routing; row ``r`` of the batch uses adapter
  ``rows[r]`` (or none) and that adapter's head. Computed as one gathered batched operation over the
  stacked weights of the adapters at each site (``routing.py``), not a loop over adapter groups.
* ``AdapterDrop(setup, first=n)``: no adapter acts in the first ``n`` layers (Rücklé et al. 2021);
  with ``robust=True`` each training batch drops a random number of lower layers instead.

Allowed nestings (anything else is an error when the block is built):

===============  ===========================================================
block            children
===============  ===========================================================
Stack            names, Fuse, Parallel (a Parallel only as the last element)
Fuse             names, Stack of names
Parallel         names, Stack (without Parallel), Fuse
Routed           names or None, one per row
AdapterDrop      any one block but AdapterDrop (it wraps the whole setup)
===============  ===========================================================

Adapters that have nothing attached at a site (a Pfeiffer adapter at an attention site, a layer
excluded by ``layers=``) are skipped there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from . import fusion as _fusion  # noqa: F401  (registers the fusion method)
from .heads import head_loss
from .routing import apply_batched, has_batched_form
from .sites import Site, SiteModule

if TYPE_CHECKING:
    from .model import AdapterModel


class Setup:
    """Base of all composition blocks."""

    multi_output = False
    """True when the forward pass returns one head output per task (:class:`MultiTaskOutput`)."""

    def children(self) -> tuple[str | Setup, ...]:
        return ()

    def adapter_names(self) -> tuple[str, ...]:
        """Every adapter name the setup uses (fusions included), in order."""
        names: list[str] = []
        for child in self.children():
            names += [child] if isinstance(child, str) else list(child.adapter_names())
        return tuple(dict.fromkeys(names))

    def head_name(self) -> str | None:
        """The adapter whose head produces the output (None: hidden states, or one per task)."""
        raise NotImplementedError

    def apply(
        self, site: Site, attached: Mapping[str, SiteModule], x: torch.Tensor | None, out: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def touches(self, site: Site, attached: Mapping[str, SiteModule]) -> bool:
        """Whether :meth:`apply` can change ``out`` at ``site``."""
        return any(_touches(child, site, attached) for child in self.children())

    def bind(self, model: AdapterModel) -> Setup:
        """Check the setup against ``model`` and return the setup to run (fusion names expanded).

        Raises:
            ValueError: naming what is wrong (unknown adapter, missing head, misplaced fusion, ...).
        """
        return self

    def walk(self) -> Iterator[Setup]:
        """This block and every block below it, parents first."""
        yield self
        for child in self.children():
            if isinstance(child, Setup):
                yield from child.walk()

    @contextlib.contextmanager
    def per_forward(self, model: AdapterModel, root: Setup) -> Iterator[None]:
        """State for one forward pass through ``model`` (entered by :func:`forward_context`)."""
        yield

    def outputs(self, model: AdapterModel, hidden: torch.Tensor, attention_mask, labels) -> MultiTaskOutput:
        raise NotImplementedError(f"{type(self).__name__} has a single output")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.children()))})"


# ----------------------------------------------------------------------------- helpers
def _touches(item: str | Setup, site: Site, attached: Mapping[str, SiteModule]) -> bool:
    return item in attached if isinstance(item, str) else item.touches(site, attached)


def _apply(item: str | Setup, site: Site, attached, x, out) -> torch.Tensor:
    if isinstance(item, str):
        module = attached.get(item)
        return out if module is None else module(x, out)
    return item.apply(site, attached, x, out)


def _check_items(block: str, items: Sequence[Any], allowed: tuple[type, ...], hint: str) -> tuple:
    if not items:
        raise ValueError(f"{block}() needs at least one adapter")
    for item in items:
        if not isinstance(item, (str, *allowed)):
            kinds = ", ".join(["adapter names", *(t.__name__ for t in allowed)])
            raise ValueError(f"{block} cannot contain {item!r}: its elements are {kinds}. {hint}".rstrip())
    names = [i for i in items if isinstance(i, str)]
    if len(set(names)) != len(names):
        raise ValueError(f"{block}{tuple(items)} names an adapter twice")
    return tuple(items)


def _is_fusion(model: AdapterModel, name: str) -> bool:
    return getattr(model.adapters[name], "fuses_adapters", False)


def _expand_fusion(model: AdapterModel, item: str | Setup) -> str | Setup:
    """A bare fusion name means the fusion over its configured adapters."""
    if isinstance(item, str) and _is_fusion(model, item):
        return Fuse(*model.adapters[item].config.adapters, fusion=item).bind(model)
    return item if isinstance(item, str) else item.bind(model)


def _check_task_head(model: AdapterModel, name: str | None, block: str, branch: Any) -> None:
    if name is None or name not in model.heads:
        raise ValueError(
            f"{block}: {branch!r} has no head, but {block} gives every task its own head output; "
            f"add the adapter with head=HeadConfig(...) (or use a fusion with a head)"
        )
    if getattr(model.heads[name].config, "kind", None) == "causal_lm":
        raise ValueError(f"{block}: {branch!r} has a causal_lm head; {block} outputs need pooled heads")


def _check_unmerged(model: AdapterModel, names: Sequence[str], block: str) -> None:
    merged = [n for n in names if getattr(model.adapters[n], "merged", False)]
    if merged:
        raise ValueError(
            f"{block}: adapter(s) {merged} are merged into the base weights and so act on every row; unmerge them"
        )


# ----------------------------------------------------------------------------- Stack
class Stack(Setup):
    """Adapters applied one after the other at every site; the last one's head answers."""

    def __init__(self, *items: str | Setup):
        self.items = _check_items("Stack", items, (Fuse, Parallel), "")
        for item in self.items[:-1]:
            if isinstance(item, Parallel):
                raise ValueError("Stack: a Parallel can only be the last element (its branches end in their heads)")

    @property
    def names(self) -> tuple[str, ...]:
        return self.adapter_names()

    def children(self):
        return self.items

    @property
    def multi_output(self) -> bool:  # type: ignore[override]
        return isinstance(self.items[-1], Parallel)

    def head_name(self) -> str | None:
        last = self.items[-1]
        return last if isinstance(last, str) else last.head_name()

    def apply(self, site, attached, x, out):
        for item in self.items:
            out = _apply(item, site, attached, x, out)
        return out

    def bind(self, model):
        items = tuple(_expand_fusion(model, item) for item in self.items)
        if len(items) == 1 and isinstance(items[0], Setup):
            return items[0]  # a fusion's name alone is its Fuse
        return self if items == self.items else Stack(*items)

    def outputs(self, model, hidden, attention_mask, labels):
        return self.items[-1].outputs(model, hidden, attention_mask, labels)

    def __repr__(self) -> str:
        return f"Stack({', '.join(map(repr, self.items))})"


# ----------------------------------------------------------------------------- Fuse
class Fuse(Setup):
    """AdapterFusion over ``items`` with the fusion layers of adapter ``fusion`` (``fusion.py``).

    Every child reads the site's output ``out`` (its skip connection included in its output), and
    the fusion layer attends over the children active at the site, with ``out`` as the query.
    The fusion's head answers. ``fusion=None`` picks the one fusion on the model whose adapters
    include all of ``items``.
    """

    def __init__(self, *items: str | Stack, fusion: str | None = None):
        self.items = _check_items("Fuse", items, (Stack,), "Fuse each adapter (or Stack of adapters) once.")
        for item in self.items:
            if isinstance(item, Stack) and not all(isinstance(i, str) for i in item.items):
                raise ValueError(f"Fuse: a stacked child may only stack adapter names, got {item!r}")
        self.fusion = fusion

    def children(self):
        return self.items

    def adapter_names(self) -> tuple[str, ...]:
        return super().adapter_names() + ((self.fusion,) if self.fusion else ())

    def head_name(self) -> str | None:
        return self.fusion

    @staticmethod
    def label(item: str | Stack) -> str:
        return item if isinstance(item, str) else "+".join(item.adapter_names())

    def apply(self, site, attached, x, out):
        active = [item for item in self.items if _touches(item, site, attached)]
        if not active:
            return out
        layer = attached.get(self.fusion)
        if layer is None:
            raise RuntimeError(
                f"fusion {self.fusion!r} has no fusion layer at site {site.key}, where {active} act; "
                f"activate the setup through the model so it is checked"
            )
        fused, attention = layer.fuse(out, [_apply(item, site, attached, x, out) for item in active])
        if layer.recorder is not None:
            layer.recorder.add(site.key, [self.label(i) for i in active], attention)
        return fused

    def bind(self, model):
        model._check_names(Setup.adapter_names(self))
        for item in self.items:
            for name in [item] if isinstance(item, str) else item.items:
                if _is_fusion(model, name):
                    raise ValueError(f"Fuse: {name!r} is itself a fusion; fusions cannot be fused")
        fusion = self.fusion or self._find_fusion(model)
        model._check_names([fusion])
        if not _is_fusion(model, fusion):
            raise ValueError(
                f"Fuse(fusion={fusion!r}): {fusion!r} is a {model.adapters[fusion].config.method} adapter; "
                f"add a fusion with model.add_adapter({fusion!r}, 'fusion', adapters=(...))"
            )
        trained_on = model.adapters[fusion].config.adapters
        foreign = [i for i in self.items if isinstance(i, str) and i not in trained_on]
        if foreign:
            raise ValueError(f"fusion {fusion!r} fuses {trained_on}; {foreign} are not among them")
        bound = self if fusion == self.fusion else Fuse(*self.items, fusion=fusion)
        for site in model.router.sites():
            attached = model.router.attached(site)
            if fusion not in attached:
                active = [self.label(i) for i in self.items if _touches(i, site, attached)]
                if active:
                    raise ValueError(
                        f"fusion {fusion!r} has no fusion layer at site {site.key}, where {active} act; "
                        f"create the fusion with sublayers/layers covering every site of the fused adapters"
                    )
        return bound

    def _find_fusion(self, model: AdapterModel) -> str:
        wanted = {i for i in self.items if isinstance(i, str)}
        found = [n for n in model.adapters if _is_fusion(model, n) and wanted <= set(model.adapters[n].config.adapters)]
        if len(found) != 1:
            what = "no fusion" if not found else f"several fusions ({', '.join(found)})"
            raise ValueError(f"Fuse{self.items}: {what} on the model fuses these adapters; name one with fusion=...")
        return found[0]

    def __repr__(self) -> str:
        return f"Fuse({', '.join(map(repr, self.items))}, fusion={self.fusion!r})"


# ----------------------------------------------------------------------------- outputs of several heads
@dataclass
class MultiTaskOutput:
    """Head outputs of a :class:`Parallel` or :class:`Routed` forward pass.

    Attributes:
        tasks: per task (head name), its ``SequenceClassifierOutput`` over the rows it answered.
        rows: per task, the row indices of the input batch it answered (every row for Parallel).
        logits: for Routed batches whose rows all have heads of one width, the logits in row order.
        loss: Parallel: the sum of the tasks' losses; Routed: the mean loss per labelled row.
        last_hidden_state: the final hidden states (``P·B`` rows for Parallel, branch-major).
    """

    tasks: dict[str, SequenceClassifierOutput] = field(default_factory=dict)
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None

    def __getitem__(self, task: str) -> SequenceClassifierOutput:
        return self.tasks[task]


# ----------------------------------------------------------------------------- Parallel
class Parallel(Setup):
    """Several tasks on one input, in one forward pass, each with its own head.

    Below the first layer where a branch acts, the layers run once on the shared batch of ``B``
    rows; a forward pre-hook on that layer (and the later ones) replicates the hidden states and
    every other per-row input of the layer (attention mask, position bias, ...) to ``P·B`` rows,
    block ``k`` for branch ``k``. Each site then applies branch ``k`` to block ``k``: one batched
    operation over the branches' stacked weights when every branch is a single adapter, otherwise
    one call per branch on its block. With ``AdapterDrop(Parallel(...), first=n)`` the shared part
    is the first ``n`` layers: the saving AdapterDrop measures.
    """

    multi_output = True

    def __init__(self, *branches: str | Stack | Fuse):
        self.branches = _check_items("Parallel", branches, (Stack, Fuse), "Wrap the Parallel in AdapterDrop instead.")
        if len(self.branches) < 2:
            raise ValueError("Parallel() needs at least two branches; use the adapter alone for one task")
        for branch in self.branches:
            if isinstance(branch, Stack) and branch.multi_output:
                raise ValueError("Parallel: a branch cannot itself contain a Parallel")
        self._batch: int | None = None  # rows of the shared batch, once replicated in this forward

    def children(self):
        return self.branches

    def head_name(self) -> str | None:
        return None

    def task_names(self) -> tuple[str, ...]:
        return tuple(b if isinstance(b, str) else b.head_name() for b in self.branches)

    def apply(self, site, attached, x, out):
        if self._batch is None:
            if self.touches(site, attached):
                raise RuntimeError("a Parallel setup runs only through AdapterModel.forward (model(..., adapters=...))")
            return out
        n = len(self.branches)
        if all(isinstance(b, str) for b in self.branches):
            modules = [attached.get(b) for b in self.branches]
            present = [m for m in modules if m is not None]
            if not present:
                return out
            if all(has_batched_form(m) for m in present):
                return apply_batched(modules, x, out, None)
        rows = out.shape[0] // n
        blocks = []
        for k, branch in enumerate(self.branches):
            part = slice(k * rows, (k + 1) * rows)
            blocks.append(_apply(branch, site, attached, None if x is None else x[part], out[part]))
        return torch.cat(blocks)

    def bind(self, model):
        branches = tuple(_expand_fusion(model, b) for b in self.branches)
        for branch in branches:
            _check_task_head(model, branch if isinstance(branch, str) else branch.head_name(), "Parallel", branch)
        _check_unmerged(model, [n for n in Setup.adapter_names(self) if n in model.adapters], "Parallel")
        tasks = [b if isinstance(b, str) else b.head_name() for b in branches]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"Parallel: two branches answer with the same head ({tasks}); each task needs its own")
        return self if branches == self.branches else Parallel(*branches)

    @contextlib.contextmanager
    def per_forward(self, model, root):
        router = model.router
        adapted = [s.layer for s in router.sites() if root.touches(s, router.attached(s))]
        handles = []
        if adapted:
            replicated: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            copies = len(self.branches)

            def replicate(value):
                if isinstance(value, torch.Tensor):
                    if value.dim() < 2 or value.shape[0] != self._batch:
                        return value
                    if id(value) not in replicated:  # e.g. one position bias shared by every layer
                        replicated[id(value)] = (value, value.repeat(copies, *([1] * (value.dim() - 1))))
                    return replicated[id(value)][1]
                if isinstance(value, (tuple, list)):
                    return type(value)(replicate(v) for v in value)
                if isinstance(value, dict):
                    return {k: replicate(v) for k, v in value.items()}
                return value

            def pre_hook(module, args, kwargs):
                if self._batch is None:
                    first = next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
                    self._batch = first.shape[0]
                return replicate(args), replicate(kwargs)

            for parts in model.parts.layers[min(adapted) :]:
                handles.append(parts.layer.register_forward_pre_hook(pre_hook, with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._batch = None

    def outputs(self, model, hidden, attention_mask, labels):
        if labels is not None and not isinstance(labels, Mapping):
            raise ValueError("Parallel: give labels as a dict {task: labels}, one entry per task that has labels")
        tasks = self.task_names()
        chunks = hidden.chunk(len(tasks)) if self._batch is not None else [hidden] * len(tasks)
        result = MultiTaskOutput(last_hidden_state=hidden)
        all_rows = torch.arange(chunks[0].shape[0], device=hidden.device)
        for task, chunk in zip(tasks, chunks):
            head = model.heads[task]
            logits = head(chunk, attention_mask)
            loss = None
            if labels is not None and labels.get(task) is not None:
                loss = head_loss(head.config, logits, labels[task])
                result.loss = loss if result.loss is None else result.loss + loss
            result.tasks[task] = SequenceClassifierOutput(loss=loss, logits=logits)
            result.rows[task] = all_rows
        return result


# ----------------------------------------------------------------------------- Routed
class Routed(Setup):
    """Per-sample routing: row ``r`` of the batch uses adapter ``rows[r]`` (None: no adapter).

    Different tasks or different users in one batch. At every site the routed adapters' modules are
    stacked and applied with one gathered batched operation (``routing.py``); each row's output
    equals running that row alone with its adapter. Rows with a head get it applied to their
    hidden states; on a decoder whose routed adapters use the causal-LM head (or none), the model
    returns the base model's output as usual, each row adapted by its own adapter.
    """

    def __init__(self, rows: Sequence[str | None]):
        rows = tuple(rows)
        if not rows:
            raise ValueError("Routed() needs one entry (an adapter name or None) per row of the batch")
        bad = [r for r in rows if r is not None and not isinstance(r, str)]
        if bad:
            raise ValueError(f"Routed: every row names one adapter (or None); got {bad[:3]}. Routing takes names only")
        self.rows = rows
        self.names = tuple(dict.fromkeys(r for r in rows if r is not None))
        slot = {name: k for k, name in enumerate(self.names)}
        self.index = torch.tensor([slot[r] if r is not None else len(self.names) for r in rows])
        self._with_heads = True

    def adapter_names(self) -> tuple[str, ...]:
        return self.names

    @property
    def multi_output(self) -> bool:  # type: ignore[override]
        return self._with_heads

    def head_name(self) -> str | None:
        return None

    def touches(self, site, attached):
        return any(name in attached for name in self.names)

    def apply(self, site, attached, x, out):
        modules = [attached.get(name) for name in self.names]
        if all(m is None for m in modules):
            return out
        if out.shape[0] != len(self.rows):
            raise ValueError(f"Routed names {len(self.rows)} rows but the batch has {out.shape[0]}")
        if self.index.device != out.device:
            self.index = self.index.to(out.device)
        return apply_batched(modules, x, out, self.index)

    def bind(self, model):
        for name in self.names:
            if _is_fusion(model, name):
                raise ValueError(f"Routed: {name!r} is a fusion; route rows to single adapters")
        _check_unmerged(model, self.names, "Routed")
        heads = {n: model.heads[n] if n in model.heads else None for n in self.names}
        pooled = [n for n, h in heads.items() if h is not None and h.config.kind != "causal_lm"]
        if pooled and len(pooled) != len(self.names):
            missing = [n for n in self.names if n not in pooled]
            raise ValueError(
                f"Routed: adapters {missing} have no task head while {pooled} do; every routed adapter "
                f"needs a head (add it with head=HeadConfig(...)) or none of them may have one"
            )
        bound = Routed(self.rows)
        bound._with_heads = bool(pooled)
        return bound

    def outputs(self, model, hidden, attention_mask, labels):
        result = MultiTaskOutput(last_hidden_state=hidden)
        index = self.index.to(hidden.device)
        widths, losses, labelled = set(), [], 0
        pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k, name in enumerate(self.names):
            rows = (index == k).nonzero().squeeze(1)
            head = model.heads[name]
            mask = None if attention_mask is None else attention_mask[rows]
            logits = head(hidden[rows], mask)
            loss = None
            if labels is not None:
                loss = head_loss(head.config, logits, labels[rows])
                losses.append(loss * len(rows))
                labelled += len(rows)
            result.tasks[name] = SequenceClassifierOutput(loss=loss, logits=logits)
            result.rows[name] = rows
            widths.add(tuple(logits.shape[1:]))
            pieces.append((rows, logits))
        if len(widths) == 1 and len(self.names) and int((index < len(self.names)).sum()) == len(self.rows):
            width = widths.pop()
            combined = hidden.new_empty((len(self.rows), *width), dtype=pieces[0][1].dtype)
            for rows, logits in pieces:
                combined[rows] = logits
            result.logits = combined
        if losses:
            result.loss = torch.stack(losses).sum() / labelled
        return result

    def __repr__(self) -> str:
        return f"Routed({list(self.rows)!r})"


# ----------------------------------------------------------------------------- AdapterDrop
class AdapterDrop(Setup):
    """AdapterDrop (Rücklé et al. 2021, arXiv:2010.11918): no adapter acts in the lower layers.

    Args:
        setup: the setup to run in the remaining layers (name, list of names or block).
        first: at inference (and in training without ``robust``) adapters of layers
            ``0 .. first-1`` are skipped; fusion layers there too.
        robust: in training mode, every forward pass (every batch) skips a random number
            ``n ~ U{0, ..., L-1}`` of lower layers instead (Sec. 4, "robust" AdapterDrop), so the
            adapters learn to work at any drop depth and ``first`` can be chosen at inference.
    """

    def __init__(self, setup: str | Setup | Sequence[str], first: int = 0, robust: bool = False):
        inner = as_setup(setup)
        if isinstance(inner, AdapterDrop):
            raise ValueError("AdapterDrop cannot wrap another AdapterDrop; give one depth")
        if first < 0:
            raise ValueError(f"AdapterDrop: first must be >= 0, got {first}")
        self.inner = inner
        self.first = first
        self.robust = robust
        self._sampled: int | None = None

    def children(self):
        return (self.inner,)

    @property
    def depth(self) -> int:
        """How many lower layers skip their adapters in the forward pass in flight."""
        return self.first if self._sampled is None else self._sampled

    @property
    def multi_output(self) -> bool:  # type: ignore[override]
        return self.inner.multi_output

    def head_name(self) -> str | None:
        return self.inner.head_name()

    def touches(self, site, attached):
        return site.layer >= self.depth and self.inner.touches(site, attached)

    def apply(self, site, attached, x, out):
        return out if site.layer < self.depth else self.inner.apply(site, attached, x, out)

    def bind(self, model):
        if self.first > model.parts.num_layers:
            raise ValueError(f"AdapterDrop: first={self.first} but the model has {model.parts.num_layers} layers")
        inner = self.inner.bind(model)
        return self if inner is self.inner else AdapterDrop(inner, self.first, self.robust)

    @contextlib.contextmanager
    def per_forward(self, model, root):
        if self.robust and model.training:
            self._sampled = int(torch.randint(0, model.parts.num_layers, ()))
        try:
            yield
        finally:
            self._sampled = None

    def outputs(self, model, hidden, attention_mask, labels):
        return self.inner.outputs(model, hidden, attention_mask, labels)

    def __repr__(self) -> str:
        return f"AdapterDrop({self.inner!r}, first={self.first}, robust={self.robust})"


# ----------------------------------------------------------------------------- model-side hooks
def as_setup(value: str | Setup | list[str] | tuple[str, ...]) -> Setup:
    """Accept an adapter name, a list of names (stacked) or a setup."""
    if isinstance(value, Setup):
        return value
    if isinstance(value, str):
        return Stack(value)
    if isinstance(value, (list, tuple)):
        return Stack(*value)
    raise TypeError(f"cannot use {value!r} as adapters: give a name, a list of names or a composition block")


@contextlib.contextmanager
def forward_context(model: AdapterModel, setup: Setup | None) -> Iterator[None]:
    """Per-forward state of every block of ``setup`` (AdapterDrop's sampled depth, Parallel's
    batch replication), entered by ``AdapterModel.forward`` around the whole pass."""
    if setup is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        for block in setup.walk():  # parents first: a sampled drop depth is known before Parallel splits
            stack.enter_context(block.per_forward(model, setup))
        yield


def add_regularization(model: AdapterModel, setup: Setup | None, loss: torch.Tensor | None) -> torch.Tensor | None:
    """``loss`` plus the regularisers of the setup's fusions (AdapterFusion's ``λ ‖V - I‖²``), in
    training mode only: evaluation losses stay comparable across methods."""
    if loss is None or setup is None or not model.training:
        return loss
    for block in setup.walk():
        if isinstance(block, Fuse):
            loss = loss + model.adapters[block.fusion].regularization()
    return loss
