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
