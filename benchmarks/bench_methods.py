"""Training-step time, training peak memory and inference latency of each method on ``minilm``
(or on an image model: ``--model efficientnet-lite0 --image-size 64``, random images).

Usage: ``python benchmarks/bench_methods.py [--model minilm] [--batch 32] [--seq 64] [--steps 10]
[--methods full houlsby houlsby:train_layer_norms=false ...]``

A method is ``NAME[:option=value...]`` (values read as JSON, as ``adapterkit train --option``
reads them), so variants of one method can be compared in the same run; ``full`` must be among
them, it is the reference of the ratios.

Every method runs in its own fresh worker process, so memory freed by one method cannot hide
another's peak; the workers run one after the other in the same invocation (rounds alternate
the order) and ratios are taken against the full fine-tuning and plain-model figures of *this*
run, the only comparison that means anything on a noisy shared machine.

* step time: median wall time of forward + backward + AdamW step on one fixed batch.
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
* inference: median forward latency (eval mode, no grad) of the adapted model against the plain
  model, alternated in the same worker; LoRA is also measured merged into the base weights.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["full", "houlsby", "pfeiffer", "parallel", "scaled_parallel", "lora", "bitfit", "probe", "partial"]


def _rss_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("VmHWM not found in /proc/self/status")


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status")


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


class _MallInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo
    return libc


def _heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not had back: small blocks plus mmapped ones."""
    info = _libc().mallinfo2()
    return info.uordblks + info.hblkhd


def _heap_peak_during(model, step) -> int:
    """The largest :func:`_heap_in_use` seen while ``step()`` runs (see the module docstring)."""
    peak = 0

    def sample(*_):
        nonlocal peak
        peak = max(peak, _heap_in_use())

    handles = [module.register_forward_hook(sample) for module in model.modules()]
    handles += [p.register_post_accumulate_grad_hook(sample) for p in model.parameters() if p.requires_grad]
    try:
        step()
        sample()
    finally:
        for handle in handles:
            handle.remove()
    return peak


def _saved_activation_mib(forward) -> float:
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


def worker(spec: str, args: argparse.Namespace) -> dict:
    import torch

    from adapterkit import AdapterModel, HeadConfig
    from adapterkit.cli.common import options_dict, parse_option

    method, *options = spec.split(":")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = {"image_size": args.image_size} if args.image_size else {}
    model = AdapterModel.from_pretrained(args.model, **size).to(device)
    model.add_adapter("task", method, HeadConfig(num_labels=2), **options_dict([parse_option(o) for o in options]))
    model.train_adapter("task")
    if model.processor is not None:  # an image model: random images of its input size
        side = model.processor.size
        batch = {"pixel_values": torch.randn(args.batch, 3, side, side, device=device)}
    else:
        vocab = model.parts.embeddings.num_embeddings
        batch = {
            "input_ids": torch.randint(1000, vocab, (args.batch, args.seq), device=device),
            "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long, device=device),
        }
    labels = torch.randint(0, 2, (args.batch,), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step():
        loss = model(**batch, labels=labels).loss
        loss.backward()
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
        before = _rss_kib() * 1024
        loaded_heap = _heap_in_use()
    for _ in range(2):
        step()
    step_ms = _median_ms(step, args.steps)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _rss_peak_kib() * 1024) - before
    trained, total = model.count_parameters("task")
    saved_mib = _saved_activation_mib(lambda: model(**batch, labels=labels).loss)
    heap_mib = (_heap_peak_during(model, step) - loaded_heap) / 2**20 if device == "cpu" else float("nan")

    model.eval()
    result = {"method": spec, "step_ms": step_ms, "peak_mib": peak / 2**20, "saved_mib": saved_mib, "heap_mib": heap_mib, "trainable": trained, "total": total}
    if method in ("full", "partial", "probe"):
        return result  # no adapter in the forward path: inference equals the plain model

    def latency(adapters) -> float:
        with torch.no_grad():
            return _median_ms(lambda: model(**batch, adapters=adapters), 1)

    plain, adapted = [], []
    for _ in range(args.steps):  # alternate so drift hits both equally
        plain.append(latency(None))
        adapted.append(latency("task"))
    result["infer_ms"], result["plain_ms"] = statistics.median(adapted), statistics.median(plain)
    if method == "lora":  # merged but still loaded: the sites stay hooked and add nothing
        model.merge_adapter("task")
        merged, plain = [], []
        for _ in range(args.steps):
            plain.append(latency(None))
            merged.append(latency("task"))
        result["merged_infer_ms"], result["merged_plain_ms"] = statistics.median(merged), statistics.median(plain)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=0, help="image models: the input size (0: the model's default)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all methods (order alternates)")
    parser.add_argument("--methods", nargs="+", default=METHODS, metavar="METHOD[:OPTION=VALUE...]")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    methods = args.methods
    if "full" not in methods:
        raise SystemExit("--methods must include full: the ratios are taken against it")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for round_index in range(args.rounds):
        for method in methods if round_index % 2 == 0 else reversed(methods):
            cmd = [sys.executable, __file__, "--worker", method] + [
                f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("model", "batch", "seq", "steps", "threads", "image_size")
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[method].append(json.loads(out.strip().splitlines()[-1]))
            print(f"  round {round_index + 1}: {method} done", file=sys.stderr)

    def med(method: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[method])

    full_step, full_mem, full_saved = med("full", "step_ms"), med("full", "peak_mib"), runs["full"][0]["saved_mib"]
    full_heap = med("full", "heap_mib")
    shape = f"image={args.image_size or 'default'}" if args.image_size else f"seq={args.seq}"
    print(f"model={args.model} batch={args.batch} {shape} steps={args.steps} rounds={args.rounds} threads={args.threads}")
    print("| method | trainable | share | step ms | speed-up vs full | peak MiB | memory vs full | heap peak MiB (vs full) | saved activations MiB (vs full) | inference overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        r = runs[method][0]
        overhead = "-"
        if "infer_ms" in r:
            overhead = f"{(med(method, 'infer_ms') / med(method, 'plain_ms') - 1) * 100:+.1f}%"
            if "merged_infer_ms" in r:
                merged = med(method, "merged_infer_ms") / med(method, "merged_plain_ms") - 1
                overhead += f" (merged {merged * 100:+.1f}%)"
        print(
            f"| {method} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f}% | {med(method, 'step_ms'):.0f} | "
            f"{full_step / med(method, 'step_ms'):.2f}x | {med(method, 'peak_mib'):.0f} | "
            f"{med(method, 'peak_mib') / full_mem:.2f}x | "
            f"{med(method, 'heap_mib'):.0f} ({med(method, 'heap_mib') / full_heap:.2f}x) | {r['saved_mib']:.0f} ({r['saved_mib'] / full_saved:.2f}x) | {overhead} |"
        )


if __name__ == "__main__":
    main()
