"""What can go wrong with a served request, as exceptions a front end maps to its own answers.

The engine knows no HTTP; each class says which kind of failure it is, and the server turns it
into a status code (``adapterkit.server.errors``): an unknown adapter, an adapter name that tries
to leave the store, an adapter of another base model, a malformed request (naming its field), an
input longer than the model reads, a full queue (with how long to wait), a request past its
timeout, and a server that is shutting down. Every message says what to do instead.
"""

from __future__ import annotations

from collections.abc import Sequence


class ServingError(Exception):
    """Base of every error the engine raises for one request (the others are bugs)."""


class UnknownAdapter(ServingError, LookupError):
    """No adapter of this name in the store.

    Attributes:
        name: the name asked for.
        available: the adapters the store holds, sorted.
    """

    def __init__(self, name: str, available: Sequence[str]):
        self.name = name
        self.available = sorted(available)
        shown = ", ".join(self.available[:50]) + (" ..." if len(self.available) > 50 else "")
        super().__init__(f"no adapter named {name!r} in the store; available: {shown or 'none'}")

    def __reduce__(self):  # pickled across processes (Ray Serve replicas) with its attributes
        return type(self), (self.name, self.available)


class RefusedAdapter(ServingError):
    """An adapter name or folder that would read outside the store (``../``, an absolute path,
    a symlink that points out of it)."""


class IncompatibleAdapter(ServingError):
    """The adapter was trained on another base model (its fingerprint differs), or its files do
    not match its config."""


class InvalidRequest(ServingError, ValueError):
    """A request the engine cannot run as written.

    Attributes:
        field: where in the request the problem is (``adapter``, ``inputs[3]``, ``max_tokens``).
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}")

    def __reduce__(self):
        return type(self), (self.field, self.detail)


class InputTooLong(InvalidRequest):
    """An input longer than the model (and the setup's prompts) allow, with truncation off."""


class QueueFull(ServingError):
    """The bounded queue is full.

    Attributes:
        retry_after: seconds after which a retry has a fair chance (whole seconds, >= 1).
    """

    def __init__(self, depth: int, retry_after: int):
        self.depth = depth
        self.retry_after = retry_after
        super().__init__(f"the request queue is full ({depth} waiting); retry in {retry_after} s")

    def __reduce__(self):
        return type(self), (self.depth, self.retry_after)


class RequestTimeout(ServingError, TimeoutError):
    """The request waited or ran past its timeout; its result, if any, is dropped."""


class ShuttingDown(ServingError):
    """The engine is closing: it finishes what is queued and takes nothing new."""


class CapacityError(ServingError):
    """The request needs more resident adapters than the engine may hold (``max_adapters``), or
    every resident adapter is pinned or in use."""
