"""The serving engine: one frozen base model, adapters from a store, micro-batched requests.

Usable without HTTP::

    engine = Engine.start("minilm", "store", EngineConfig(max_adapters=64, max_batch_size=32))
    engine.classify("trec6", ["What is the capital of Peru ?"])   # [ClassResult(label='LOC', ...)]
    engine.classify({"parallel": ["trec6", "rotten_tomatoes"]}, ["a gorgeous, witty film"])
    engine.close()                                                  # drains what is queued

Requests are checked when they arrive (:func:`~adapterkit.serve.prepare.admit`), queued, and
taken by one worker thread in micro-batches (:class:`~adapterkit.serve.batcher.MicroBatcher`).
The worker splits a batch into parts that need at most ``max_adapters`` adapters, makes each
part's adapters resident (:class:`~adapterkit.serve.registry.AdapterRegistry`, LRU), groups
its requests by what may share a pass (``prepare.group_key``: different single adapters of any
method share one ``Routed`` pass; a composition runs with requests of the same composition) and
runs one forward pass (or one ``generate`` call) per group (``passes.py``). Model changes (loads,
evictions, admin loads) and passes run under one lock, so no adapter changes under a pass.

Each answer equals running that request alone through the library up to float rounding: rows
of a mixed batch meet more padding and gathered weights (``tests/test_serving_engine.py``
measures the difference; greedy completions give the same tokens).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..composition import Setup, setup_from_dict
from .batcher import Job, MicroBatcher
from .errors import InvalidRequest, RequestTimeout, ServingError
from .passes import RUNNERS, Prepared
from .prepare import admit, prepare
from .registry import AdapterRegistry
from .requests import ClassifyRequest, CompleteRequest, EmbedRequest, Request

if TYPE_CHECKING:
    from ..model import AdapterModel


@dataclass(frozen=True)
class EngineConfig:
    """Args:
        max_adapters: most store adapters resident at once (LRU eviction beyond).
        max_batch_size: most input rows per forward pass (1: one request per pass, batching off).
        max_wait_ms: how long a batch waits for more requests after its first.
        max_queue: most requests waiting; more are refused (``QueueFull``).
        timeout_s: default time a request may wait and run.
        max_inputs: most inputs in one request.
        max_tokens: most new tokens a completion may ask for.
        max_length: most tokens per input (None: what the model and setup read).
        preload: adapters loaded at start (evictable).
        pin: adapters loaded at start and never evicted.
        mix_adapters: run requests for different adapters in one ``Routed`` pass; False runs one
            pass per adapter of a batch (a per-adapter-group loop, for comparison).
    """

    max_adapters: int = 64
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    timeout_s: float = 30.0
    max_inputs: int = 256
    max_tokens: int = 256
    max_length: int | None = None
    preload: tuple[str, ...] = ()
    pin: tuple[str, ...] = ()
    mix_adapters: bool = True


@dataclass(frozen=True)
class PassEvent:
    """One forward pass the worker ran: kind, input rows, requests, distinct adapters, seconds."""

    kind: str
    rows: int
    requests: int
    adapters: int
    seconds: float


def as_request_setup(value: Any) -> Setup:
    """A request's ``adapter`` field (a name, a list of names, or a composition in its JSON form)
    as a setup. Raises :class:`InvalidRequest` naming the field."""
    try:
        return setup_from_dict(value)
    except (ValueError, TypeError) as error:
        raise InvalidRequest("adapter", str(error)) from error


class Engine:
    """Args:
        model: the base model (adapters are loaded into it from ``store``).
        store: the adapter store folder.
        config: limits and preloads.
        observers: ``observer(event: PassEvent)`` called after every pass (metrics).
    """

    def __init__(self, model: AdapterModel, store: str | Path, config: EngineConfig = EngineConfig(),
                 observers: Sequence[Callable[[PassEvent], None]] = ()):
        self.model = model.eval()
        self.config = config
        self.lock = threading.RLock()
        self.registry = AdapterRegistry(model, store, config.max_adapters, self.lock)
        self.observers = list(observers)
        if config.preload:
            self.registry.ensure(config.preload)
        if config.pin:
            self.registry.pin(config.pin)
        self.batcher = MicroBatcher(self._run, config.max_batch_size, config.max_wait_ms, config.max_queue)
        self.started = time.time()

    @classmethod
    def start(cls, model: str, store: str | Path, config: EngineConfig = EngineConfig(), **kwargs: Any) -> Engine:
        """Load the base model ``model`` (a bundled name or a local folder) and serve ``store``."""
        from ..model import AdapterModel

        return cls(AdapterModel.from_pretrained(model), store, config, **kwargs)

    # ----------------------------------------------------------------- requests
    def submit(self, request: Request, timeout: float | None = None) -> Future:
        """Queue ``request``; the future's result is one answer per input (``requests.py``).

        Raises (at once): InvalidRequest, UnknownAdapter, RefusedAdapter, QueueFull, ShuttingDown.
        The future may raise those found on the worker (InvalidRequest, InputTooLong,
        IncompatibleAdapter, CapacityError, RequestTimeout).
        """
        names = admit(request, self.registry, self.model.is_decoder, self.config.max_inputs, self.config.max_tokens)
        return self.batcher.submit(request, len(request.inputs), names, timeout or self.config.timeout_s)

    def _call(self, request: Request, timeout: float | None) -> list:
        timeout = timeout or self.config.timeout_s
        future = self.submit(request, timeout)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()  # skipped by the worker if it has not started
            raise RequestTimeout(f"no answer within {timeout} s") from None

    def classify(self, adapter: Any, inputs: Sequence[Any], truncate: bool = False, timeout: float | None = None) -> list:
        """One head answer per input (``ClassResult``, ``ValueResult``, or ``TaskResults``)."""
        return self._call(ClassifyRequest(as_request_setup(adapter), _inputs(inputs), truncate), timeout)

    def embed(self, adapter: Any, inputs: Sequence[Any], truncate: bool = False, normalize: bool = True,
              timeout: float | None = None) -> list:
        """One ``Embedding`` per input."""
        return self._call(EmbedRequest(as_request_setup(adapter), _inputs(inputs), truncate, normalize), timeout)

    def complete(self, adapter: Any, prompts: Sequence[str], max_tokens: int = 16, truncate: bool = False,
                 timeout: float | None = None) -> list:
        """One greedy ``Completion`` per prompt."""
        return self._call(CompleteRequest(as_request_setup(adapter), tuple(prompts), max_tokens, truncate), timeout)

    # ----------------------------------------------------------------- the worker
    def _run(self, jobs: list[Job]) -> None:
        """Run a batch (on the worker): parts of at most ``max_adapters`` adapters, each made
        resident, its requests prepared and grouped, one pass per group."""
        parts: list[tuple[set[str], list[Job]]] = []
        for job in jobs:
            needed = set(job.adapters)
            if parts and len(parts[-1][0] | needed) <= self.config.max_adapters:
                parts[-1][0].update(needed)
                parts[-1][1].append(job)
            else:
                parts.append((needed, [job]))
        with self.lock, torch.inference_mode():
            for needed, part in parts:
                self._run_part(needed, part)

    def _run_part(self, needed: set[str], jobs: list[Job]) -> None:
        ready = []
        for job in jobs:
            try:
                self.registry.ensure(job.adapters, keep=needed)
                ready.append(job)
            except ServingError as error:
                job.future.set_exception(error)
        view = self.model.view()
        groups: dict[Hashable, list[tuple[Job, Prepared]]] = {}
        for job in ready:
            try:
                prepared, key = prepare(self.model, view, job.request, self.config.max_length, self.config.mix_adapters)
            except ServingError as error:
                job.future.set_exception(error)
                continue
            groups.setdefault(key, []).append((job, prepared))
        for key, members in groups.items():
            self._run_group(key, members)

    def _run_group(self, key: Hashable, members: list[tuple[Job, Prepared]]) -> None:
        kind, shared = key[0], key[1] if isinstance(key[1], Setup) else None
        items = [prepared for _, prepared in members]
        start = time.monotonic()
        try:
            answers = RUNNERS[kind](self.model, items, shared)
        except Exception as error:  # noqa: BLE001  (settle every caller's future, then report it)
            for job, _ in members:
                job.future.set_exception(error)
            return
        for (job, _), answer in zip(members, answers):
            job.future.set_result(answer)
        event = PassEvent(kind, sum(len(p.rows) for p in items), len(items),
                          len({n for job, _ in members for n in job.adapters}), time.monotonic() - start)
        for observer in self.observers:
            observer(event)

    # ----------------------------------------------------------------- administration
    def models(self) -> list[dict[str, Any]]:
        """Every adapter of the store: name, method, head kind and labels, resident, pinned."""
        resident, pinned = set(self.registry.resident()), set(self.registry.pinned)
        listing = []
        for name in self.registry.available():
            try:
                meta = self.registry.meta(name)
            except ServingError:
                continue
            head = meta.get("head") or {}
            listing.append({
                "name": name,
                "method": meta.get("config", {}).get("method"),
                "head": head.get("kind"),
                "labels": list(head.get("label_names") or ()),
                "resident": name in resident,
                "pinned": name in pinned,
            })
        return listing

    def load(self, name: str, pin: bool = False) -> list[str]:
        """Make ``name`` resident now (and pinned with ``pin``); returns the names loaded."""
        self.registry.folder(name)
        with self.lock:
            loaded = [n for n in self.registry.requirements([name]) if n not in self.registry.resident()]
            if pin:
                self.registry.pin([name])
            else:
                self.registry.ensure([name])
        return loaded

    def unload(self, name: str) -> bool:
        """Remove ``name`` from the model (waits for the pass in flight); False if not resident."""
        self.registry.folder(name)
        with self.lock:
            return self.registry.unload(name)

    def counts(self) -> dict[str, Any]:
        """Queue depth, resident adapters, and requests waiting and running per adapter."""
        waiting, running = self.batcher.counts()
        return {"queue_depth": self.batcher.depth(), "resident": len(self.registry.resident()),
                "waiting": waiting, "running": running}

    @property
    def ready(self) -> bool:
        """Whether the engine takes requests (started, not closing)."""
        return not self.batcher.closing

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; with ``drain`` answer everything queued first."""
        self.batcher.close(drain, timeout)


def _inputs(inputs: Sequence[Any]) -> tuple:
    if isinstance(inputs, str):
        inputs = [inputs]
    return tuple(item if isinstance(item, str) else tuple(item) for item in inputs)
