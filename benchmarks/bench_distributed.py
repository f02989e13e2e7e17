"""Training throughput of 1 vs N data-parallel processes (torchrun, gloo on CPU), and what limits it.

Each configuration runs in fresh processes under ``torchrun`` and times the trainer's own step
(forward, backward, DDP gradient all-reduce, clipping, AdamW) on MiniLM with a Houlsby adapter,
over the same sequence of real global batches (rotten_tomatoes, dynamic padding): the accelerator
from :func:`adapterkit.distributed.make_accelerator` splits each global batch across the processes,
exactly as ``adapterkit train --nproc N`` does. Configurations (``--configs``):

* ``1x2``: one process, 2 intra-op threads (what ``adapterkit train`` does on 2 cores);
* ``1x1``: one process, 1 thread (the per-process speed the N-process run starts from);
* ``2x1``: two processes, 1 thread each (``adapterkit train --nproc 2`` on 2 cores).

Multi-process runs also time the same steps under DDP's ``no_sync()`` (no gradient all-reduce),
which splits a step into compute and communication, and time one bare ``all_reduce`` of the
trainable gradients.

    python benchmarks/bench_distributed.py                      # all configurations, a table
    python benchmarks/bench_distributed.py --configs 1x2 2x1 --steps 30 --batch-size 64

Check that nothing else heavy runs (``ps``/``uptime``): the processes compete for the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from adapterkit import AdapterModel
    from adapterkit.data import load_task
    from adapterkit.distributed import make_accelerator
    from adapterkit.training import Collator, TrainingConfig, add_task_adapter, encode_examples, make_loader

    torch.set_num_threads(args.threads)
    task = load_task("rotten_tomatoes")
    model = AdapterModel.from_pretrained(args.model)
    add_task_adapter(model, "rt", args.method, task, seed=0)
    model.train_adapter("rt")
    model.train()
    config = TrainingConfig(batch_size=args.batch_size, max_length=args.max_length, progress=False)
    acc = make_accelerator(config)
    steps = args.warmup + args.steps
    examples = task.train[: steps * args.batch_size]
    loader = make_loader(encode_examples(model.tokenizer, examples, args.max_length), Collator(model.tokenizer, task.kind), args.batch_size, 0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    wrapped, optimizer, loader = acc.prepare(model, optimizer, loader)
    batches = list(loader)  # tokenised and split up front: the timing is the step alone

    def step(batch) -> None:
        loss = wrapped(**batch, adapters="rt").loss
        acc.backward(loss)
        acc.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(sync: bool) -> float:
        for batch in batches[: args.warmup]:
            step(batch)
        acc.wait_for_everyone()
        started = time.perf_counter()
        for batch in batches[args.warmup :]:
            if sync or acc.num_processes == 1:
                step(batch)
            else:
                with wrapped.no_sync():
                    step(batch)
        acc.wait_for_everyone()
        return time.perf_counter() - started

    result = {"processes": acc.num_processes, "threads": args.threads, "steps": args.steps, "batch_size": args.batch_size}
    result["seconds"] = timed(sync=True)
    if acc.num_processes > 1:
        result["seconds_no_sync"] = timed(sync=False)
        flat = torch.zeros(sum(p.numel() for p in trainable))
        dist.all_reduce(flat)
        started = time.perf_counter()
        for _ in range(args.steps):
            dist.all_reduce(flat)
        result["allreduce_ms"] = 1000 * (time.perf_counter() - started) / args.steps
        result["allreduce_mb"] = flat.numel() * 4 / 2**20
    result["examples_per_s"] = args.steps * args.batch_size / result["seconds"]
    result["trainable_params"] = sum(p.numel() for p in trainable)
    if acc.is_main_process:
        Path(args.result).write_text(json.dumps(result))


def run_config(config: str, args: argparse.Namespace) -> dict:
    processes, threads = (int(x) for x in config.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", __file__,
            "--worker", "--threads", str(threads), "--result", str(result), "--model", args.model, "--method",
            args.method, "--batch-size", str(args.batch_size), "--max-length", str(args.max_length), "--steps",
            str(args.steps), "--warmup", str(args.warmup),
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{config} failed:\n{done.stderr[-4000:]}")
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["1x2", "1x1", "2x1"], help="PROCESSESxTHREADS")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--method", default="houlsby")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch of one step")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()}")
    print("| processes x threads | examples/s | step (ms) | step without all-reduce (ms) | bare all-reduce (ms, MiB) |")
    print("|---|---|---|---|---|")
    for config in args.configs:
        r = run_config(config, args)
        step_ms = 1000 * r["seconds"] / r["steps"]
        no_sync = f"{1000 * r['seconds_no_sync'] / r['steps']:.0f}" if "seconds_no_sync" in r else "-"
        reduce = f"{r['allreduce_ms']:.1f} ({r['allreduce_mb']:.1f})" if "allreduce_ms" in r else "-"
        print(f"| {config} | {r['examples_per_s']:.1f} | {step_ms:.0f} | {no_sync} | {reduce} |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
