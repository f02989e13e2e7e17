"""Checking requests: cheaply when they arrive (from the store's configs), fully on the worker.

:func:`admit` runs in the caller's thread before a request is queued: the setup names adapters
the store holds, contains no ``Routed`` (the engine routes rows itself), and a single adapter's
saved head suits the kind of request. :func:`prepare` runs on the worker once the adapters are
resident: the setup is checked against the model (``composition.check``), the inputs are
tokenised against the setup's token budget, and the request gets its :func:`group_key`, which
says which other requests may share its forward pass.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from ..composition import SEQUENCE_KINDS, ModelView, check
from .encoding import encode_inputs, encode_prompts
from .errors import InvalidRequest
from .passes import Prepared
from .registry import AdapterRegistry
from .requests import ClassifyRequest, CompleteRequest, EmbedRequest, Request, has_routed, plain_name, task_count

if TYPE_CHECKING:
    from ..model import AdapterModel

KINDS = {ClassifyRequest: "classify", EmbedRequest: "embed", CompleteRequest: "complete"}
POOLED = ("classification", "regression")
ROUTED = "routed"


def kind_of(request: Request) -> str:
    return KINDS[type(request)]


def admit(request: Request, registry: AdapterRegistry, is_decoder: bool, max_inputs: int, max_tokens: int) -> tuple[str, ...]:
    """The adapters ``request`` names (fusions' fused adapters included), after the checks that
    need no model. Raises :class:`InvalidRequest` (naming the field), ``UnknownAdapter`` or
    ``RefusedAdapter``."""
    if has_routed(request.setup):
        raise InvalidRequest("adapter", "a request names one setup for all its inputs; the server routes rows itself")
    if not 1 <= len(request.inputs) <= max_inputs:
        raise InvalidRequest("inputs", f"send 1 to {max_inputs} inputs per request, not {len(request.inputs)}")
    if len({isinstance(item, str) for item in request.inputs}) > 1:
        raise InvalidRequest("inputs", "send all texts or all pairs of texts in one request, not a mix")
    names = registry.requirements(request.setup.adapter_names())
    name = plain_name(request.setup)
    head = (registry.meta(name).get("head") or {}).get("kind") if name is not None else None
    if isinstance(request, ClassifyRequest) and name is not None and head not in POOLED:
        raise InvalidRequest(
            "adapter", f"adapter {name!r} has no classification or regression head ({head or 'no head'}); "
            "use /v1/embeddings for its hidden states" + (" or /v1/completions" if head == "causal_lm" else "")
        )
    if isinstance(request, EmbedRequest) and task_count(request.setup) > 1:
        raise InvalidRequest("adapter", "embeddings come from one setup; Parallel gives several heads: use /v1/classify")
    if isinstance(request, CompleteRequest):
        if not is_decoder:
            raise InvalidRequest("adapter", "completions need a decoder (causal LM) base model; this server runs an encoder")
        if name is not None and head in POOLED:
            raise InvalidRequest("adapter", f"adapter {name!r} has a {head} head; use /v1/classify")
        if not 1 <= request.max_tokens <= max_tokens:
            raise InvalidRequest("max_tokens", f"ask for 1 to {max_tokens} new tokens, not {request.max_tokens}")
    return tuple(names)


def prepare(model: AdapterModel, view: ModelView, request: Request, max_length: int | None,
            mix: bool = True) -> tuple[Prepared, Hashable]:
    """The request checked against the model, its inputs encoded, and its group key (``mix``:
    see :func:`group_key`).

    Raises:
        InvalidRequest: the setup does not fit the model (field ``adapter``), an empty input, or
            an input over the token budget with truncation off (``inputs[i]``).
    """
    try:
        checked = check(request.setup, view)
        budget = model.token_budget(request.setup, max_length)
    except ValueError as error:
        raise InvalidRequest("adapter", str(error)) from error
    kind = kind_of(request)
    if isinstance(request, ClassifyRequest) and task_count(checked) == 1:
        head = model.heads[checked.head_name()] if checked.head_name() in model.heads else None
        if head is None or head.config.kind not in POOLED:
            raise InvalidRequest("adapter", f"{request.setup!r} answers with no classification or regression head")
    budget = budget if budget is not None else 1 << 20
    if isinstance(request, CompleteRequest):
        rows = encode_prompts(model.tokenizer, request.inputs, budget - request.max_tokens, request.truncate)
    else:
        rows = encode_inputs(model.tokenizer, request.inputs, budget, request.truncate)
    return Prepared(request, rows), group_key(kind, request, view, mix)


def group_key(kind: str, request: Request, view: ModelView, mix: bool = True) -> Hashable:
    """Requests with equal keys run in one pass: single adapters that ``Routed`` can mix (no
    fusion, no prompt, heads of one sort) share ``(kind, ROUTED, pooled)``; any other setup runs
    with the requests of the same setup only. ``mix=False`` gives every adapter its own pass
    (a loop over adapter groups, as peft runs mixed batches: the benchmarks' baseline)."""
    name = plain_name(request.setup)
    adapter = view.adapters.get(name) if name is not None else None
    if not mix or adapter is None or adapter.fuses is not None or adapter.kinds & (SEQUENCE_KINDS - {"attention"}):
        return (kind, request.setup)
    return (kind, ROUTED, adapter.head in POOLED)
