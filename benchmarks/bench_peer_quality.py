"""Test accuracy of the same method trained with adapterkit, peft and AdapterHub on the same splits.

Usage::

    python benchmarks/bench_peer_quality.py --work runs/peer-quality [--tasks rotten_tomatoes snli]
        [--methods lora pfeiffer prefix] [--seeds 0 1 2] [--max-examples 2000] [--epochs 2]
        [--peer-root .peer-envs] [--report-only]

For each task and seed the driver writes the split adapterkit's ``load_task(task, seed,
max_examples)`` gives (texts and labels of train, validation and test) to
``WORK/splits/<task>-seed<N>.json``; then every run is one ``peer_train.py`` process in its
library's environment, one at a time (the runs share nothing but the files): the same examples,
the same head, the same loop and hyper-parameters (batch 32, max length 64, the epochs, the
method's adapterkit default learning rate (``adapterkit methods``) for every library, AdamW, warm-up and linear decay,
best validation epoch tested). A seed sets the split, the 2,000-example subset, the
initialisation and the shuffling. Runs are ordered method by method (all seeds and libraries of
the first method first), so a cut run loses whole methods, not seeds. A run whose result file
exists in ``WORK/results/`` is kept, so an interrupted driver continues where it stopped.

The table gives each library's mean (standard deviation) test accuracy over the seeds, and for
each peer the difference to adapterkit with its standard error (seeds paired: the same split and
examples, another library's initialisation); "within noise" means the difference is smaller
than two standard errors.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from bench_peers import REPO, peer_pythons, run_worker

#: method -> libraries; adapterkit's form for a peer (peer_models.ADAPTERKIT_FORMS) where it differs.
METHODS = {
    "lora": {"adapterkit": "lora", "peft": "lora", "adapterhub": "lora"},
    "pfeiffer": {"adapterkit": "pfeiffer", "adapterhub": "pfeiffer"},
    "prefix": {"adapterkit": "prefix", "adapterhub": "prefix", "adapterkit-peft-form": "prefix-peft", "peft": "prefix"},
}


def export_split(task: str, seed: int, max_examples: int, path: Path) -> None:
    from adapterkit.data import load_task

    data = load_task(task, seed=seed, max_examples=max_examples)
    rows = {name: [[*e.texts, e.label] for e in getattr(data, name)] for name in ("train", "validation", "test")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": task, "seed": seed, "text_columns": data.text_columns, "label_names": data.label_names, **rows}))


def library_of(runner: str) -> str:
    return runner.removesuffix("-peft-form")


def report(results: dict[tuple[str, str, str], list[dict]]) -> None:
    print("| task | method | library | test accuracy mean (std) | per seed | minus adapterkit (paired, SE) | within noise | train s per run |")
    print("|---|---|---|---|---|---|---|---|")
    for (task, method, runner), runs in results.items():
        accuracies = [100 * r["test"]["accuracy"] for r in runs]
        spread = f"{statistics.mean(accuracies):.2f} ({statistics.stdev(accuracies):.2f})" if len(runs) > 1 else f"{accuracies[0]:.2f}"
        reference_runner = "adapterkit-peft-form" if runner == "peft" and (task, method, "adapterkit-peft-form") in results else "adapterkit"
        difference = noise = "-"
        reference = {r["seed"]: r for r in results.get((task, method, reference_runner), [])}
        paired = [100 * (r["test"]["accuracy"] - reference[r["seed"]]["test"]["accuracy"]) for r in runs if r["seed"] in reference]
        if library_of(runner) != "adapterkit" and len(paired) > 1:
            error = statistics.stdev(paired) / math.sqrt(len(paired))
            difference = f"{statistics.mean(paired):+.2f} ({error:.2f}) vs {reference_runner}"
            noise = "yes" if abs(statistics.mean(paired)) < 2 * error else "no"
        print(f"| {task} | {method} | {runner} | {spread} | {' / '.join(f'{a:.2f}' for a in accuracies)} | {difference} | {noise} | "
              f"{statistics.mean(r['train_seconds'] for r in runs):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "peer-quality")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--tasks", nargs="+", default=["rotten_tomatoes", "snli"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peer-root", type=Path, default=REPO / ".peer-envs")
    parser.add_argument("--report-only", action="store_true", help="print the table of the finished runs")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from adapterkit import make_config
    from adapterkit.bundled_models import resolve_model_path

    model_path = str(resolve_model_path(args.model))
    pythons = {} if args.report_only else {"adapterkit": sys.executable, **peer_pythons(args.peer_root)}
    results: dict[tuple[str, str, str], list[dict]] = {}
    for method in args.methods:
        for task in args.tasks:
            for seed in args.seeds:
                split = args.work / "splits" / f"{task}-seed{seed}.json"
                if not split.is_file() and not args.report_only:
                    export_split(task, seed, args.max_examples, split)
                for runner, form in METHODS[method].items():
                    out = args.work / "results" / f"{task}-{method}-{runner}-seed{seed}.json"
                    if not out.is_file() and not args.report_only:
                        library = library_of(runner)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        started = time.perf_counter()
                        result = run_worker(pythons[library], "peer_train.py", library, [
                            f"--library={library}", f"--method={form}", f"--split={split}", f"--model-path={model_path}",
                            f"--lr={make_config(method).default_learning_rate}", f"--seed={seed}", f"--epochs={args.epochs}",
                            f"--threads={args.threads}", f"--out={out}"], args.threads)
                        print(f"{task} {method} {runner} seed {seed}: test accuracy {100 * result['test']['accuracy']:.2f} "
                              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
                    if out.is_file():
                        results.setdefault((task, method, runner), []).append(json.loads(out.read_text()))
    print(f"model={args.model} max_examples={args.max_examples} epochs={args.epochs} batch=32 max_length=64 seeds={args.seeds}")
    report(results)


if __name__ == "__main__":
    main()
