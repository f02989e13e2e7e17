"""The HTTP service: a thin shell over a backend (decode the body, call the engine, encode).

Routes (the OpenAPI schema is at ``/openapi.json``, the docs at ``/docs``):

* ``POST /v1/classify``: ``{"adapter": NAME | [NAMES] | composition, "inputs": [text | [a, b], ...],
  "truncate": false}`` -> one ``{label, scores}`` (or ``{value}``, or ``{tasks: {...}}``) per input;
* ``POST /v1/embeddings``, ``POST /v1/completions``, ``GET /v1/models``: OpenAI shapes,
  ``model`` = adapter name;
* ``GET /health`` (the process answers), ``GET /ready`` (503 while not taking requests),
  ``GET /metrics`` (Prometheus);
* ``POST /admin/adapters/{name}?pin=false`` (load), ``DELETE /admin/adapters/{name}`` (unload):
  only when an admin token is set, and only with it.

With an API key every route but ``/health`` and ``/ready`` needs ``Authorization: Bearer KEY``
(probes carry no secrets and reveal nothing). Bodies over ``max_body_bytes`` are answered 413.
Errors: see ``errors.py``.
"""

from __future__ import annotations

import base64
import contextlib
import struct
import time
import uuid
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..serve.engine import as_request_setup
from ..serve.errors import ServingError
from ..serve.requests import ClassifyRequest, CompleteRequest, EmbedRequest
from .auth import bearer
from .errors import error_response, serving_error, validation_error
from .limits import BodyLimit
from .metrics import CONTENT_TYPE, ServerMetrics
from .schemas import (
    ClassifyBody,
    ClassifyResponse,
    CompletionsBody,
    CompletionsResponse,
    EmbeddingsBody,
    EmbeddingsResponse,
    ErrorResponse,
    ModelList,
)

ERRORS = {status: {"model": ErrorResponse} for status in (401, 403, 404, 409, 413, 422, 429, 503, 504)}


def create_app(backend: Any, api_key: str | None = None, admin_token: str | None = None,
               max_body_bytes: int = 1 << 20) -> FastAPI:
    """The ASGI application serving ``backend`` (``LocalBackend`` or the Ray backend)."""
    metrics = ServerMetrics(backend.counts)
    backend.observe(metrics.observe_pass)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await backend.close()  # uvicorn has stopped taking connections: drain the queue

    app = FastAPI(title="adapterkit", version=__version__, lifespan=lifespan,
                  description="One frozen base model, many adapters and heads, mixed in every batch.")
    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.observe_request(getattr(route, "path", "unmatched"), response.status_code, time.perf_counter() - start)
        return response

    api = APIRouter(dependencies=[Depends(bearer(api_key, "API key"))], responses=ERRORS)

    @api.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(body: ClassifyBody) -> dict:
        request = ClassifyRequest(as_request_setup(body.adapter), tuple(body.inputs), body.truncate)
        results = await backend.run(request)
        return {"adapter": body.adapter, "results": [asdict(r) for r in results]}

    @api.post("/v1/embeddings", response_model=EmbeddingsResponse)
    async def embeddings(body: EmbeddingsBody, http: Request) -> dict:
        http.state.fields = {"adapter": "model", "inputs": "input"}
        texts = [body.input] if isinstance(body.input, str) else body.input
        request = EmbedRequest(as_request_setup(body.model), tuple(texts), body.truncate, body.normalize)
        results = await backend.run(request)
        data = [{"object": "embedding", "index": i, "embedding": _encode(r.vector, body.encoding_format)}
                for i, r in enumerate(results)]
        tokens = sum(r.tokens for r in results)
        return {"object": "list", "data": data, "model": body.model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @api.post("/v1/completions", response_model=CompletionsResponse, response_model_exclude_none=True)
    async def completions(body: CompletionsBody, http: Request) -> dict:
        http.state.fields = {"adapter": "model", "inputs": "prompt"}
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        request = CompleteRequest(as_request_setup(body.model), tuple(prompts), body.max_tokens, body.truncate)
        results = await backend.run(request)
        prompt_tokens = sum(r.prompt_tokens for r in results)
        completion_tokens = sum(len(r.token_ids) for r in results)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": body.model,
            "choices": [{"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish_reason}
                        for i, r in enumerate(results)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    @api.get("/v1/models", response_model=ModelList)
    async def models() -> dict:
        return {"object": "list", "data": [{"id": m.pop("name"), "object": "model", **m} for m in await backend.models()]}

    @api.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(api)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready() -> JSONResponse:
        if backend.ready:
            return JSONResponse({"ready": True})
        return error_response(503, "not_ready", "the server is shutting down or not started")

    if admin_token is not None:
        admin = APIRouter(prefix="/admin", dependencies=[Depends(bearer(admin_token, "admin token"))], responses=ERRORS)

        @admin.post("/adapters/{name}")
        async def load(name: str, pin: bool = False) -> dict:
            loaded = await backend.load(name, pin)
            return {"loaded": loaded, "pinned": pin, "resident": [m["name"] for m in await backend.models() if m["resident"]]}

        @admin.delete("/adapters/{name}")
        async def unload(name: str) -> dict:
            return {"unloaded": await backend.unload(name)}

        app.include_router(admin)

    return app


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    """OpenAI's encodings: a list of floats, or little-endian float32 bytes in base64."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    kinds = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
    response = error_response(error.status_code, kinds.get(error.status_code, "http_error"), str(error.detail))
    for key, value in (error.headers or {}).items():
        response.headers[key] = value
    return response
