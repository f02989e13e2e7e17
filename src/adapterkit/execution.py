"""What a checked setup computes, site by site: the one interpreter of the composition algebra.

:class:`BoundSetup` takes a setup checked against a model (``composition.check``) and the
model's site router, and works out once, per site, what runs there:

* at every output site (``linear``, ``sublayer``, ``norm``) an *op* ``op(x, out, state) -> out'``
  built from the attached modules: a chain for ``Stack``, AdapterFusion for ``Fuse``, one
  gathered batched operation for ``Routed`` and for ``Parallel`` over single adapters, a skip
  below the drop depth for ``AdapterDrop``;
* at every attention site the prefixes that act and the rows that see each (``Routed``);
* at the input and at every layer input the prompts that act, in stack order;
* the plug-ins outside the model whose outputs the head reads (K-Adapter's knowledge adapters,
  ``methods/kadapter.py``), and the base layers they read (``taps.py`` keeps those layers'
  outputs in the pass's state; :meth:`BoundSetup.read_out` runs the plug-ins on them and
  concatenates their outputs to the last hidden state before the head).

Forward passes then only look these up (``apply``, ``prefixes``, ``prompts_at``), so a repeated
forward does no walk over the setup; the facade caches bound setups per model revision. The
per-pass values (sampled drop depth, row index, replication) live in the pass's
:class:`~adapterkit.context.ForwardState`.

**Merged LoRA.** A merged adapter is part of the base weights. A pass whose setup is a stack that
names it uses the merged weights as they are (its modules are left out), in the layers where the
stack acts (not below a fixed AdapterDrop depth; nowhere under robust AdapterDrop); every other
projection it adapts is computed from the kept original weights (``base_output``) and, where the
setup runs the adapter (routed, parallel, under robust AdapterDrop), its update is applied like an
unmerged adapter's. So ``adapters=None`` is the plain base and every other adapter runs on the
real base.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from . import context
from .composition import AdapterDrop, Fuse, Parallel, Routed, Setup, Stack
from .context import ForwardState
from .heads import head_loss, head_output
from .placement import ResolvedModel
from .routing import apply_batched, has_batched_form
from .sites import OUTPUT_KINDS, Site, SiteInputs, SiteRouter, site_input

Op = Callable[[SiteInputs, torch.Tensor, ForwardState], torch.Tensor]
"""``op(x, out, state) -> out'``: what runs at one output site in one pass (``x``: the site's
inputs, :class:`~adapterkit.sites.SiteInputs`)."""


@dataclass
class MultiTaskOutput:
    """Head outputs of a :class:`Parallel` or :class:`Routed` forward pass.

    Attributes:
        tasks: per task (head name), its head's output over the rows it answered (a
            ``SequenceClassifierOutput``, or a ``TokenClassifierOutput`` for a tagging head).
        rows: per task, the row indices of the input batch it answered (every row for Parallel).
        logits: for Routed batches whose rows all have heads of one width, the logits in row order.
        loss: Parallel: the sum of the tasks' losses; Routed: the mean loss per labelled row.
        last_hidden_state: the final hidden states (``P·B`` rows for Parallel, branch-major).
    """

    tasks: dict[str, ModelOutput] = field(default_factory=dict)
    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None

    def __getitem__(self, task: str) -> ModelOutput:
        return self.tasks[task]


def _split(setup: Setup | None) -> tuple[Setup | None, int, bool]:
    """(the setup under any AdapterDrop, its fixed depth, whether it is robust)."""
    if isinstance(setup, AdapterDrop):
        return setup.inner, setup.first, setup.robust
    return setup, 0, False


def _find(setup: Setup | None, block: type) -> Any:
    return next((b for b in setup.walk() if isinstance(b, block)), None) if setup is not None else None


class BoundSetup:
    """A checked setup compiled against one model's attachments (see the module docstring).

    Args:
        setup: the checked setup (None: the plain base model).
        router: the model's site router (what is attached where).
        parts: the resolved model (its number of layers).
        merged: the adapter currently merged into the base weights, if any.
        task_heads: adapter names with a head of their own on the hidden states (classification,
            regression, tagging).
        readers: the plug-ins whose outputs the head reads beside the last hidden state, in
            order: modules with ``taps`` (the base layers they read) and
            ``forward(tapped, attention_mask) -> (batch, seq, d)`` (``methods/kadapter.py``).
    """

    def __init__(
        self,
        setup: Setup | None,
        router: SiteRouter,
        parts: ResolvedModel,
        merged: str | None,
        task_heads: set[str],
        readers: Sequence[nn.Module] = (),
    ):
        self.setup = setup
        self.readers = tuple(readers)
        self.tapped_layers: frozenset[int] = frozenset(i for reader in self.readers for i in reader.taps)
        """The base layers whose outputs this setup reads (``taps.LayerTaps`` keeps them)."""
        self.num_layers = parts.num_layers
        self.head_name = setup.head_name() if setup is not None else None
        inner, self.drop_first, self.drop_robust = _split(setup)
        self.parallel: Parallel | None = _find(setup, Parallel)
        self.routed: Routed | None = _find(setup, Routed)
        self.multi_output = self.parallel is not None or (
            self.routed is not None and any(n in task_heads for n in self.routed.names)
        )
        self.fusions = tuple(b.fusion for b in setup.walk() if isinstance(b, Fuse)) if setup is not None else ()
        self.index = torch.tensor(self.routed.slots()) if self.routed is not None else None
        self.merged = merged
        # the merged weights stand for the adapter where a stack runs it in every pass; a robust
        # AdapterDrop skips it below a depth drawn per pass, so it runs unmerged there
        self.merge_in_use = (
            merged is not None and isinstance(inner, Stack) and merged in inner.items and not self.drop_robust
        )

        self._ops: dict[Site, Op] = {}
        self._prefixes: dict[nn.Module, tuple[Site, list[tuple[nn.Module, int | None]]]] = {}
        self._layer_prompts: dict[int, tuple[nn.Module | None, ...]] = {}
        self._pass_values: dict[Any, Callable[[], torch.Tensor]] = {}  # computed once at the start of a pass
        sites = list(router.sites())
        inputs = next((router.attached(site) for site in sites if site.kind == "input"), {})
        prompt_names = [name for name in self._sequence_order(setup) if name in inputs]
        self.prompts: tuple[nn.Module, ...] = tuple(inputs[name] for name in prompt_names)
        """The prompt modules prepended at the input, in stack order."""
        self.prompt_length = sum(p.length for p in self.prompts)
        places = {name: inputs[name].insert_at for name in prompt_names}
        if len(set(places.values())) > 1:
            raise ValueError(
                f"the prompts of {setup!r} are inserted at different places ({places}); one pass can stack prompts "
                "with one insert_at only"
            )
        self.prompt_insert_at = next(iter(places.values()), "input")
        """Where the pass's prompts go: before the embedding layer (``input``) or after it."""
        shifts: dict[tuple[str, int | None], int] = {}  # (prefix adapter, Routed slot) -> its position shift
        for site in sites:
            attached = router.attached(site)
            if site.kind in OUTPUT_KINDS:
                op = self._site_op(site, attached)
                if op is not None:
                    self._ops[site] = op
            elif site.kind == "attention":
                slots = self._prefix_slots(setup, attached)
                if slots:
                    entries = [(attached[name], slot) for name, slot in slots]
                    self._prefixes[site.output_module] = (site, entries)
                    for (name, slot), (prefix, _) in zip(slots, entries):
                        self._pass_values.update(prefix.pass_values())
                        shifts[(name, slot)] = prefix.position_shift
            elif site.kind == "layer_input":
                vectors = tuple(attached.get(name) for name in prompt_names)
                if any(v is not None for v in vectors):
                    self._layer_prompts[site.layer] = vectors
        self._shift = sum(shift for (_, slot), shift in shifts.items() if slot is None)
        self._row_shifts = None  # Routed: the shift of each slot, the last (no adapter) 0
        if any(shift for (_, slot), shift in shifts.items() if slot is not None):
            self._row_shifts = torch.zeros(len(self.routed.names) + 1, dtype=torch.long)
            for (_, slot), shift in shifts.items():
                if slot is not None:
                    self._row_shifts[slot] += shift
        self.shifts_positions = bool(self._shift) or self._row_shifts is not None
        """Whether prefixes with ``shift_positions`` (peft's numbering) act in this pass."""
        if self.shifts_positions and self.prompts and self.prompt_insert_at == "input":
            raise ValueError(
                f"{setup!r} runs prompts before the embedding layer and prefixes with shift_positions in one pass; "
                "their positions have no common numbering: use insert_at='embedding_output' for the prompts or "
                "shift_positions=False for the prefixes"
            )
        most = self._shift + (int(self._row_shifts.max()) if self._row_shifts is not None else 0)
        self.positions_taken = sum(p.positions for p in self.prompts) + most
        """Positions of the model the pass's prompts and shifted prefixes take in front of the text."""
        self.parallel_layers = sorted({site.layer for site in self._ops}) if self.parallel is not None else []
        self.is_plain = setup is None and not self._ops  # nothing acts (no merged adapter either): no state needed

    # ----------------------------------------------------------------- per pass
    def new_state(self, owner: Any, training: bool, expand_rows: bool = False) -> ForwardState:
        """A fresh state for one pass (or one ``using`` block): AdapterDrop's depth sampled when
        robust and training, the first replicated layer of a Parallel, the callers' taps, and the
        values the attached modules compute once per pass (a prefix MLP's output), computed here,
        before any layer runs, so that no layer (and no recomputation of one) computes them."""
        depth = self.drop_first
        if self.drop_robust and training:
            depth = int(torch.randint(0, self.num_layers, ()))
        start = next((layer for layer in self.parallel_layers if layer >= depth), None)
        cache = {key: compute() for key, compute in self._pass_values.items()}
        return ForwardState(
            owner, self, training, depth, expand_rows, parallel_from=start, cache=cache, taps=context.taps()
        )

    def apply(self, site: Site, x: SiteInputs, out: torch.Tensor, state: ForwardState) -> torch.Tensor:
        """The output of ``site`` in this pass (called by the router's hooks)."""
        op = self._ops.get(site)
        return out if op is None else op(x, out, state)

    def prefixes(self, module: nn.Module, state: ForwardState, batch: int, device: torch.device):
        """The prefixes ``module`` (an attention module) prepends in this pass, in order, each with
        the rows that see it (``(batch,)`` bool, or None: every row)."""
        entry = self._prefixes.get(module)
        if entry is None:
            return []
        site, entries = entry
        if site.layer < state.drop_depth:
            return []
        index = self.rows(state, batch, device) if self.routed is not None else None
        return [(prefix, None if slot is None else index == slot) for prefix, slot in entries]

    def position_shift(self, state: ForwardState, batch: int, device: torch.device) -> int | torch.Tensor:
        """How far this pass moves the tokens' positions for its prefixes with ``shift_positions``
        (peft numbers the tokens after the prefix; see ``methods/prefix.py``): the sum of their
        lengths, or, when ``Routed`` rows see different ones, ``(batch,)`` per row."""
        if self._row_shifts is None:
            return self._shift
        return self._shift + self._row_shifts.to(device)[self.rows(state, batch, device)]

    def has_prefixes(self, module: nn.Module | None = None) -> bool:
        """Whether ``module`` (an attention module; None: any) prepends prefixes under this setup."""
        return bool(self._prefixes) if module is None else module in self._prefixes

    def prompts_at(self, layer: int, state: ForwardState) -> tuple[nn.Module | None, ...]:
        """Layer ``layer``'s own prompt vectors for each prompt of the pass (None: the prompt
        keeps what the layers below made of it); empty when no deep prompt acts there."""
        if layer < state.drop_depth:
            return ()
        return self._layer_prompts.get(layer, ())

    def rows(self, state: ForwardState, batch: int, device: torch.device) -> torch.Tensor:
        """``Routed``: each row's adapter slot, ``(batch,)`` on ``device`` (kept in the state)."""
        index = state.row_index
        if index is None or index.shape[0] != batch or index.device != device:
            count = self.index.shape[0]
            if batch == count:
                index = self.index.to(device)
            elif state.expand_rows and batch % count == 0:  # generate: each row repeated in place
                index = self.index.to(device).repeat_interleave(batch // count)
            else:
                raise ValueError(f"Routed names {count} rows but the batch has {batch}")
            state.row_index = index
        return index

    # ----------------------------------------------------------------- heads
    def read_out(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, state: ForwardState) -> torch.Tensor:
        """What the head reads: the last hidden state ``(batch, seq, d)`` followed, along the
        features, by each reader's output over the layers it tapped in this pass: ``(batch, seq,
        d · (1 + readers))`` (K-Adapter, Sec. 3.1: the concatenation of the model's and the
        adapters' last hidden features). Without readers, ``hidden`` itself."""
        if not self.readers:
            return hidden
        missing = sorted(self.tapped_layers - set(state.tapped))
        if missing:
            raise RuntimeError(
                f"layers {missing} did not run in this pass, so the knowledge adapters reading them have no input; "
                "run the model through AdapterModel.forward (model(**batch, adapters=...)) with all its layers"
            )
        return torch.cat([hidden, *(reader(state.tapped, attention_mask) for reader in self.readers)], dim=-1)

    def outputs(
        self, heads: Mapping[str, nn.Module], hidden: torch.Tensor, attention_mask, labels, state: ForwardState
    ) -> MultiTaskOutput:
        """One head output per task: every branch of a Parallel, every routed adapter's rows."""
        if self.parallel is not None:
            return self._parallel_outputs(heads, hidden, attention_mask, labels, state)
        return self._routed_outputs(heads, hidden, attention_mask, labels, state)

    def _parallel_outputs(self, heads, hidden, attention_mask, labels, state) -> MultiTaskOutput:
        if labels is not None and not isinstance(labels, Mapping):
            raise ValueError("Parallel: give labels as a dict {task: labels}, one entry per task that has labels")
        tasks = self.parallel.task_names()
        chunks = hidden.chunk(len(tasks)) if state.parallel_batch is not None else [hidden] * len(tasks)
        result = MultiTaskOutput(last_hidden_state=hidden)
        all_rows = torch.arange(chunks[0].shape[0], device=hidden.device)
        for task, chunk in zip(tasks, chunks):
            head = heads[task]
            logits = head(chunk, attention_mask)
            loss = None
            if labels is not None and labels.get(task) is not None:
                loss = head_loss(head.config, logits, labels[task], attention_mask)
                result.loss = loss if result.loss is None else result.loss + loss
            result.tasks[task] = head_output(head.config, logits, loss)
            result.rows[task] = all_rows
        return result

    def _routed_outputs(self, heads, hidden, attention_mask, labels, state) -> MultiTaskOutput:
        names = self.routed.names
        result = MultiTaskOutput(last_hidden_state=hidden)
        index = self.rows(state, hidden.shape[0], hidden.device)
        widths, losses, labelled = set(), [], 0
        pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
        for k, name in enumerate(names):
            rows = (index == k).nonzero().squeeze(1)
            head = heads[name]
            mask = None if attention_mask is None else attention_mask[rows]
            logits = head(hidden[rows], mask)
            loss = None
            if labels is not None:
                loss = head_loss(head.config, logits, labels[rows], mask)
                losses.append(loss * len(rows))
                labelled += len(rows)
            result.tasks[name] = head_output(head.config, logits, loss)
            result.rows[name] = rows
            widths.add(tuple(logits.shape[1:]))
            pieces.append((rows, logits))
        if len(widths) == 1 and names and int((index < len(names)).sum()) == index.shape[0]:
            width = widths.pop()
            combined = hidden.new_empty((index.shape[0], *width), dtype=pieces[0][1].dtype)
            for rows, logits in pieces:
                combined[rows] = logits
            result.logits = combined
        if losses:
            result.loss = torch.stack(losses).sum() / labelled
        return result

    # ----------------------------------------------------------------- compiling output sites
    def _site_op(self, site: Site, attached: Mapping[str, nn.Module]) -> Op | None:
        merged = attached.get(self.merged) if self.merged is not None else None
        if merged is not None and self.setup is not None:
            _refuse_weight_readers(site, attached, self.merged, self.setup.adapter_names())
        merge_here = self.merge_in_use and site.layer >= self.drop_first  # AdapterDrop: not below its depth
        if merge_here:
            attached = {n: m for n, m in attached.items() if n != self.merged}
        op = self._compile(self.setup, site, attached) if self.setup is not None else None
        if merged is None or merge_here:
            return op
        base = merged.base_output  # the unmerged projection, from the kept original weights
        if op is None:
            return lambda x, out, state: base(x.input)
        return lambda x, out, state: op(x, base(x.input), state)

    def _compile(self, item: str | Setup, site: Site, attached: Mapping[str, nn.Module]) -> Op | None:
        if isinstance(item, str):
            module = attached.get(item)
            return None if module is None else (lambda x, out, state: module(site_input(module, x), out))
        return _COMPILERS[type(item)](self, item, site, attached)

    def _compile_stack(self, block: Stack, site, attached) -> Op | None:
        ops = [op for op in (self._compile(i, site, attached) for i in block.items) if op is not None]
        if len(ops) <= 1:
            return ops[0] if ops else None

        def chain(x, out, state):
            for op in ops:
                out = op(x, out, state)
            return out

        return chain

    def _compile_fuse(self, block: Fuse, site, attached) -> Op | None:
        active = [(Fuse.label(i), op) for i in block.items if (op := self._compile(i, site, attached)) is not None]
        if not active:
            return None
        labels = tuple(label for label, _ in active)
        ops = [op for _, op in active]
        key = ("fusion", block.fusion)
        layer = attached.get(block.fusion)
        if layer is not None:
            # the query is the sublayer output as the fused adapters read it; where they differ,
            # the last fused adapter acting here decides, as in AdapterHub (bottleneck.compose_fuse)
            reader = next((attached[i] for i in reversed(block.items) if isinstance(i, str) and i in attached), None)

            def fuse(x, out, state):
                query = out if reader is None else reader.fusion_query(site_input(reader, x), out)
                fused, attention = layer.fuse(query, [op(x, out, state) for op in ops], out)
                state.cache[key] = (labels, attention)
                sink = state.taps.get("fusion_attention")
                if sink is not None:
                    sink.add(site.key, list(labels), attention)
                return fused

            return fuse

        def mix(x, out, state):  # a layer-norm delta of fused adapters (Houlsby): no fusion layer here
            outputs = torch.stack([op(x, out, state) for op in ops], dim=-2)  # (..., N, d)
            weights = _mixing_weights(state.cache.get(key), labels, outputs)
            return (weights.unsqueeze(-2) @ outputs).squeeze(-2)

        return mix

    def _compile_parallel(self, block: Parallel, site, attached) -> Op | None:
        n = len(block.branches)
        ops = [self._compile(b, site, attached) for b in block.branches]
        if all(op is None for op in ops):
            return None
        modules = [attached.get(b) for b in block.branches] if all(isinstance(b, str) for b in block.branches) else None

        def per_branch(x, out, state):
            if modules is not None and all(m is None or has_batched_form(m) for m in modules):
                return apply_batched(modules, x, out, None)  # one gathered operation for every branch
            rows = out.shape[0] // n
            blocks = []
            for k, op in enumerate(ops):
                part = slice(k * rows, (k + 1) * rows)
                blocks.append(out[part] if op is None else op(x.rows(part), out[part], state))
            return torch.cat(blocks)

        return _replicated(per_branch)

    def _compile_routed(self, block: Routed, site, attached) -> Op | None:
        modules = [attached.get(name) for name in block.names]
        if all(m is None for m in modules):
            return None
        return lambda x, out, state: apply_batched(modules, x, out, self.rows(state, out.shape[0], out.device))

    def _compile_drop(self, block: AdapterDrop, site, attached) -> Op | None:
        op = self._compile(block.inner, site, attached)
        if op is None:
            return None
        if block.robust:
            return lambda x, out, state: out if site.layer < state.drop_depth else op(x, out, state)
        return None if site.layer < block.first else op

    # ----------------------------------------------------------------- compiling sequence sites
    def _prefix_slots(self, item: str | Setup | None, attached) -> list[tuple[str, int | None]]:
        """The adapters with a prefix here, in stack order, each with its Routed slot (None: all rows)."""
        if item is None:
            return []
        if isinstance(item, str):
            return [(item, None)] if item in attached else []
        if isinstance(item, Routed):
            return [(name, k) for k, name in enumerate(item.names) if name in attached]
        if isinstance(item, (Stack, AdapterDrop)):
            return [entry for child in item.children() for entry in self._prefix_slots(child, attached)]
        return []  # Fuse and Parallel hold no prefix adapters (composition.check refuses them)

    @staticmethod
    def _sequence_order(item: str | Setup | None) -> list[str]:
        """Adapter names of a stack (under any AdapterDrop) in order: the order prompts are prepended."""
        if isinstance(item, str):
            return [item]
        if isinstance(item, (Stack, AdapterDrop)):
            return [n for child in item.children() if isinstance(child, (str, Stack)) for n in BoundSetup._sequence_order(child)]
        return []


def _refuse_weight_readers(site: Site, attached: Mapping[str, nn.Module], merged: str, names: Sequence[str]) -> None:
    """Refuse a pass that runs, at ``site``, a module computing with the base weight (DoRA, IA3 on
    an input) of another adapter than ``merged``, which holds that weight merged: it would read
    the merged weight instead of the base one."""
    readers = [n for n in names if n != merged and getattr(attached.get(n), "reads_base_weight", False)]
    if readers:
        raise ValueError(
            f"adapter {readers[0]!r} computes with the base weight of projection {site.key}, which adapter {merged!r} "
            f"holds merged; call model.unmerge_adapter({merged!r}) before running {readers[0]!r}"
        )


def _replicated(op: Op) -> Op:
    """``op`` for a Parallel site, which must see the replicated batch."""

    def checked(x, out, state):
        if state.parallel_batch is None:
            raise RuntimeError("a Parallel setup runs only through AdapterModel.forward (model(..., adapters=...))")
        return op(x, out, state)

    return checked


def _mixing_weights(previous, labels: Sequence[str], outputs: torch.Tensor) -> torch.Tensor:
    """Weights ``(..., N)`` for mixing fused adapters' outputs where no fusion layer sits: the
    attention the fusion gave the same adapters at the last fused site of this pass (renormalised
    over the adapters present), or the uniform mean when there is none."""
    shape = outputs.shape[:-1]
    if previous is not None:
        seen, attention = previous
        columns = [seen.index(label) for label in labels if label in seen]
        if len(columns) == len(labels) and attention.shape[:-1] == shape[:-1]:
            weights = attention[..., columns]
            return weights / weights.sum(-1, keepdim=True)
    return outputs.new_full(shape, 1.0 / len(labels))


_COMPILERS = {
    Stack: BoundSetup._compile_stack,
    Fuse: BoundSetup._compile_fuse,
    Parallel: BoundSetup._compile_parallel,
    Routed: BoundSetup._compile_routed,
    AdapterDrop: BoundSetup._compile_drop,
}


# ----------------------------------------------------------------------------- Parallel's replication
def replication_hooks(parts: ResolvedModel, owner: Any) -> list:
    """Forward pre-hooks on every layer that replicate its per-row inputs for ``Parallel``.

    From the first layer the pass replicates at (``state.parallel_from``), every tensor input of
    a layer whose first dimension is the shared batch (hidden states, attention mask, position
    bias, ...) is repeated ``P`` times, block ``k`` for branch ``k``; a tensor shared by every
    layer is replicated once per pass. Returns the hook handles.
    """
    handles = []
    for layer in parts.layers:
        # first among the layer's pre-hooks: a site reading the layer's own input (a CNN block's)
        # captures the replicated one
        hook = _replicator(owner, layer.index)
        handles.append(layer.layer.register_forward_pre_hook(hook, with_kwargs=True, prepend=True))
    return handles


def _replicator(owner: Any, layer: int):
    def replicate_inputs(module, args, kwargs):
        state = context.current(owner)
        if state is None or state.parallel_from is None or layer < state.parallel_from:
            return None
        if state.parallel_batch is None:
            state.parallel_batch = next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)).shape[0]
        copies = len(state.setup.parallel.branches)
        return _repeat(args, state, copies), _repeat(kwargs, state, copies)

    return replicate_inputs


def _repeat(value: Any, state: ForwardState, copies: int) -> Any:
    if isinstance(value, torch.Tensor):
        if value.dim() < 2 or value.shape[0] != state.parallel_batch:
            return value
        key = ("replicated", id(value))
        if key not in state.cache:  # e.g. one position bias shared by every layer
            state.cache[key] = (value, value.repeat(copies, *([1] * (value.dim() - 1))))
        return state.cache[key][1]
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat(v, state, copies) for v in value)
    if isinstance(value, dict):
        return {k: _repeat(v, state, copies) for k, v in value.items()}
    return value
