"""A micro-batcher: concurrent requests queue up, one worker thread runs them in batches.

``submit`` puts a job in a bounded queue and returns a :class:`concurrent.futures.Future` at once
(a full queue raises :class:`QueueFull` with a retry estimate). The worker takes the oldest job,
then waits up to ``max_wait_ms`` for more, up to ``max_batch_size`` input rows in all (a job
larger than that runs alone), and hands the batch to ``run``; ``run`` settles each job's future.
Jobs past their deadline are failed with :class:`RequestTimeout` instead of run; a future the
caller cancelled (it gave up waiting) is skipped. :meth:`close` stops taking jobs and, with
``drain``, runs everything queued before the worker exits.

The batcher counts what it holds per adapter (:meth:`counts`: waiting and running) for the
metrics.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .errors import QueueFull, RequestTimeout, ShuttingDown


@dataclass(eq=False)
class Job:
    """One queued request: what to run, how many input rows it brings, the adapters it names
    (for the per-adapter counts), its deadline (``time.monotonic()`` seconds) and its future."""

    request: Any
    rows: int
    adapters: tuple[str, ...]
    deadline: float
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Args:
        run: ``run(jobs)`` runs a batch and settles every job's future (called on the worker).
        max_batch_size: most input rows per batch (>= 1; 1 runs one request per batch).
        max_wait_ms: how long the first job of a batch waits for company (>= 0).
        max_queue: most jobs waiting (>= 1); more raise :class:`QueueFull`.
    """

    def __init__(
        self,
        run: Callable[[list[Job]], None],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
    ):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                f"max_batch_size ({max_batch_size}) and max_queue ({max_queue}) must be >= 1, max_wait_ms ({max_wait_ms}) >= 0"
            )
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.waiting: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._batch_seconds = 0.05  # running mean of a batch's time, for Retry-After
        self._worker = threading.Thread(target=self._loop, name="adapterkit-batcher", daemon=True)
        self._worker.start()

    # ----------------------------------------------------------------- callers
    def submit(self, request: Any, rows: int, adapters: Sequence[str], timeout: float) -> Future:
        """Queue ``request`` (``rows`` input rows, naming ``adapters``) to finish within
        ``timeout`` seconds; returns its future.

        Raises:
            QueueFull: ``max_queue`` jobs are waiting.
            ShuttingDown: :meth:`close` was called.
        """
        job = Job(request, rows, tuple(adapters), time.monotonic() + timeout)
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down and takes no new requests; retry on another replica")
            if len(self._queue) >= self.max_queue:
                self._drop_cancelled()
            if len(self._queue) >= self.max_queue:
                batches = math.ceil(len(self._queue) * max(1, rows) / self.max_batch_size)
                raise QueueFull(len(self._queue), max(1, math.ceil(batches * self._batch_seconds)))
            self._queue.append(job)
            self.waiting.update(job.adapters)
            self._cond.notify()
        return job.future

    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return len(self._queue)

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(requests waiting, requests running) per adapter name, zeros left out."""
        with self._cond:
            return +self.waiting, +self.running

    @property
    def closing(self) -> bool:
        return self._closing

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no new jobs; with ``drain`` run what is queued, else fail it with
        :class:`ShuttingDown`; wait for the worker (at most ``timeout`` seconds)."""
        with self._cond:
            self._closing = True
            if not drain:
                while self._queue:
                    job = self._queue.popleft()
                    self.waiting.subtract(job.adapters)
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(ShuttingDown("the server shut down before running this request"))
            self._cond.notify_all()
        self._worker.join(timeout)

    def _drop_cancelled(self) -> None:
        """Forget queued jobs whose callers gave up (their futures are cancelled): they hold no
        place in the queue (called under the lock)."""
        live = deque(job for job in self._queue if not job.future.cancelled())
        for job in self._queue:
            if job.future.cancelled():
                self.waiting.subtract(job.adapters)
        self._queue = live

    # ----------------------------------------------------------------- worker
    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None  # closing and drained
            batch = [self._queue.popleft()]
            rows = batch[0].rows
            until = time.monotonic() + self.max_wait
            while rows < self.max_batch_size:
                if not self._queue:
                    left = until - time.monotonic()
                    if left <= 0 or self._closing:
                        break
                    self._cond.wait(left)
                    continue
                if rows + self._queue[0].rows > self.max_batch_size:
                    break
                job = self._queue.popleft()
                batch.append(job)
                rows += job.rows
            for job in batch:
                self.waiting.subtract(job.adapters)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            now = time.monotonic()
            live = []
            for job in batch:
                if not job.future.set_running_or_notify_cancel():
                    continue  # the caller gave up waiting
                if now > job.deadline:
                    job.future.set_exception(RequestTimeout(f"the request waited {now - job.queued_at:.2f} s, past its timeout"))
                    continue
                live.append(job)
            if not live:
                continue
            with self._cond:
                for job in live:
                    self.running.update(job.adapters)
            start = time.monotonic()
            try:
                self.run(live)
            except BaseException as error:  # run must settle futures; never leave a caller hanging
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(error)
            finally:
                with self._cond:
                    for job in live:
                        self.running.subtract(job.adapters)
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.monotonic() - start)
