"""How the benchmarks measure a training step, its memory and inference latency.

Shared by ``bench_methods.py`` (adapterkit's methods against each other) and the side-by-side
benchmark with peft and AdapterHub (``bench_peers.py``, whose workers run in the peers' own
environments): every library is measured by this one protocol. It needs only torch and the
standard library, so it imports in any environment.

* step time: median wall time of forward + backward + optimizer step on one fixed batch, after
  two warm-up steps.
* peak memory: on CPU the growth of the process's peak resident set (``VmHWM`` in
  ``/proc/self/status``, reset through ``/proc/self/clear_refs`` once the model is loaded and
  freed heap memory was trimmed) over all training steps; on GPU the growth of
  ``torch.cuda.max_memory_allocated``. Either way: what training needs beyond the loaded model.
* heap peak (CPU): the most memory glibc had handed out and not had back (``mallinfo2``: small
  blocks + mmapped ones) during one training step, sampled at the end of every module's forward
  and at every gradient accumulation, minus the same figure for the loaded model: what training
  really holds (optimizer state, gradients, activations, temporaries at the sampled points),
  without the freed-but-kept memory that inflates the resident set.
* saved activations: the bytes of the distinct tensors autograd keeps for backward in one
  training forward (``torch.autograd.graph.saved_tensors_hooks``): exact and free of allocator
  noise, but without gradients, optimizer state and backward temporaries, which the peak has.
* inference: median latency of several callables, alternated call by call so that drift of a
  shared machine hits them all equally.
"""

from __future__ import annotations

import ctypes
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def rss_peak_kib() -> int:
    """The process's peak resident set since the last reset (``VmHWM``), KiB."""
    return _status_kib("VmHWM:")


def rss_kib() -> int:
    """The process's resident set now (``VmRSS``), KiB."""
    return _status_kib("VmRSS:")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``, milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def alternating_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each callable, called in turn ``repeats`` times (one call each per turn)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(median_ms(fn, 1))
    return {name: statistics.median(values) for name, values in times.items()}


class _MallInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo
    return libc


def heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not had back: small blocks plus mmapped ones."""
    info = _libc().mallinfo2()
    return info.uordblks + info.hblkhd


def heap_peak_during(model, step: Callable[[], object]) -> int:
    """The largest :func:`heap_in_use` seen while ``step()`` runs (see the module docstring)."""
    peak = 0

    def sample(*_):
        nonlocal peak
        peak = max(peak, heap_in_use())

    handles = [module.register_forward_hook(sample) for module in model.modules()]
    handles += [p.register_post_accumulate_grad_hook(sample) for p in model.parameters() if p.requires_grad]
    try:
        step()
        sample()
    finally:
        for handle in handles:
            handle.remove()
    return peak


def saved_activation_mib(forward: Callable[[], object]) -> float:
    """MiB of the distinct storages autograd saves for backward while ``forward()`` runs."""
    import torch

    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward()
    return sum(storages.values()) / 2**20


def measure_training(model, loss: Callable[[], object], optimizer, steps: int, device: str = "cpu") -> dict[str, float]:
    """Step time and memory of training ``model`` (in train mode) on one fixed batch.

    ``loss()`` runs the forward pass and returns the scalar loss; a step is that, its backward and
    ``optimizer``'s step. Call it right after loading the model and building the optimizer: the
    memory figures are growths over what the process holds at the call. Returns ``step_ms``,
    ``peak_mib`` (RSS or CUDA peak growth), ``saved_mib`` and, on CPU, ``heap_mib``.
    """
    import torch

    def step():
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _libc().malloc_trim(0)  # hand memory freed while loading back to the OS
        Path("/proc/self/clear_refs").write_text("5")
        before = rss_kib() * 1024
        loaded_heap = heap_in_use()
    for _ in range(2):
        step()
    step_ms = median_ms(step, steps)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else rss_peak_kib() * 1024) - before
    saved_mib = saved_activation_mib(loss)
    heap_mib = (heap_peak_during(model, step) - loaded_heap) / 2**20 if device == "cpu" else float("nan")
    return {"step_ms": step_ms, "peak_mib": peak / 2**20, "saved_mib": saved_mib, "heap_mib": heap_mib}
