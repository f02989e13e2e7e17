"""The HTTP service over the serving engine (FastAPI + uvicorn): ``create_app(backend)``; the
``adapterkit serve`` command starts it. A thin shell: requests are decoded here, run by
``adapterkit.serve``, and encoded back."""

from .app import create_app
from .backend import LocalBackend

__all__ = ["LocalBackend", "create_app"]
