"""Engine errors and malformed requests as HTTP answers: a status code and an OpenAI-style body
``{"error": {"message", "type", "param", "available"}}``.

| engine error | status | |
|---|---|---|
| ``UnknownAdapter`` | 404 | ``available`` lists the store's adapters |
| ``RefusedAdapter`` (a name or symlink leaving the store) | 403 | |
| ``IncompatibleAdapter`` (another base model) | 409 | |
| ``InvalidRequest``, ``InputTooLong``, a body that does not parse or validate | 422 | ``param`` names the field |
| ``QueueFull`` | 429 | ``Retry-After`` header |
| ``CapacityError``, ``ShuttingDown`` | 503 | |
| ``RequestTimeout`` | 504 | |
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..serve.errors import (
    CapacityError,
    IncompatibleAdapter,
    InvalidRequest,
    QueueFull,
    RefusedAdapter,
    RequestTimeout,
    ServingError,
    ShuttingDown,
    UnknownAdapter,
)

STATUS = {
    UnknownAdapter: (404, "unknown_adapter"),
    RefusedAdapter: (403, "refused_adapter"),
    IncompatibleAdapter: (409, "incompatible_adapter"),
    InvalidRequest: (422, "invalid_request"),
    QueueFull: (429, "queue_full"),
    CapacityError: (503, "capacity"),
    ShuttingDown: (503, "shutting_down"),
    RequestTimeout: (504, "timeout"),
}


def error_response(status: int, kind: str, message: str, param: str | None = None,
                   available: list[str] | None = None, retry_after: int | None = None) -> JSONResponse:
    body = {"message": message, "type": kind, "param": param}
    if available is not None:
        body["available"] = available
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def serving_error(request: Request, error: ServingError) -> JSONResponse:
    """An engine error as its status (see the table); fields named as the route names them
    (the OpenAI routes call the adapter ``model``)."""
    status, kind = next(v for cls, v in STATUS.items() if isinstance(error, cls))
    available = error.available if isinstance(error, UnknownAdapter) else None
    retry_after = error.retry_after if isinstance(error, QueueFull) else None
    param = getattr(error, "field", None)
    renames = getattr(request.state, "fields", {})
    if param is not None:
        head, sep, rest = param.partition("[")
        param = renames.get(head, head) + sep + rest
    return error_response(status, kind, str(error), param, available, retry_after)


def field_path(loc) -> str:
    """A validation error's location as a field path: ``("body", "inputs", 2)`` -> ``inputs[2]``."""
    path = ""
    for part in loc:
        if part == "body" and not path:
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """A body that is not JSON, or a field missing or of the wrong type: 422 naming the field."""
    problems = error.errors() or [{"loc": ("body",), "msg": "invalid request", "type": "invalid"}]
    if problems[0].get("type") == "json_invalid":
        where = problems[0]["loc"][-1]
        reason = (problems[0].get("ctx") or {}).get("error", "")
        return error_response(422, "invalid_request", f"the body is not valid JSON ({reason} at character {where})", "body")
    message = "; ".join(f"{field_path(e.get('loc', ()))}: {e.get('msg')}" for e in problems[:5])
    return error_response(422, "invalid_request", message, field_path(problems[0].get("loc", ())))
