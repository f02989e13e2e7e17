"""K-Adapter on minilm: pretrain a factual and a linguistic adapter, then compare downstream rows.

    python benchmarks/bench_kadapter.py --work runs/kadapter    # the README's table (2-core CPU)

1. ``fac``: ``k_adapter`` pretrained on ``kfacts`` (relation classification, held-out entities
   for its test); ``lin``: ``k_adapter`` pretrained on ``kdeps`` (dependency arcs of silver parses).
   Both once (seed 0, the first 4,000 training examples of each, one epoch), each alone:
   neither sees the other.
2. Per downstream task and seed: base + head (``probe``), + factual (``k_task`` over ``fac``),
   + linguistic, + both (knowledge adapters frozen, only the head trains), a Houlsby adapter of
   about one knowledge adapter's size, and full fine-tuning; every row with the same mean-pooled
   linear head, epochs, batch size and length, each method at its default learning rate.

Each run's result is kept in ``WORK/<task>/<row>/seed<k>/results.json``; a rerun skips what is
there. The table (mean and standard deviation over seeds) goes to stdout and ``WORK/table.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from adapterkit import AdapterModel
from adapterkit.data import load_task
from adapterkit.training import Trainer, TrainingConfig, add_task_adapter

KNOWLEDGE = {"bottleneck_size": 128, "num_heads": 4, "transformer_layers": 2}  # taps: 0, 2, 5 (first, middle, last)
ROWS = {
    "base + head": ("probe", {}),
    "+ factual": ("k_task", {"adapters": ["fac"]}),
    "+ linguistic": ("k_task", {"adapters": ["lin"]}),
    "+ both": ("k_task", {"adapters": ["fac", "lin"]}),
    "houlsby": ("houlsby", {"bottleneck_size": 192}),
    "full": ("full", {}),
}


def config(args, output: Path, seed: int, epochs: int) -> TrainingConfig:
    return TrainingConfig(
        epochs=epochs, batch_size=32, max_length=args.max_length, seed=seed, patience=None,
        output_dir=str(output), progress=False,
    )  # fmt: skip


def pretrain(args, name: str, task_name: str) -> dict:
    output = Path(args.work) / name
    if (output / "results.json").is_file():
        return json.loads((output / "results.json").read_text())
    task = load_task(task_name, seed=0, max_examples=args.pretrain_examples)
    model = AdapterModel.from_pretrained(args.model)
    add_task_adapter(model, name, "k_adapter", task, options=KNOWLEDGE)
    result = Trainer(model, name, task, config(args, output, 0, args.pretrain_epochs)).train()
    print(f"pretrained {name} on {task.describe()}: test {result.test_metrics} in {result.train_time_s:.0f} s", flush=True)
    return result.to_dict()


def downstream(args, task_name: str, row: str, seed: int) -> dict:
    output = Path(args.work) / task_name / row.replace(" ", "").replace("+", "with_") / f"seed{seed}"
    if (output / "results.json").is_file():
        return json.loads((output / "results.json").read_text())
    method, options = ROWS[row]
    task = load_task(task_name, seed=seed, max_examples=args.max_examples)
    model = AdapterModel.from_pretrained(args.model)
    for name in options.get("adapters", ()):
        model.load_adapter(Path(args.work) / name / "best", activate=False)
    add_task_adapter(model, "task", method, task, options=options, seed=seed)
    started = time.perf_counter()
    result = Trainer(model, "task", task, config(args, output, seed, args.epochs)).train()
    print(f"{task_name} {row} seed {seed}: {result.test_metrics} ({time.perf_counter() - started:.0f} s)", flush=True)
    return result.to_dict()


def table(args, results: dict) -> str:
    lines = [
        "| row | " + " | ".join(f"{t} acc (macro F1)" for t in args.tasks) + " | trained | stored |",
        "|---|" + "---|" * len(args.tasks) + "---|---|",
    ]
    for row in ROWS:
        cells = []
        for task in args.tasks:
            runs = results[(task, row)]
            acc = [100 * r["test_metrics"]["accuracy"] for r in runs]
            f1 = [100 * r["test_metrics"]["macro_f1"] for r in runs]
            spread = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
            cells.append(f"{statistics.mean(acc):.2f}{spread} ({statistics.mean(f1):.1f})")
        first = results[(args.tasks[0], row)][0]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {first['trainable_params']:,} | {first['saved_params']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/kadapter")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--tasks", nargs="+", default=["krel", "ktyping", "trec6"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-examples", type=int, default=500, help="per split of each downstream task")
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--pretrain-examples", type=int, default=4000, help="per split of kfacts and kdeps")
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    knowledge = {name: pretrain(args, name, task) for name, task in (("fac", "kfacts"), ("lin", "kdeps"))}
    results = {}
    for seed in args.seeds:
        for task in args.tasks:
            for row in args.rows:
                results.setdefault((task, row), []).append(downstream(args, task, row, seed))
    out = table(args, {key: value for key, value in results.items()})
    pretraining = {n: {k: r[k] for k in ("task", "test_metrics", "trainable_params", "train_time_s")} for n, r in knowledge.items()}
    text = f"{out}\n\npretraining: {json.dumps(pretraining)}\n"
    (Path(args.work) / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
