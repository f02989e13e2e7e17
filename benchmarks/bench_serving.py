"""Serving throughput and latency against the real HTTP server on loopback.

Usage::

    python benchmarks/bench_serving.py [--model minilm] [--clients 32] [--seconds 10] [--methods pfeiffer]
                                       [--adapters 1 16 64] [--max-batch-size 32] [--max-wait-ms 5]

Builds an adapter store of ``max(--adapters)`` adapters (``--methods`` in turn, seeded random
weights: speed does not depend on the values) for the base model, then starts ``adapterkit serve``
as its own process three times, all at once: mixing adapters in batches (adapterkit), with
batching off (``--max-batch-size 1``: one request per forward pass), and with a per-adapter-group
loop (``--no-mix-adapters``: a batch runs one pass per adapter, as peft runs mixed batches). Every
adapter is preloaded, so no run pays for loading. Against one server at a time (the others idle),
``--clients`` concurrent clients (asyncio, one connection each, closed loop) send one short text
(trec6 questions) per ``POST /v1/classify`` for ``--seconds`` after a warm-up, the adapter of each
request drawn from ``N`` adapters uniformly or skewed (Zipf, s = 1: the first adapter gets ~21%
of 64's traffic). ``--rounds`` rounds alternate the servers and configurations, and each figure
is the median over rounds, so ratios compare like with like on a shared, busy machine.

Printed: requests per second, p50 / p99 latency (ms, pooled over rounds), mean rows per forward
pass (from the server's ``/metrics``), ratios against the 1-adapter run and against batching off,
and the server's resident memory (``VmRSS``) with no adapter and with all loaded, per adapter
against the adapters' own tensor bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from adapterkit import AdapterModel, HeadConfig


def build_store(model_name: str, count: int, methods: list[str], folder: Path) -> int:
    """``count`` adapters named ``a00``, ``a01``, ... with 6-label heads; returns their tensor bytes."""
    model = AdapterModel.from_pretrained(model_name)
    generator = torch_generator()
    total = 0
    for index in range(count):
        name, method = f"a{index:02d}", methods[index % len(methods)]
        model.add_adapter(name, method, HeadConfig(num_labels=6, label_names=tuple("ABCDEF")))
        with __import__("torch").no_grad():
            for tensor in model.adapter_state(name).tensors().values():
                tensor.add_(__import__("torch").randn(tensor.shape, generator=generator) * 0.02)
        model.save_adapter(name, folder / name)
        total += (folder / name / "adapter.safetensors").stat().st_size
        model.delete_adapter(name)
    return total


def torch_generator():
    import torch

    return torch.Generator().manual_seed(0)


def short_texts() -> list[str]:
    from adapterkit.data import load_task

    return [example.texts[0] for example in load_task("trec6").test[:200]]


class Server:
    """``adapterkit serve`` in its own process on a free loopback port."""

    def __init__(self, model: str, store: Path, count: int, extra: list[str]):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        preload = ",".join(f"a{i:02d}" for i in range(count))
        command = [sys.executable, "-m", "adapterkit", "serve", "--model", model, "--store", str(store),
                   "--port", str(self.port), "--max-adapters", str(max(count, 1)), "--max-queue", "4096",
                   "--preload", preload, *extra]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        end = time.monotonic() + 300
        while True:
            if self.process.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"adapterkit serve did not start: {' '.join(command)}")
            try:
                if httpx.get(f"{self.url}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.5)

    def rss_mib(self) -> float:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024

    def pass_rows(self) -> tuple[float, float]:
        """(sum of rows, passes) of the server's classify passes so far."""
        text = httpx.get(f"{self.url}/metrics").text
        total = float(re.search(r'adapterkit_pass_rows_sum\{kind="classify"\} (\S+)', text).group(1))
        count = float(re.search(r'adapterkit_pass_rows_count\{kind="classify"\} (\S+)', text).group(1))
        return total, count

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def batching_bound(model_name: str, texts: list[str], rows: int, threads: int | None) -> dict:
    """What batching can gain in compute alone on this machine: the base model's forward time for
    one text and for ``rows`` texts (median of 20, in this process, servers stopped)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = AdapterModel.from_pretrained(model_name).eval()

    def timed(batch_texts: list[str]) -> float:
        batch = model.tokenizer(batch_texts, padding=True, return_tensors="pt")
        times = []
        with torch.inference_mode():
            for _ in range(22):
                start = time.perf_counter()
                model(**batch)
                times.append(time.perf_counter() - start)
        return statistics.median(times[2:])

    one = statistics.median(timed([text]) for text in texts[:5])
    many = timed(texts[:rows])
    return {"one_row_ms": 1000 * one, "rows": rows, "batch_ms": 1000 * many, "bound": one * rows / many}


def popularity(count: int, skewed: bool) -> list[float]:
    weights = [1.0 / (rank + 1) if skewed else 1.0 for rank in range(count)]
    return [w / sum(weights) for w in weights]


async def load(url: str, clients: int, seconds: float, count: int, skewed: bool, texts: list[str], seed: int) -> list[float]:
    """Closed-loop clients for ``seconds``; returns the latencies (s) of the requests that finished."""
    rng = random.Random(seed)
    names, weights = [f"a{i:02d}" for i in range(count)], popularity(count, skewed)
    latencies: list[float] = []
    failures: list[int] = []
    end = time.monotonic() + seconds

    async def client(session: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            body = {"adapter": rng.choices(names, weights)[0], "inputs": [rng.choice(texts)]}
            start = time.perf_counter()
            response = await session.post("/v1/classify", json=body)
            if response.status_code != 200:
                failures.append(response.status_code)
                continue
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    if failures:
        raise SystemExit(f"{len(failures)} requests failed: {sorted(set(failures))}")
    return latencies


def measure(server: Server, args, count: int, skewed: bool, texts: list[str], seed: int) -> dict:
    """One timed window: throughput, latencies and rows per pass."""
    asyncio.run(load(server.url, args.clients, args.warmup, count, skewed, texts, seed=seed))
    rows_before, passes_before = server.pass_rows()
    start = time.perf_counter()
    latencies = asyncio.run(load(server.url, args.clients, args.seconds, count, skewed, texts, seed=seed + 1))
    elapsed = time.perf_counter() - start
    rows_after, passes_after = server.pass_rows()
    return {"throughput": len(latencies) / elapsed, "latencies": latencies,
            "rows_per_pass": (rows_after - rows_before) / max(1.0, passes_after - passes_before)}


def summarize(mode: str, count: int, skewed: bool, windows: list[dict]) -> dict:
    """The median over rounds of throughput and rows per pass; latency percentiles over all."""
    ordered = sorted(x for w in windows for x in w["latencies"])
    return {
        "mode": mode, "adapters": count, "popularity": "skewed" if skewed else "uniform", "requests": len(ordered),
        "throughput": statistics.median(w["throughput"] for w in windows),
        "throughput_rounds": [round(w["throughput"], 1) for w in windows],
        "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "rows_per_pass": statistics.median(w["rows_per_pass"] for w in windows),
    }


MODES = {
    "adapterkit (mixed batches)": [],
    "batching off": ["--max-batch-size", "1"],
    "per-adapter-group loop": ["--no-mix-adapters"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--methods", nargs="+", default=["pfeiffer"])
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, help="the server's torch threads (default: torch's)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    most = max(args.adapters)
    texts = short_texts()
    configs = [(count, skewed) for count in args.adapters for skewed in ([False] if count == 1 else [False, True])]
    windows: dict[tuple, list[dict]] = {}
    memory = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        adapter_bytes = build_store(args.model, most, args.methods, store)
        bare = Server(args.model, store, 0, [])
        memory["rss_bare_mib"] = bare.rss_mib()
        bare.stop()
        servers = {}
        try:
            for mode in args.modes:
                threads = ["--threads", str(args.threads)] if args.threads else []
                batch = [] if "--max-batch-size" in MODES[mode] else ["--max-batch-size", str(args.max_batch_size)]
                servers[mode] = Server(args.model, store, most, MODES[mode] + threads + batch + ["--max-wait-ms", str(args.max_wait_ms)])
            memory["rss_loaded_mib"] = servers[args.modes[0]].rss_mib()
            for round_ in range(args.rounds):
                for count, skewed in configs:
                    for mode, server in servers.items():
                        window = measure(server, args, count, skewed, texts, seed=2 * round_)
                        windows.setdefault((mode, count, skewed), []).append(window)
                        print(json.dumps({"round": round_, "mode": mode, "adapters": count, "skewed": skewed,
                                          "throughput": round(window["throughput"], 1)}), flush=True)
        finally:
            for server in servers.values():
                server.stop()
    memory["adapters"] = most
    memory["adapter_mib"] = adapter_bytes / 2**20 / most
    memory["batching"] = batching_bound(args.model, texts, args.max_batch_size, args.threads)
    results = [summarize(mode, count, skewed, windows[(mode, count, skewed)])
               for mode in args.modes for count, skewed in configs]
    report(results, memory, args)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "memory": memory, "args": {**vars(args), "json": str(args.json)}}, indent=2))


def report(results: list[dict], memory: dict, args) -> None:
    print(f"\n{args.model}, {args.clients} clients, {args.rounds} rounds of {args.seconds:.0f} s per row, "
          f"methods {','.join(args.methods)}, torch threads {args.threads or 'default'}, "
          f"max batch {args.max_batch_size} rows, max wait {args.max_wait_ms} ms, {os.cpu_count()} CPUs\n")
    print("| server | adapters | popularity | req/s | p50 ms | p99 ms | rows/pass | vs 1 adapter | vs batching off |")
    print("|---|---|---|---|---|---|---|---|---|")
    single = {r["mode"]: r["throughput"] for r in results if r["adapters"] == 1}
    off = {(r["adapters"], r["popularity"]): r["throughput"] for r in results if r["mode"] == "batching off"}
    for r in results:
        ratio_single = f"{r['throughput'] / single[r['mode']]:.2f}x" if r["mode"] in single else "-"
        ratio_off = off.get((r["adapters"], r["popularity"]))
        ratio_off = f"{r['throughput'] / ratio_off:.2f}x" if ratio_off and r["mode"] != "batching off" else "-"
        print(f"| {r['mode']} | {r['adapters']} | {r['popularity']} | {r['throughput']:.1f} | {r['p50_ms']:.0f} | "
              f"{r['p99_ms']:.0f} | {r['rows_per_pass']:.1f} | {ratio_single} | {ratio_off} |")
    grown = memory["rss_loaded_mib"] - memory["rss_bare_mib"]
    bound = memory["batching"]
    print(f"\ncompute bound of batching on this machine: one text {bound['one_row_ms']:.1f} ms, {bound['rows']} texts "
          f"{bound['batch_ms']:.1f} ms: batching can be at most {bound['bound']:.2f}x faster than one request per pass")
    print(f"resident memory: {memory['rss_bare_mib']:.0f} MiB with no adapter, {memory['rss_loaded_mib']:.0f} MiB with "
          f"{memory['adapters']} loaded: {grown / memory['adapters']:.2f} MiB per adapter "
          f"(its tensors: {memory['adapter_mib']:.2f} MiB)")


if __name__ == "__main__":
    main()
