"""Several threads running different setups on one shared model at once.

Each forward pass keeps its state in its own context (``context.py``), so threads that run a
Routed batch, a fusion, a prefix, a prompt, a Parallel pass, AdapterDrop and a stack on one
model, hundreds of times each and interleaved, get bit for bit what the same calls give one
after another.
"""

from __future__ import annotations

import threading

import pytest
import torch
from tiny_models import tiny_base, tiny_batch

from adapterkit import AdapterDrop, AdapterModel, Fuse, HeadConfig, Parallel, Routed, Stack

SETUPS = {
    "routed": Routed(["a", "lora", None, "prefix"]),
    "fuse": Fuse("a", "b", fusion="f"),
    "prefix": "prefix",
    "parallel": Parallel("a", "lora"),
    "prompt": "prompt",
    "drop": AdapterDrop(Stack("a", "lora"), first=1),
    "stack": Stack("b", "lora"),
    "deep": "deep",
}


@pytest.fixture(scope="module")
def model() -> AdapterModel:
    model = AdapterModel(tiny_base("bert"))
    head = HeadConfig(num_labels=3, dropout=0.0)
    model.add_adapter("a", "pfeiffer", head, bottleneck_size=4)
    model.add_adapter("b", "houlsby", head, bottleneck_size=4)
    model.add_adapter("lora", "lora", head, r=2)
    model.add_adapter("prefix", "prefix", head, prefix_length=3, reparam_hidden=8)
    model.add_adapter("prompt", "prompt", head, prompt_length=3, init="random")
    model.add_adapter("deep", "deep_prompt", head, prompt_length=2, init="random")
    model.add_adapter("f", "fusion", head, adapters=("a", "b"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if not any(param is p for p in model.base.parameters()):
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def outputs(model: AdapterModel, name: str, batch) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        result = model(**batch, adapters=SETUPS[name])
    if name in ("routed", "parallel"):
        return tuple(result[task].logits for task in sorted(result.tasks))
    return (result.logits,)


@pytest.mark.parametrize("threads", [2, 8])
def test_threads_running_different_setups_get_what_sequential_calls_get(model, threads):
    names = list(SETUPS)[:threads]
    batch = tiny_batch(batch=4, seq=6)
    expected = {name: outputs(model, name, batch) for name in names}
    repeats = 300 if threads == 2 else 60
    failures: list[str] = []
    start = threading.Barrier(threads)

    def work(name: str) -> None:
        start.wait()
        for step in range(repeats):
            got = outputs(model, name, batch)
            if not all(torch.equal(g, e) for g, e in zip(got, expected[name])):
                failures.append(f"{name} differs at step {step}")
                return

    workers = [threading.Thread(target=work, args=(name,)) for name in names]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures, failures
