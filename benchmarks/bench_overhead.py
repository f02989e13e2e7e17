"""Python overhead of one adapted forward pass at batch 1, optionally against another checkout.

What it times on ``minilm`` (one thread, batch 1, a ``--tokens``-token input, eval mode, no
grad), each as the median of ``--rounds`` rounds of ``--calls`` calls, and how many Python
function calls one pass makes (counted by ``cProfile``: the same on a busy or a quiet machine):

* ``base``: the base model's body called directly (no adapter machinery in the pass);
* ``none``: ``model(**batch, adapters=None)``: the facade with no adapter, its head skipped;
* ``pfeiffer``: ``model(**batch, adapters="name")`` with a Pfeiffer adapter and its head;
* ``lora``: the same with a LoRA adapter (q, v) and its head.

``overhead`` is a setup's time minus ``base``: what the facade, the hooks and the adapter's own
small matrices add. With ``--compare SRC`` the same measurement runs on the adapterkit found in
``SRC`` (another checkout's ``src`` folder), the two interleaved round by round in separate
worker processes, and ratios are printed side by side from the one run.

    python benchmarks/bench_overhead.py --compare /tmp/old/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETUPS = ("base", "none", "pfeiffer", "lora")


def worker(calls: int, tokens: int) -> dict[str, float]:
    """One round in this process: microseconds per call for every setup, and (``<setup>_calls``)
    the Python function calls of one pass."""
    import cProfile
    import pstats

    import torch

    from adapterkit import AdapterModel, HeadConfig

    torch.set_num_threads(1)
    model = AdapterModel.from_pretrained("minilm")
    model.add_adapter("pfeiffer", "pfeiffer", HeadConfig(num_labels=2))
    model.add_adapter("lora", "lora", HeadConfig(num_labels=2))
    model.eval()
    text = "a gorgeous, witty and moving film about the sea and the sky"
    batch = dict(model.tokenizer([text], return_tensors="pt", truncation=True, padding="max_length", max_length=tokens))
    calls_of = {
        "base": lambda: model.body(**batch),
        "none": lambda: model(**batch, adapters=None),
        "pfeiffer": lambda: model(**batch, adapters="pfeiffer"),
        "lora": lambda: model(**batch, adapters="lora"),
    }
    result = {}
    with torch.no_grad():
        for name, call in calls_of.items():
            for _ in range(20):  # warm up
                call()
            started = time.perf_counter()
            for _ in range(calls):
                call()
            result[name] = (time.perf_counter() - started) / calls * 1e6
            profile = cProfile.Profile()
            profile.runcall(call)
            result[f"{name}_calls"] = pstats.Stats(profile).total_calls
    return result


def run_round(src: Path, calls: int, tokens: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_overhead as b; "
        f"print(json.dumps(b.worker({calls}, {tokens})))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=16, help="input length (default 16)")
    parser.add_argument("--compare", type=Path, metavar="SRC", help="another checkout's src folder, measured alongside")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1] / "src"
    checkouts = {"this": here, **({"other": args.compare.resolve()} if args.compare else {})}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    for _ in range(args.rounds):
        for name, src in checkouts.items():  # interleaved: both see the same machine load
            rounds[name].append(run_round(src, args.calls, args.tokens))
    keys = [*SETUPS, *(f"{s}_calls" for s in SETUPS)]
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in keys} for name, runs in rounds.items()}
    print(
        f"minilm, batch 1 x {args.tokens} tokens, 1 thread, median of {args.rounds} rounds x {args.calls} calls "
        "(microseconds per call; Python calls per pass)"
    )
    header = f"{'setup':<10}" + "".join(f"{name:>12}{'overhead':>12}{'py calls':>10}" for name in checkouts)
    if args.compare:
        header += f"{'time this/other':>18}{'overhead this/other':>22}"
    print(header)
    for setup in SETUPS:
        line = f"{setup:<10}"
        for name in checkouts:
            overhead = medians[name][setup] - medians[name]["base"]
            line += f"{medians[name][setup]:>12.0f}{overhead:>12.0f}{medians[name][setup + '_calls']:>10.0f}"
        if args.compare:
            this, other = medians["this"], medians["other"]
            line += f"{this[setup] / other[setup]:>18.3f}"
            if setup != "base":
                line += f"{(this[setup] - this['base']) / max(other[setup] - other['base'], 1e-9):>22.3f}"
        print(line)


if __name__ == "__main__":
    main()
