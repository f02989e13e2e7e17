"""One forward pass (or one ``generate`` call) for a group of requests, and their answers.

A group is either requests for single adapters that can share a routed pass (each row runs its
own request's adapter: ``Routed``, one gathered operation per site whatever the methods), or
requests for one and the same composition (``shared``: a ``Parallel``, a stack, a fusion, a
prompt adapter). When every row of a routed group uses the same adapter the pass runs that
adapter by name, exactly the library's single-adapter path.

Rows of all requests are padded together, so a row may see more padding than it would alone:
masked positions add exact zeros to attention, but matrix products of another shape may round
differently (the engine's tests measure the difference against single-request runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..composition import Routed, Setup, as_setup
from ..execution import MultiTaskOutput
from ..heads import pool
from .encoding import pad_rows
from .requests import ClassResult, Completion, Embedding, Request, TaskResults, ValueResult, plain_name

if TYPE_CHECKING:
    from ..model import AdapterModel


@dataclass
class Prepared:
    """A request ready for a pass: its encoded rows (unpadded token ids)."""

    request: Request
    rows: list[dict[str, list[int]]]


def pass_setup(items: Sequence[Prepared], shared: Setup | None) -> Setup | str:
    """The setup of one pass: the shared composition, one adapter's name, or ``Routed`` with one
    entry per row."""
    if shared is not None:
        return shared
    names = [plain_name(item.request.setup) for item in items]
    if len(set(names)) == 1:
        return names[0]
    return Routed([name for item, name in zip(items, names) for _ in item.rows])


def _rows(items: Sequence[Prepared]) -> list[dict[str, list[int]]]:
    return [row for item in items for row in item.rows]


def _spans(items: Sequence[Prepared]) -> list[range]:
    spans, start = [], 0
    for item in items:
        spans.append(range(start, start + len(item.rows)))
        start += len(item.rows)
    return spans


def _device(model: AdapterModel) -> torch.device:
    return next(model.base.parameters()).device


def head_result(config: Any, logits: torch.Tensor) -> ClassResult | ValueResult:
    """A pooled head's answer for one row: ``logits (num_labels,)`` or a regression scalar."""
    if config.kind == "regression":
        return ValueResult(float(logits.float()))
    probabilities = torch.softmax(logits.float(), -1).tolist()
    names = list(config.label_names) or [str(i) for i in range(len(probabilities))]
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    return ClassResult(names[best], dict(zip(names, probabilities)))


@torch.no_grad()
def classify(model: AdapterModel, items: Sequence[Prepared], shared: Setup | None) -> list[list]:
    """Head answers of every request of the group from one forward pass, per request in order."""
    setup = pass_setup(items, shared)
    batch = {k: v.to(_device(model)) for k, v in pad_rows(model.tokenizer, _rows(items)).items()}
    output = model(**batch, adapters=setup)
    count = batch["input_ids"].shape[0]
    per_row: list[Any] = [None] * count
    if isinstance(output, MultiTaskOutput) and isinstance(setup, Routed):
        for name, rows in output.rows.items():
            config = model.heads[name].config
            for logits, row in zip(output.tasks[name].logits, rows.tolist()):
                per_row[row] = head_result(config, logits)
    elif isinstance(output, MultiTaskOutput):  # Parallel: every task answers every row
        for row in range(count):
            per_row[row] = TaskResults(
                {task: head_result(model.heads[task].config, out.logits[row]) for task, out in output.tasks.items()}
            )
    else:
        config = model.heads[_head_name(setup)].config
        per_row = [head_result(config, logits) for logits in output.logits]
    return [[per_row[r] for r in span] for span in _spans(items)]


def _head_name(setup: Setup | str) -> str:
    return as_setup(setup).head_name()


def embedding_pooling(model: AdapterModel, name: str | None) -> str:
    """How an adapter's embeddings pool tokens: its pooled head's pooling, else the mean on an
    encoder and the last token on a decoder (the only one that has seen the whole input)."""
    head = model.heads[name] if name is not None and name in model.heads else None
    if head is not None and head.config.kind != "causal_lm":
        return head.config.pooling
    return "last" if model.is_decoder else "mean"


@torch.no_grad()
def embed(model: AdapterModel, items: Sequence[Prepared], shared: Setup | None) -> list[list[Embedding]]:
    """Pooled final hidden states ``(hidden_size,)`` of every input, from one pass of the body."""
    setup = pass_setup(items, shared)
    batch = {k: v.to(_device(model)) for k, v in pad_rows(model.tokenizer, _rows(items)).items()}
    with model.using(setup):
        hidden = model.body(**batch).last_hidden_state
    mask = batch["attention_mask"]
    answers = []
    for item, span in zip(items, _spans(items)):
        rows = torch.tensor(list(span), device=hidden.device)
        pooled = pool(hidden[rows], mask[rows], embedding_pooling(model, item.request.setup.head_name())).float()
        if item.request.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        answers.append([Embedding(v.tolist(), len(r["input_ids"])) for v, r in zip(pooled, item.rows)])
    return answers


def _stop_ids(model: AdapterModel) -> set[int]:
    eos = model.base.generation_config.eos_token_id
    if eos is None:
        eos = model.tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


@torch.no_grad()
def complete(model: AdapterModel, items: Sequence[Prepared], shared: Setup | None) -> list[list[Completion]]:
    """Greedy continuations of every prompt of the group in one ``generate`` call (left padding;
    each row runs its own adapter through ``Routed``); each cut at its own ``max_tokens`` and at
    the first end-of-sequence token."""
    setup = pass_setup(items, shared)
    batch = {k: v.to(_device(model)) for k, v in pad_rows(model.tokenizer, _rows(items), side="left").items()}
    longest = max(item.request.max_tokens for item in items)
    pad = model.tokenizer.pad_token_id
    output = model.generate(
        **batch, adapters=setup, max_new_tokens=longest, do_sample=False, num_beams=1, pad_token_id=pad,
        temperature=None, top_p=None, top_k=None,
    )
    new = output[:, batch["input_ids"].shape[1] :].tolist()
    stop = _stop_ids(model)
    answers = []
    for item, span in zip(items, _spans(items)):
        results = []
        for row, encoded in zip(span, item.rows):
            ids = new[row][: item.request.max_tokens]
            end = next((i for i, t in enumerate(ids) if t in stop), None)
            finish = "length" if end is None else "stop"
            ids = ids if end is None else ids[:end]
            text = model.tokenizer.decode(ids, skip_special_tokens=True)
            results.append(Completion(text, ids, len(encoded["input_ids"]), finish))
        answers.append(results)
    return answers


RUNNERS = {"classify": classify, "embed": embed, "complete": complete}
