"""The same service scaled out on Ray Serve: engine replicas behind one HTTP ingress.

Each :class:`EngineReplica` holds the base model and runs an :class:`~adapterkit.serve.Engine`
(its own micro-batcher: a replica still mixes the adapters it holds in one pass). The ingress
runs the same FastAPI app as ``adapterkit serve`` (``app.create_app``) over a :class:`RayBackend`,
which sends each request to the replicas with Serve's model multiplexing: the multiplexed model
id is the request's adapter (or its composition's JSON), so Serve routes it to a replica that
already holds it, and each replica keeps at most ``max_adapters`` ids, evicting the least
recently used (the engine unloads an evicted adapter). Admin routes are off: each replica loads
adapters on demand.

Build the application with :func:`build_app` and run it with ``serve.run``, or use
``adapterkit serve --ray --replicas N``. On several machines, start Ray on each node first
(``ray start --head`` on one, ``ray start --address HEAD:6379`` on the others), make the store
readable at the same path on every node (a shared filesystem, or a copy), then run
``adapterkit serve --ray --ray-address auto --replicas N --store DIR`` on the head node.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from typing import Any

from ray import serve

from ..serve.engine import Engine, EngineConfig
from ..serve.errors import RequestTimeout, ServingError
from ..serve.requests import Request, plain_name
from .app import create_app


def multiplex_key(request: Request) -> str:
    """The multiplexed model id of a request: its adapter's name, or its composition's JSON."""
    return plain_name(request.setup) or json.dumps(request.setup.to_dict(), sort_keys=True)


class _Resident:
    """What Serve keeps per multiplexed id on a replica. Serve calls ``__del__`` when it evicts
    the id (least recently used): a single adapter is then unloaded from the engine. Only once:
    garbage collection calls ``__del__`` again later, maybe after the adapter was loaded anew."""

    def __init__(self, engine: Engine, key: str):
        self.engine, self.key, self.evicted = engine, key, False

    def __del__(self) -> None:
        if self.evicted or not plain_name_key(self.key):
            return
        self.evicted = True
        if self.key not in self.engine.registry.pinned and self.key in self.engine.registry.resident():
            self.engine.unload(self.key)


class EngineReplica:
    """One Serve replica: a base model and an engine over the store (see the module docstring)."""

    def __init__(self, model: str, store: str, config: EngineConfig, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.engine = Engine.start(model, store, config)
        self.replica = f"{os.getpid()}"

    async def resident(self, key: str) -> _Resident:
        """Load what ``key`` names (the multiplexed function; decorated in :func:`build_app`)."""
        if plain_name_key(key):
            await asyncio.to_thread(self.engine.load, key)
        return _Resident(self.engine, key)

    async def run(self, request: Request) -> tuple[bool, Any, tuple[str, int]]:
        """``(True, answers, seen)`` or ``(False, the ServingError, seen)``: errors travel as
        values, so the ingress re-raises exactly the engine's error; ``seen`` is this replica's
        id and how many adapter loads it has done (its cache misses)."""
        try:
            await self.resident(serve.get_multiplexed_model_id())
            ok, value = True, await asyncio.wrap_future(self.engine.submit(request))
        except ServingError as error:
            ok, value = False, error
        return ok, value, (self.replica, self.engine.registry.loads)

    def models(self) -> list[dict[str, Any]]:
        return self.engine.models()


def plain_name_key(key: str) -> bool:
    return not key.startswith(("{", "["))


class RayBackend:
    """The backend the ingress's routes call (the methods of ``LocalBackend``), over the replicas'
    handle. ``counts`` reports requests in flight from this ingress per adapter as waiting, and
    the adapter loads each replica reported with its last answer (``replica_loads``: routing by
    adapter keeps them low); each replica's own queue shows in Serve's metrics."""

    def __init__(self, engines: Any, timeout: float):
        self.engines = engines
        self.timeout = timeout
        self.in_flight: Counter[str] = Counter()
        self.replica_loads: dict[str, int] = {}

    async def run(self, request: Request) -> list:
        key = multiplex_key(request)
        names = request.setup.adapter_names()
        self.in_flight.update(names)
        try:
            call = self.engines.options(multiplexed_model_id=key).run.remote(request)
            ok, value, (replica, loads) = await asyncio.wait_for(call, self.timeout)
            self.replica_loads[replica] = loads
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no answer within the server's timeout of {self.timeout} s") from None
        finally:
            self.in_flight.subtract(names)
        if not ok:
            raise value
        return value

    async def models(self) -> list[dict[str, Any]]:
        return await self.engines.models.remote()

    def counts(self) -> dict[str, Any]:
        waiting = +self.in_flight
        return {"queue_depth": sum(waiting.values()), "waiting": waiting, "running": {},
                "replica_loads": dict(self.replica_loads)}

    @property
    def ready(self) -> bool:
        return True

    def observe(self, observer) -> None:
        """Passes run on the replicas; their timings are not sent back to the ingress."""

    async def close(self) -> None:
        """Serve stops the replicas itself."""


class Ingress:
    """The HTTP ingress: the FastAPI app of ``adapterkit serve`` over a :class:`RayBackend`."""

    def __init__(self, engines: Any, timeout: float, api_key: str | None, max_body_bytes: int):
        self.backend = RayBackend(engines, timeout)
        self.api_key, self.max_body_bytes = api_key, max_body_bytes

    def __serve_build_asgi_app__(self):
        return create_app(self.backend, self.api_key, None, self.max_body_bytes)


def build_app(model: str, store: str, config: EngineConfig, replicas: int = 2, api_key: str | None = None,
              max_body_bytes: int = 1 << 20, cpus_per_replica: float = 1.0, threads: int | None = None):
    """The Serve application: ``replicas`` engine replicas (each holding at most
    ``config.max_adapters`` multiplexed ids) behind one ingress. Run it with
    ``serve.run(build_app(...), route_prefix="/")``."""
    # Serve finds the multiplexed method by its function's name, so the wrapper keeps that name
    replica_cls = type("EngineReplica", (EngineReplica,), {
        "resident": serve.multiplexed(max_num_models_per_replica=config.max_adapters)(EngineReplica.resident),
    })
    # a replica batches the requests it holds: let it hold enough (Serve's default is a handful),
    # which also keeps the replicas that hold an adapter from looking busy to Serve's router
    ongoing = min(config.max_queue, 4 * config.max_batch_size)
    engines = serve.deployment(replica_cls, name="EngineReplica", num_replicas=replicas, max_ongoing_requests=ongoing,
                               ray_actor_options={"num_cpus": cpus_per_replica}).bind(str(model), str(store), config, threads)
    ingress = serve.deployment(serve.ingress()(Ingress), name="Ingress", max_ongoing_requests=max(ongoing, config.max_queue),
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(engines, config.timeout_s, api_key, max_body_bytes)


def serve_on_ray(args: Any, config: EngineConfig) -> int:
    """``adapterkit serve --ray``: start (or join) Ray, run the application, serve until
    interrupted."""
    import ray

    if args.admin_token:
        raise ValueError("--admin-token is not available with --ray: each replica loads adapters on demand")
    ray.init(address=args.ray_address, include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app(args.model, str(args.store), config, args.replicas, args.api_key, args.max_body_bytes,
                    threads=args.threads)
    serve.run(app, name="adapterkit", route_prefix="/")
    print(f"adapterkit serving on Ray at http://{args.host}:{args.port} with {args.replicas} replicas; Ctrl-C stops",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0

