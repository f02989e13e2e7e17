"""``adapterkit serve``: one base model and an adapter store over HTTP (or on Ray Serve)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .common import positive_int

DESCRIPTION = """Serve the adapters of a store (the folder `adapterkit train --store` writes) over HTTP:
POST /v1/classify, /v1/embeddings, /v1/completions; GET /v1/models, /health, /ready, /metrics;
the OpenAPI schema at /openapi.json. Requests for different adapters are batched into one forward
pass. The API key and admin token can also come from ADAPTERKIT_API_KEY and ADAPTERKIT_ADMIN_TOKEN."""


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return port


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve a store of adapters over HTTP", description=DESCRIPTION)
    parser.add_argument("--model", default="minilm", help="base model: a bundled name or a local folder (default: minilm)")
    parser.add_argument("--store", type=Path, required=True, help="the adapter store folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=8000)
    parser.add_argument("--max-adapters", type=positive_int, default=64, help="adapters resident at once; LRU eviction beyond")
    parser.add_argument("--max-batch-size", type=positive_int, default=32, help="input rows per forward pass (1: batching off)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    parser.add_argument("--max-queue", type=positive_int, default=1024, help="requests waiting before 429")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait and run before 504")
    parser.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="request body limit (413 beyond)")
    parser.add_argument("--max-inputs", type=positive_int, default=256, help="inputs per request")
    parser.add_argument("--max-tokens", type=positive_int, default=256, help="new tokens a completion may ask for")
    parser.add_argument("--no-mix-adapters", dest="mix_adapters", action="store_false",
                        help="one forward pass per adapter of a batch instead of one routed pass (for comparison)")
    parser.add_argument("--threads", type=positive_int, help="torch threads for the forward passes (default: torch's, one per core)")
    parser.add_argument("--preload", default="", metavar="A,B", help="adapters loaded at start")
    parser.add_argument("--pin", default="", metavar="A,B", help="adapters loaded at start and never evicted")
    parser.add_argument("--api-key", default=os.environ.get("ADAPTERKIT_API_KEY"), help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--admin-token", default=os.environ.get("ADAPTERKIT_ADMIN_TOKEN"),
                        help="enable /admin routes (load/unload adapters) behind this token")
    parser.add_argument("--ray", action="store_true", help="run on Ray Serve (pip install 'adapterkit[ray]')")
    parser.add_argument("--replicas", type=positive_int, default=2, help="with --ray: engine replicas")
    parser.add_argument("--ray-address", default=None, help="with --ray: an existing cluster (default: start one here)")
    parser.set_defaults(func=run)


def engine_config(args: argparse.Namespace):
    from ..serve import EngineConfig

    names = lambda text: tuple(n.strip() for n in text.split(",") if n.strip())  # noqa: E731
    return EngineConfig(
        max_adapters=args.max_adapters, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, timeout_s=args.timeout, max_inputs=args.max_inputs, max_tokens=args.max_tokens,
        preload=names(args.preload), pin=names(args.pin), mix_adapters=args.mix_adapters,
    )


def run(args: argparse.Namespace) -> int:
    if not args.store.is_dir():
        raise FileNotFoundError(f"adapter store {args.store} is not a folder; train into one with --store DIR")
    if args.ray:
        from ..server.ray_app import serve_on_ray

        return serve_on_ray(args, engine_config(args))
    import torch
    import uvicorn

    from ..server import LocalBackend, create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    from ..serve import Engine, ServingError

    try:
        engine = Engine.start(args.model, args.store, engine_config(args))
    except ServingError as error:  # a preloaded adapter that is missing or refused
        raise ValueError(str(error)) from error
    app = create_app(LocalBackend(engine), args.api_key, args.admin_token, args.max_body_bytes)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=int(args.timeout) + 5)
    return 0
