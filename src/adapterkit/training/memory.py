"""Peak memory of a training run, measured the way each device allows.

GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: the exact peak of
tensor memory on the device (weights, activations, gradients, optimizer state), which is what
decides whether a method fits a card.

CPU: the growth of the process's resident set size (RSS) above its level when training starts,
i.e. what training added on top of the loaded model: activations kept for backward, gradients
and optimizer state. Why not the obvious tools:

* ``tracemalloc`` sees only allocations made through Python's allocator; torch allocates tensor
  storage in C++ (``c10::alloc_cpu``), so tracemalloc misses nearly all of it.
* ``resource.getrusage().ru_maxrss`` is the high-water mark of the whole process lifetime and
  cannot be reset: if loading the model (or an earlier run in the same process) peaked higher,
  training's own peak is invisible.

So a background thread samples the RSS with ``psutil`` every few milliseconds and keeps the
maximum; a spike shorter than the interval can be missed, so when training did set a new
lifetime high, the exact ``ru_maxrss`` replaces the sampled value. Without psutil only how far
training raised ``ru_maxrss`` is known (0 when it did not exceed the earlier peak). RSS includes
memory the allocator keeps cached, so it is an upper bound of the tensors live at the peak.
"""

from __future__ import annotations

import resource
import sys
import threading

import torch

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with accelerate
    psutil = None

_INTERVAL_S = 0.01


def _max_rss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


class PeakMemory:
    """``with PeakMemory(device) as peak: ...``; then ``peak.bytes`` and ``peak.measure``.

    ``peak.so_far()`` reads the peak while the block is still running.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.bytes = 0
        self.measure = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_growth"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_rss = 0
        self._start_maxrss = 0
        self._sampled = 0

    def _rss(self) -> int:
        return psutil.Process().memory_info().rss if psutil is not None else 0

    def _sample(self) -> None:
        process = psutil.Process()
        while not self._stop.wait(_INTERVAL_S):
            self._sampled = max(self._sampled, process.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._start_maxrss = _max_rss_bytes()
        self._start_rss = self._rss()
        self._sampled = self._start_rss
        if psutil is not None:
            self._thread = threading.Thread(target=self._sample, name="adapterkit-peak-rss", daemon=True)
            self._thread.start()
        return self

    def so_far(self) -> int:
        """The peak (in bytes, as described in the module docstring) since entering."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        max_rss = _max_rss_bytes()
        if psutil is None:  # only how far training raised the lifetime peak is known
            return max(0, max_rss - self._start_maxrss)
        peak = max(self._sampled, self._rss())
        if max_rss > self._start_maxrss:  # training set a new lifetime high: ru_maxrss is exact
            peak = max(peak, max_rss)
        return max(0, peak - self._start_rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.bytes = self.so_far()
