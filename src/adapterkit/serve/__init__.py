"""Serving many adapters on one frozen base model, without HTTP (the server in
``adapterkit.server`` is a thin shell over this): an adapter registry over a store folder (LRU,
pinning, preload, names kept inside the store, base-model fingerprints checked), a micro-batcher,
and passes that mix requests for different adapters in one forward pass (``Routed``)."""

from .engine import Engine, EngineConfig, PassEvent, as_request_setup
from .errors import (
    CapacityError,
    IncompatibleAdapter,
    InputTooLong,
    InvalidRequest,
    QueueFull,
    RefusedAdapter,
    RequestTimeout,
    ServingError,
    ShuttingDown,
    UnknownAdapter,
)
from .registry import AdapterRegistry
from .requests import (
    ClassifyRequest,
    ClassResult,
    CompleteRequest,
    Completion,
    EmbedRequest,
    Embedding,
    TaskResults,
    ValueResult,
)

__all__ = [
    "AdapterRegistry", "CapacityError", "ClassResult", "ClassifyRequest", "CompleteRequest", "Completion",
    "EmbedRequest", "Embedding", "Engine", "EngineConfig", "IncompatibleAdapter", "InputTooLong", "InvalidRequest",
    "PassEvent", "QueueFull", "RefusedAdapter", "RequestTimeout", "ServingError", "ShuttingDown", "TaskResults",
    "UnknownAdapter", "ValueResult", "as_request_setup",
]
