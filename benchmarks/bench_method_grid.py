"""Train a grid of methods x tasks with ``adapterkit train``, one run after another, then report.

Usage::

    python benchmarks/bench_method_grid.py --work runs/grid [--tasks rotten_tomatoes trec6]
        [--runs prompt-random prompt-vocab prompt-text prefix mam houlsby lora full]
        [--max-examples 2000] [--epochs 2] [--seeds 0 1 2] [--threads 2]

Every run uses the same model, data subset, epochs, batch size and maximum length, and each
method's default learning rate (``adapterkit methods``). A run is one fresh ``adapterkit train``
process, so its time and memory are its own; runs are sequential, so they do not share the cores.
A seed sets the data split, the training subset and the initialisation together. A run whose
``results.json`` already exists in ``WORK/<task>-<run>[-seed<N>]`` (no suffix for seed 0) is kept,
so an interrupted grid continues where it stopped. At the end ``adapterkit report`` prints the
table of every run and draws ``WORK/report.png``; with several seeds, the mean and standard
deviation of each run's test accuracy follow.

A run is ``NAME[:option=value[:option=value...]]``: the method is NAME up to its first ``-``, the
options are passed as ``--option`` (values read as JSON). The defaults compare prompt
initialisations (``prompt-text:init=text`` starts from the class-label words, ``prompt-vocab``
from random vocabulary tokens, ``prompt-random`` from N(0, 1)) and a MAM at Houlsby's trained
budget (``mam-small``: prefix length 10 through a 32-wide MLP, bottleneck 16) besides the
default MAM (prefix 30 through a 512-wide MLP, bottleneck 256 on minilm).
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

DEFAULT_RUNS = (
    "prompt-random:init=random",
    "prompt-vocab:init=vocab",
    "prompt-text:init=text",
    "deep_prompt",
    "prefix",
    "mam",
    "mam-small:prefix_length=10:reparam_hidden=32:bottleneck_size=16",
    "houlsby",
    "lora",
    "full",
)


def parse_run(spec: str) -> tuple[str, str, list[str]]:
    """``(name, method, options)`` of a run spec ``NAME[:option=value...]``."""
    name, *options = spec.split(":")
    bad = [option for option in options if "=" not in option]
    if not name or bad:
        raise SystemExit(f"bad run {spec!r}: expected NAME[:option=value...], e.g. prompt-text:init=text")
    return name, name.split("-")[0], options


def run_command(name: str, method: str, options: list[str], task: str, seed: int, output: Path, args) -> list[str]:
    """The ``adapterkit train`` command line of one grid cell."""
    command = [sys.executable, "-m", "adapterkit", "train", "--model", args.model, "--task", task]
    command += ["--method", method, "--name", name]
    for option in options:
        command += ["--option", option]
    command += ["--epochs", str(args.epochs), "--max-examples", str(args.max_examples), "--max-length", str(args.max_length)]
    command += ["--batch-size", str(args.batch_size), "--seed", str(seed), "--quiet", "--output-dir", str(output)]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/grid"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--tasks", nargs="+", default=["rotten_tomatoes", "trec6"])
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS))
    parser.add_argument("--max-examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    finished: dict[tuple[str, str], list[Path]] = {}
    for seed in args.seeds:
        for task in args.tasks:
            for name, method, options in map(parse_run, args.runs):
                output = args.work / (f"{task}-{name}" + (f"-seed{seed}" if seed else ""))
                if not (output / "results.json").is_file():
                    print(f"{task} {name} seed {seed}: training", file=sys.stderr, flush=True)
                    started = time.perf_counter()
                    subprocess.run(run_command(name, method, options, task, seed, output, args), env=env, check=True)
                    print(f"{task} {name} seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
                finished.setdefault((task, name), []).append(output)
    outputs = [str(path) for paths in finished.values() for path in paths]
    subprocess.run([sys.executable, "-m", "adapterkit", "report", *outputs, "--plot", str(args.work / "report.png")], check=True)
    if len(args.seeds) > 1:
        print(f"\ntest accuracy over seeds {args.seeds}: mean (std)")
        for (task, name), paths in finished.items():
            scores = [100 * json.loads((path / "results.json").read_text())["test_metrics"]["accuracy"] for path in paths]
            print(f"{task:20s} {name:14s} {statistics.mean(scores):6.2f} ({statistics.stdev(scores):.2f})")


if __name__ == "__main__":
    main()
