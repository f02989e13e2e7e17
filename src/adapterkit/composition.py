"""Composition of adapters: which adapters run in a forward pass, and how they combine.

A *setup* is a small tree of immutable blocks (frozen, hashable values with a JSON form that a
command-line flag or an HTTP request can carry). This module holds the blocks, the table of
allowed nestings, and the check of a setup against a read-only :class:`ModelView` of a model.
What a checked setup computes at each site is interpreted in one place, ``execution.py``.

* ``Stack(a, b)``: ``out -> a -> b``; the output of ``a`` feeds ``b`` (a language adapter under a
  task adapter, LoRA plus a bottleneck, ...). A single adapter name is a one-element stack.
  Prefixes and prompts of a stack are concatenated in stack order.
* ``Fuse(a, b, ..., fusion=f)``: AdapterFusion (``methods/fusion.py``): every child reads the same
  ``out`` and the fusion layer ``f`` attends over their outputs. The name of a fusion alone means
  ``Fuse(*its adapters, fusion=name)``.
* ``Parallel(a, b, ...)``: several tasks on one input in one forward pass. The layers below the
  first adapted one run once on the shared batch; there the batch is replicated, one copy per
  branch (rows ``[k·B, (k+1)·B)`` belong to branch ``k``), and each branch gets its own head output.
* ``Routed([a, None, b, a, ...])``: per-sample routing; row ``r`` of the batch uses adapter
  ``rows[r]`` (or none) and that adapter's head, computed as one gathered batched operation over
  the adapters' stacked weights at each site (``routing.py``); prefixes are shown to their rows only.
* ``AdapterDrop(setup, first=n)``: no adapter acts in the first ``n`` layers (Rücklé et al. 2021);
  with ``robust=True`` each training batch drops a random number of lower layers instead.

JSON form (:meth:`Setup.to_dict`, :func:`setup_from_dict`): a name is ``"a"``, a list of names is
a stack, and blocks are ``{"stack": [...]}``, ``{"fuse": [...], "fusion": "f"}``,
``{"parallel": [...]}``, ``{"routed": ["a", null, ...]}``,
``{"adapter_drop": <setup>, "first": 5, "robust": false}``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .registry import methods_with

#: Allowed children of each block (``str``: an adapter name); :func:`_check_children` applies it.
NESTING: dict[str, tuple[str, ...]] = {
    "Stack": ("str", "Fuse", "Parallel"),  # a Parallel only as the last element
    "Fuse": ("str", "Stack"),  # a Stack of names only
    "Parallel": ("str", "Stack", "Fuse"),  # a Stack without Parallel; at least two branches
    "Routed": ("str", "None"),  # one entry per row
    "AdapterDrop": ("str", "Stack", "Fuse", "Parallel", "Routed"),  # wraps the whole setup, once
}

FUSABLE_KINDS = frozenset({"sublayer", "norm"})
"""Site kinds of adapters AdapterFusion can fuse: adapters acting on sublayer outputs (and their
layer-norm deltas)."""
SEQUENCE_KINDS = frozenset({"attention", "input", "layer_input"})


class Setup:
    """Base of all composition blocks (frozen dataclasses)."""

    def children(self) -> tuple[str | Setup | None, ...]:
        return ()

    def adapter_names(self) -> tuple[str, ...]:
        """Every adapter name the setup uses (fusions included), in order."""
        names: list[str] = []
        for child in self.children():
            if isinstance(child, str):
                names.append(child)
            elif child is not None:
                names += child.adapter_names()
        return tuple(dict.fromkeys(names))

    def head_name(self) -> str | None:
        """The adapter whose head produces the output (None: hidden states, or one per task)."""
        raise NotImplementedError

    def walk(self) -> Iterator[Setup]:
        """This block and every block below it, parents first."""
        yield self
        for child in self.children():
            if isinstance(child, Setup):
                yield from child.walk()

    def to_dict(self) -> Any:
        """The JSON form (see the module docstring)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.children()))})"


def _kind(item: Any) -> str:
    return "None" if item is None else "str" if isinstance(item, str) else type(item).__name__


def _nesting_fix(block: str, kind: str) -> str:
    """What to write instead of a ``kind`` element inside a ``block``."""
    if block == "Routed":
        return "Routed takes one adapter name (or None) per row"
    if block == kind == "AdapterDrop":
        return "give one depth: AdapterDrop(setup, first=n)"
    if kind == "AdapterDrop":
        return f"AdapterDrop wraps the whole setup: AdapterDrop({block}(...), first=n)"
    if kind == "Routed":
        return "Routed chooses the adapter of each row of the whole batch: use it alone, or inside AdapterDrop"
    if kind == "None":
        return "None (no adapter) is only a row of Routed"
    if kind == block:
        return f"list the elements in one {block}"
    return f"put the {block} inside the {kind} instead, e.g. {kind}({block}(...), ...)"


def _check_children(block: str, items: Sequence[Any]) -> tuple:
    if not items:
        raise ValueError(f"{block}() needs at least one adapter")
    allowed = NESTING[block]
    for item in items:
        if _kind(item) not in allowed:
            kinds = ", ".join("adapter names" if k == "str" else k for k in allowed)
            raise ValueError(f"{block} cannot contain {item!r}: its elements are {kinds}; {_nesting_fix(block, _kind(item))}")
    names = [i for i in items if isinstance(i, str)]
    if block != "Routed" and len(set(names)) != len(names):
        raise ValueError(f"{block}{tuple(items)} names an adapter twice")
    return tuple(items)


def _json(item: str | Setup | None) -> Any:
    return item if item is None or isinstance(item, str) else item.to_dict()


@dataclass(frozen=True, init=False, repr=False)
class Stack(Setup):
    """Adapters applied one after the other at every site; the last one's head answers."""

    items: tuple[str | Setup, ...]

    def __init__(self, *items: str | Setup):
        items = _check_children("Stack", items)
        for item in items[:-1]:
            if isinstance(item, Parallel):
                raise ValueError("Stack: a Parallel can only be the last element (its branches end in their heads)")
        object.__setattr__(self, "items", items)

    def children(self):
        return self.items

    def head_name(self) -> str | None:
        last = self.items[-1]
        return last if isinstance(last, str) else last.head_name()

    def to_dict(self):
        return {"stack": [_json(i) for i in self.items]}


@dataclass(frozen=True, init=False, repr=False)
class Fuse(Setup):
    """AdapterFusion over ``items`` with the fusion layers of adapter ``fusion``.

    Every child reads the site's output ``out`` (its skip connection included in its output),
    and the fusion layer attends over the children active at the site, with ``out`` as the
    query. The fusion's head answers. ``fusion=None`` picks the one fusion on the model whose
    adapters include all of ``items``.
    """

    items: tuple[str | Stack, ...]
    fusion: str | None = None

    def __init__(self, *items: str | Stack, fusion: str | None = None):
        items = _check_children("Fuse", items)
        for item in items:
            if isinstance(item, Stack) and not all(isinstance(i, str) for i in item.items):
                raise ValueError(f"Fuse: a stacked child may only stack adapter names, got {item!r}")
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "fusion", fusion)

    def children(self):
        return self.items

    def adapter_names(self) -> tuple[str, ...]:
        return super().adapter_names() + ((self.fusion,) if self.fusion else ())

    def head_name(self) -> str | None:
        return self.fusion

    @staticmethod
    def label(item: str | Stack) -> str:
        """How a child is named in fusion attention reports (``a`` or ``a+b``)."""
        return item if isinstance(item, str) else "+".join(item.adapter_names())

    def to_dict(self):
        return {"fuse": [_json(i) for i in self.items], "fusion": self.fusion}

    def __repr__(self) -> str:
        return f"Fuse({', '.join(map(repr, self.items))}, fusion={self.fusion!r})"


@dataclass(frozen=True, init=False, repr=False)
class Parallel(Setup):
    """Several tasks on one input, in one forward pass, each with its own head.

    Below the first layer where a branch acts, the layers run once on the shared batch of ``B``
    rows; from there the hidden states and every other per-row input of a layer are replicated
    to ``P·B`` rows, block ``k`` for branch ``k``, and each site applies branch ``k`` to block
    ``k`` (one batched operation over the branches' stacked weights when every branch is a
    single adapter). With ``AdapterDrop(Parallel(...), first=n)`` the shared part is the first
    ``n`` layers: the saving AdapterDrop measures.
    """

    branches: tuple[str | Stack | Fuse, ...]

    def __init__(self, *branches: str | Stack | Fuse):
        branches = _check_children("Parallel", branches)
        if len(branches) < 2:
            raise ValueError("Parallel() needs at least two branches; use the adapter alone for one task")
        for branch in branches:
            if isinstance(branch, Stack) and isinstance(branch.items[-1], Parallel):
                raise ValueError("Parallel: a branch cannot itself contain a Parallel")
        object.__setattr__(self, "branches", branches)

    def children(self):
        return self.branches

    def head_name(self) -> str | None:
        return None

    def task_names(self) -> tuple[str, ...]:
        """The head answering for each branch, in order."""
        return tuple(b if isinstance(b, str) else b.head_name() for b in self.branches)

    def to_dict(self):
        return {"parallel": [_json(b) for b in self.branches]}


@dataclass(frozen=True, init=False, repr=False)
class Routed(Setup):
    """Per-sample routing: row ``r`` of the batch uses adapter ``rows[r]`` (None: no adapter).

    Different tasks or different users in one batch; each row's output equals running that row
    alone with its adapter. Rows with a head get it applied to their hidden states; on a decoder
    whose routed adapters use the causal-LM head (or none), the model returns the base model's
    output as usual, each row adapted by its own adapter.
    """

    rows: tuple[str | None, ...]
    names: tuple[str, ...] = field(compare=False)

    def __init__(self, rows: Sequence[str | None]):
        if isinstance(rows, str):
            raise ValueError(f"Routed takes one adapter name (or None) per row, got the string {rows!r}")
        if not rows:
            raise ValueError("Routed() needs one entry (an adapter name or None) per row of the batch")
        rows = _check_children("Routed", tuple(rows))
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "names", tuple(dict.fromkeys(r for r in rows if r is not None)))

    def children(self):
        return self.names

    def head_name(self) -> str | None:
        return None

    def slots(self) -> tuple[int, ...]:
        """Each row's position in :attr:`names` (``len(names)``: no adapter)."""
        slot = {name: k for k, name in enumerate(self.names)}
        return tuple(slot[r] if r is not None else len(self.names) for r in self.rows)

    def to_dict(self):
        return {"routed": list(self.rows)}

    def __repr__(self) -> str:
        return f"Routed({list(self.rows)!r})"


@dataclass(frozen=True, init=False, repr=False)
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

    inner: Setup
    first: int = 0
    robust: bool = False

    def __init__(self, setup: str | Setup | Sequence[str], first: int = 0, robust: bool = False):
        inner = as_setup(setup)
        (inner,) = _check_children("AdapterDrop", (inner,))
        if not isinstance(first, int) or isinstance(first, bool) or first < 0:
            raise ValueError(f"AdapterDrop: first must be an integer >= 0, got {first!r}")
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "first", first)
        object.__setattr__(self, "robust", bool(robust))

    def children(self):
        return (self.inner,)

    def head_name(self) -> str | None:
        return self.inner.head_name()

    def to_dict(self):
        return {"adapter_drop": self.inner.to_dict(), "first": self.first, "robust": self.robust}

    def __repr__(self) -> str:
        return f"AdapterDrop({self.inner!r}, first={self.first}, robust={self.robust})"


def as_setup(value: str | Setup | Sequence[str]) -> Setup:
    """Accept an adapter name, a list of names (stacked) or a setup."""
    if isinstance(value, Setup):
        return value
    if isinstance(value, str):
        return Stack(value)
    if isinstance(value, (list, tuple)):
        return Stack(*value)
    raise TypeError(f"cannot use {value!r} as adapters: give a name, a list of names or a composition block")


_FROM_JSON = {"stack": Stack, "fuse": Fuse, "parallel": Parallel}


def setup_from_dict(data: Any) -> Setup:
    """Inverse of :meth:`Setup.to_dict`; also takes a name or a list of names (a stack).

    Raises:
        ValueError: naming the part of ``data`` that is not a setup, and the forms that are.
    """
    return as_setup(_item_from_json(data))


def _item_from_json(data: Any) -> str | Setup:
    if isinstance(data, str):
        return data
    if isinstance(data, list):
        return Stack(*(_item_from_json(d) for d in data))
    if isinstance(data, dict) and len(data.keys() & {"stack", "fuse", "parallel", "routed", "adapter_drop"}) == 1:
        options = {k: v for k, v in data.items() if k not in ("stack", "fuse", "parallel", "routed", "adapter_drop")}
        if "routed" in data and not options:
            return Routed(data["routed"])
        if "adapter_drop" in data and set(options) <= {"first", "robust"}:
            return AdapterDrop(setup_from_dict(data["adapter_drop"]), **options)
        for key, block in _FROM_JSON.items():
            if key in data and isinstance(data[key], list) and set(options) <= ({"fusion"} if key == "fuse" else set()):
                return block(*(_item_from_json(d) for d in data[key]), **options)
    raise ValueError(
        f"not a composition setup: {data!r}; use a name, a list of names, or one of "
        '{"stack": [...]}, {"fuse": [...], "fusion": "f"}, {"parallel": [...]}, {"routed": [...]}, '
        '{"adapter_drop": <setup>, "first": n, "robust": false}'
    )


# ----------------------------------------------------------------------------- checking against a model
@dataclass(frozen=True)
class AdapterView:
    """What a setup check needs to know of one adapter on a model.

    Attributes:
        method: the method name (``pfeiffer``, ``fusion``, ...).
        kinds: the kinds of the sites it acts at (``sublayer``, ``norm``, ``attention``, ...).
        sublayer_sites: keys of the sublayer sites it acts at (where a fusion layer must sit).
        head: the kind of its head (None: no head).
        fuses: for a fusion, the adapters it fuses (None otherwise).
        merged: folded into the base weights (LoRA).
    """

    method: str
    kinds: frozenset[str] = frozenset()
    sublayer_sites: frozenset[str] = frozenset()
    head: str | None = None
    fuses: tuple[str, ...] | None = None
    merged: bool = False


@dataclass(frozen=True)
class ModelView:
    """A small read-only view of a model: its adapters and depth. See :func:`check`."""

    adapters: Mapping[str, AdapterView]
    num_layers: int

    def require(self, names: Sequence[str]) -> None:
        """Raise a ValueError naming every name that is not an adapter of the model."""
        missing = [n for n in names if n not in self.adapters]
        if missing:
            known = ", ".join(self.adapters) or "none"
            raise ValueError(f"no adapter named {', '.join(map(repr, missing))} on this model (adapters: {known})")

    def is_fusion(self, name: str) -> bool:
        return self.adapters[name].fuses is not None


def check(setup: Setup, view: ModelView) -> Setup:
    """Check ``setup`` against a model and return the setup to run (fusion names expanded,
    ``Fuse(fusion=None)`` resolved).

    Raises:
        ValueError: naming what is wrong (unknown adapter, missing head, misplaced fusion,
            prefix or prompt where it has no meaning, ...) and what to do instead.
    """
    view.require(setup.adapter_names())
    _check_knowledge(setup, view)
    return _check(setup, view)


def _check_knowledge(setup: Setup, view: ModelView) -> None:
    """Knowledge adapters (K-Adapter) read the frozen model from outside and answer through a head
    over the concatenation of its last hidden state and their outputs: they run alone, by name,
    never inside a block (where other adapters would change the layers they read, or heads would
    get rows they were not trained for)."""
    knowledge = set(methods_with("knowledge"))
    found = [n for n in setup.adapter_names() if view.adapters[n].method in knowledge]
    if found and not (isinstance(setup, Stack) and len(setup.items) == 1 and isinstance(setup.items[0], str)):
        raise ValueError(
            f"{setup!r} puts knowledge adapters ({', '.join(found)}) inside a composition; a knowledge adapter (k_adapter) "
            "or a task head over several (k_task) runs alone, by name: adapters='name'. To combine knowledge adapters, "
            "add a k_task over them: model.add_adapter(task, 'k_task', HeadConfig(...), adapters=(...))"
        )


def _check(item: str | Setup, view: ModelView) -> str | Setup:
    if isinstance(item, str):  # a fusion's name stands for the fusion over its adapters
        return _check_fuse(Fuse(*view.adapters[item].fuses, fusion=item), view) if view.is_fusion(item) else item
    return _CHECKS[type(item)](item, view)


def _check_stack(block: Stack, view: ModelView) -> Setup:
    items = tuple(_check(item, view) for item in block.items)
    if len(items) == 1 and isinstance(items[0], Setup):
        return items[0]  # a fusion's name alone is its Fuse
    return block if items == block.items else Stack(*items)


_KIND_WORDS = {
    "linear": "projections",
    "attention": "attention keys and values",
    "input": "the input sequence",
    "layer_input": "layer inputs",
}


def check_fusable(view: ModelView, names: Sequence[str], where: str) -> None:
    """Refuse adapters AdapterFusion cannot fuse: fusions, and adapters acting anywhere but on
    sublayer outputs and their layer norms (LoRA, BitFit, prefixes, prompts, probes, ...). Called
    when a fusion is added (``methods/fusion.py``) and when a ``Fuse`` is checked.

    Raises:
        ValueError: naming the adapter and its method, the methods that can be fused and what
            to do with this one instead (``where`` starts the message).
    """
    for name in names:
        adapter = view.adapters[name]
        if adapter.fuses is not None:
            raise ValueError(f"{where}: {name!r} is itself a fusion; fusions cannot be fused. Fuse the adapters it fuses instead")
        if not adapter.kinds <= FUSABLE_KINDS or not adapter.sublayer_sites:
            changed = [_KIND_WORDS[k] for k in sorted(adapter.kinds - FUSABLE_KINDS) if k in _KIND_WORDS]
            acts = f"changes {' and '.join(changed)}" if changed else "acts on no sublayer output"
            instead = (
                "knowledge adapters run alone: combine them with a k_task head over them instead "
                "(adapterkit train --method k_task --knowledge DIR ...)"
                if adapter.method in methods_with("knowledge")
                else f"stack {name!r} with the fusion instead: Stack({name!r}, Fuse(...))"
            )
            raise ValueError(
                f"{where}: adapter {name!r} ({adapter.method}) cannot be fused: AdapterFusion combines adapters' "
                f"sublayer outputs, and {name!r} {acts}. The methods that can be fused are "
                f"{', '.join(methods_with('fuse'))}; {instead}"
            )


def check_covered(view: ModelView, names: Sequence[str], fusion: str, covered: frozenset[str]) -> None:
    """Refuse adapters acting at a sublayer site where fusion ``fusion`` has no layer (``covered``:
    the site keys of its layers, e.g. ``0.ffn``). Called when a fusion is added and when a ``Fuse``
    is checked.

    Raises:
        ValueError: naming the sites and how to add a fusion that covers them.
    """
    for name in names:
        uncovered = sorted(view.adapters[name].sublayer_sites - covered)
        if uncovered:
            raise ValueError(
                f"fusion {fusion!r} has no fusion layer at {', '.join(uncovered[:4])}, where {name!r} acts; add a "
                "fusion without sublayers= or layers= (its layers then sit wherever the fused adapters act)"
            )


def _check_fuse(block: Fuse, view: ModelView) -> Setup:
    view.require(block.adapter_names())
    children = [n for item in block.items for n in ([item] if isinstance(item, str) else item.items)]
    check_fusable(view, children, "Fuse")
    fusion = block.fusion or _find_fusion(block, view)
    view.require([fusion])
    if not view.is_fusion(fusion):
        raise ValueError(
            f"Fuse(fusion={fusion!r}): {fusion!r} is a {view.adapters[fusion].method} adapter, not a fusion; name a "
            "fusion with fusion=..., or add one with model.add_adapter(<new name>, 'fusion', adapters=(...))"
        )
    trained_on = view.adapters[fusion].fuses
    foreign = [i for i in block.items if isinstance(i, str) and i not in trained_on]
    if foreign:
        raise ValueError(f"fusion {fusion!r} fuses {trained_on}; {foreign} are not among them")
    check_covered(view, children, fusion, view.adapters[fusion].sublayer_sites)
    return block if fusion == block.fusion else Fuse(*block.items, fusion=fusion)


def _find_fusion(block: Fuse, view: ModelView) -> str:
    wanted = {i for i in block.items if isinstance(i, str)}
    found = [n for n, a in view.adapters.items() if a.fuses is not None and wanted <= set(a.fuses)]
    if len(found) != 1:
        what = "no fusion" if not found else f"several fusions ({', '.join(found)})"
        raise ValueError(
            f"Fuse{block.items}: {what} on the model fuses these adapters; "
            f"name one with fusion=... or add one with model.add_adapter(name, 'fusion', adapters=(...))"
        )
    return found[0]


def _task_head(view: ModelView, block: str, branch: Any, name: str | None) -> str:
    head = view.adapters[name].head if name is not None else None
    if head is None:
        raise ValueError(
            f"{block}: {branch!r} has no head, but {block} gives every task its own head output; end the branch "
            f"with an adapter that has a head (Stack({branch!r}, <adapter with a head>)); an adapter gets its head "
            "when added: model.add_adapter(name, method, HeadConfig(...))"
        )
    if head == "causal_lm":
        raise ValueError(
            f"{block}: {branch!r} has a causal_lm head; {block} outputs need task heads (classification, regression, "
            "tagging). Run causal-LM adapters per row with Routed([...]), or one at a time"
        )
    return name


def _refuse_sequence_methods(view: ModelView, names: Sequence[str]) -> None:
    """Parallel replicates the batch at the first adapted layer: prefixes and prompts, which
    change the attention or the input sequence of every layer, cannot run there."""
    found = [n for n in names if view.adapters[n].kinds & SEQUENCE_KINDS]
    if found:
        prompts = any(view.adapters[n].kinds & {"input", "layer_input"} for n in found)
        per_row = ", or per row with Routed([...]) over the batch repeated once per task"
        instead = "run them one pass per task (alone or in a Stack)" + ("" if prompts else per_row)
        raise ValueError(
            f"adapters {found} are prefix or prompt adapters, which change what attention sees or the input "
            f"sequence rather than a sublayer's output, so they cannot run inside Parallel; {instead}"
        )


def _check_parallel(block: Parallel, view: ModelView) -> Setup:
    branches = tuple(_check(b, view) for b in block.branches)
    _refuse_sequence_methods(view, block.adapter_names())
    tasks = [_task_head(view, "Parallel", b, b if isinstance(b, str) else b.head_name()) for b in branches]
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"Parallel: two branches answer with the same head ({tasks}); each task needs its own")
    return block if branches == block.branches else Parallel(*branches)


def _check_routed(block: Routed, view: ModelView) -> Setup:
    for name in block.names:
        if view.is_fusion(name):
            raise ValueError(f"Routed: {name!r} is a fusion; route rows to single adapters")
    prompts = [n for n in block.names if view.adapters[n].kinds & {"input", "layer_input"}]
    if prompts:
        raise ValueError(
            f"prompt adapters ({', '.join(prompts)}) cannot be routed per row: other rows' prompts would shift "
            "this row's positions; use prefix adapters, or run prompt adapters in separate batches"
        )
    heads = {n: view.adapters[n].head for n in block.names}
    pooled = [n for n, h in heads.items() if h is not None and h != "causal_lm"]
    if pooled and len(pooled) != len(block.names):
        missing = [n for n in block.names if n not in pooled]
        raise ValueError(
            f"Routed: adapters {missing} have no task head while {pooled} do; route only adapters with heads, or "
            "only adapters without (an adapter gets its head when added: model.add_adapter(name, method, HeadConfig(...)))"
        )
    return block


def _check_drop(block: AdapterDrop, view: ModelView) -> Setup:
    if block.first > view.num_layers:
        raise ValueError(f"AdapterDrop: first={block.first} but the model has {view.num_layers} layers")
    inner = _check(block.inner, view)
    return block if inner == block.inner else AdapterDrop(inner, block.first, block.robust)


_CHECKS = {
    Stack: _check_stack,
    Fuse: _check_fuse,
    Parallel: _check_parallel,
    Routed: _check_routed,
    AdapterDrop: _check_drop,
}
