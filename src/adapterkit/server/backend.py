"""What the HTTP routes call: an engine behind ``async`` methods.

:class:`LocalBackend` runs an :class:`~adapterkit.serve.Engine` in this process: a request is
checked and queued at once (errors raise before anything waits), then awaited without blocking
the event loop; a request still unanswered after its timeout is cancelled (the worker skips it if
it has not started) and raises ``RequestTimeout``. Admin calls wait for the pass in flight, in a
worker thread. ``adapterkit.server.ray_app`` provides the same methods over Ray Serve replicas.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..serve.engine import Engine
from ..serve.errors import RequestTimeout
from ..serve.requests import Request


class LocalBackend:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.timeout = engine.config.timeout_s
        self.base_model = str(getattr(engine.model, "name_or_path", None) or engine.model.parts.model_type)

    async def run(self, request: Request) -> list:
        """One answer per input of ``request`` (see ``serve/requests.py``)."""
        future = self.engine.submit(request, self.timeout)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no answer within the server's timeout of {self.timeout} s") from None

    async def models(self) -> list[dict[str, Any]]:
        return self.engine.models()

    async def load(self, name: str, pin: bool) -> list[str]:
        return await asyncio.to_thread(self.engine.load, name, pin)

    async def unload(self, name: str) -> bool:
        return await asyncio.to_thread(self.engine.unload, name)

    def counts(self) -> dict[str, Any]:
        return self.engine.counts()

    @property
    def ready(self) -> bool:
        return self.engine.ready

    def observe(self, observer) -> None:
        """Call ``observer(PassEvent)`` after every forward pass."""
        self.engine.observers.append(observer)

    async def close(self) -> None:
        """Drain what is queued, then stop."""
        await asyncio.to_thread(self.engine.close, True)
