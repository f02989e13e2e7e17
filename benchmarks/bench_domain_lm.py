"""Domain adapters for language modelling: held-out perplexity, each domain and across domains.

    python benchmarks/bench_domain_lm.py --out benchmarks/results/languages   # the README's table

Base model ``smollm2-135m``; domains: the bundled English corpora as language-modelling tasks
(``parlspeech_en_lm``, ``news_articles_lm``, ``health_tweets_lm``, ``rotten_tomatoes_lm``: the
texts and seeded splits of the classification tasks, loss on every token). Rows:

* ``base``: the frozen model;
* ``lora <domain>``: one LoRA per domain, all held by one model, each evaluated on every domain's
  test texts (the cross table: the diagonal is the adapter's own domain);
* ``full <domain>``: full fine-tuning on one domain (a fresh model each), evaluated on every domain;
* ``base, after adapters``: the model holding the trained adapters, run without them (unchanged base).

Perplexity = exp(token-weighted mean NLL) over the first ``--test-texts`` test texts of each
domain, cut to ``--max-length`` tokens (``inference/perplexity.py``). Each domain trains on its
first ``--train-texts`` training texts, one epoch, at the method's default learning rate.
Results: ``OUT/domain_lm.json`` (after every row) and the table ``OUT/domain_lm.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from adapterkit import AdapterModel
from adapterkit.data import load_task
from adapterkit.data.lm_tasks import DOMAINS
from adapterkit.inference.perplexity import perplexity
from adapterkit.training import Trainer, TrainingConfig, add_task_adapter


def domain_tasks(args):
    tasks = {}
    for domain in args.domains:
        task = load_task(f"{domain}_lm", seed=args.seed)  # split order is seeded: a prefix is a random sample
        tasks[domain] = dataclasses.replace(task, train=task.train[: args.train_texts],
                                            validation=task.validation[: args.eval_texts], test=task.test[: args.test_texts])
    return tasks


def cross(args, model, tasks, adapters) -> dict[str, float]:
    return {d: perplexity(model, t.test, t.kind, adapters, max_length=args.max_length, batch_size=args.batch_size)["perplexity"]
            for d, t in tasks.items()}


def config(args) -> TrainingConfig:
    return TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
                          patience=None, eval_batch_size=args.batch_size, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--domains", default=",".join(DOMAINS), type=lambda s: s.split(","))
    # the defaults are the settings of the README's table (sized for a shared 2-core CPU)
    counts = {"--train-texts": 32, "--eval-texts": 4, "--test-texts": 16, "--max-length": 48, "--batch-size": 8, "--epochs": 1}
    for flag, default in counts.items():
        parser.add_argument(flag, type=int, default=default, help=f"(default: {default})")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--no-full", action="store_true", help="leave out the full fine-tuning rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/languages")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "domain_lm.json"
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "threads")}
    saved = json.loads(path.read_text()) if path.is_file() else {}
    rows = saved.get("rows", {}) if saved.get("settings") == settings else {}

    def keep(name: str, record: dict) -> None:
        rows[name] = record
        print(f"{name}: {json.dumps({k: round(v, 2) for k, v in record['perplexity'].items()})}", flush=True)
        path.write_text(json.dumps({"settings": settings, "rows": rows, "threads": torch.get_num_threads()}, indent=2))

    tasks = domain_tasks(args)
    model = AdapterModel.from_pretrained(args.model)
    if "base" not in rows:
        started = time.perf_counter()
        keep("base", {"perplexity": cross(args, model, tasks, None), "trainable_params": 0, "stored_params": 0,
                      "seconds": time.perf_counter() - started})
    for domain, task in tasks.items():
        name = f"{args.method} {domain}"
        if name in rows and "base, after adapters" in rows:
            continue  # measured already (a rerun with the same settings)
        started = time.perf_counter()
        add_task_adapter(model, domain, args.method, task, seed=args.seed)
        result = Trainer(model, domain, task, config(args)).train()
        keep(name, {"perplexity": cross(args, model, tasks, domain), "trainable_params": result.trainable_params,
                    "stored_params": result.saved_params, "train_time_s": result.train_time_s,
                    "seconds": time.perf_counter() - started})
    if "base, after adapters" not in rows:
        keep("base, after adapters", {"perplexity": cross(args, model, tasks, None), "trainable_params": 0, "stored_params": 0})
    del model
    for domain, task in tasks.items() if not args.no_full else ():
        name = f"full {domain}"
        if name in rows:
            continue
        started = time.perf_counter()
        full = AdapterModel.from_pretrained(args.model)
        add_task_adapter(full, "full", "full", task, seed=args.seed)
        result = Trainer(full, "full", task, config(args)).train()
        keep(name, {"perplexity": cross(args, full, tasks, "full"), "trainable_params": result.trainable_params,
                    "stored_params": result.saved_params, "train_time_s": result.train_time_s,
                    "seconds": time.perf_counter() - started})
        del full
    lines = ["| model \\ test domain | " + " | ".join(args.domains) + " | trainable params | stored params |",
             "|---|" + "---|" * (len(args.domains) + 2)]
    for name, record in rows.items():
        cells = " | ".join(f"{record['perplexity'][d]:.1f}" for d in args.domains)
        lines.append(f"| {name} | {cells} | {record['trainable_params']:,} | {record['stored_params']:,} |")
    (out / "domain_lm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
