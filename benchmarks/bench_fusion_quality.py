"""Quality of AdapterFusion on a small target task, and of the fusion pruned to a few adapters.

Usage::

    python benchmarks/bench_fusion_quality.py [--model minilm] [--target convention_speeches]
        [--sources rotten_tomatoes,trec6,...] [--seeds 0 1 2] [--work runs/bench-fusion-quality]

Stage one (ST-A): one Pfeiffer adapter per source task, each trained alone (``--source-examples``
per split, ``--source-epochs``); they are cached in ``WORK/sources`` and reused by later runs.
Then, for every split seed of the target task (a few hundred examples at most, e.g. the 189
convention speeches: 151 train / 19 validation / 19 test), on the same base model:

* ``head only``: a linear head on the frozen model (probing);
* ``adapter``: a Pfeiffer adapter trained on the target alone;
* ``full FT``: every weight of the model fine-tuned on the target;
* ``fusion``: AdapterFusion (stage two) over the source adapters plus the target's own adapter
  (Pfeiffer et al. 2021's Fusion(ST-A) setting), training only the fusion and its head;
* ``fusion pruned``: the fusion keeping the ``--keep`` adapters that received the most fusion
  attention on the validation split (AdapterDrop's pruning), evaluated without retraining;
* ``pruned, retrained``: that pruned fusion trained further on the target (stage two again, from
  its weights, over the kept adapters only).

``--reuse`` takes every run already finished in ``WORK`` (its ``results.json`` and best adapter)
instead of training it again, so a later invocation only adds what is missing.

Every method uses the same trainer, splits, maximum length and early stopping on validation
accuracy. Test accuracy and macro-F1 are printed per seed and as the mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from adapterkit import AdapterModel
from adapterkit.data import load_task
from adapterkit.inference.fusion import fusion_attention, prune_fusion
from adapterkit.methods.fusion import FusionConfig
from adapterkit.training import Trainer, TrainingConfig, add_task_adapter, evaluate
from adapterkit.data.batching import Collator, encode_examples, make_loader

# seven source tasks: with the target's own adapter the fusion has eight, as in AdapterDrop's pruning
SOURCES = "rotten_tomatoes,trec6,vader_tweets_binary,vader_nyt_binary,health_tweets,news_articles,parlspeech_en"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def reused(model, name, output, args) -> dict | None:
    """With ``--reuse``: the test metrics of an earlier run in ``output``, its adapter loaded."""
    results, best = Path(output) / "results.json", Path(output) / "best"
    if not (args.reuse and results.is_file() and (best / "adapter_config.json").is_file()):
        return None
    if model is not None:
        if name in model.adapters:
            model.delete_adapter(name)
        model.load_adapter(best, name=name, activate=False)
    metrics = json.loads(results.read_text())["test_metrics"]
    log(f"  {name}: test {metrics} (reused {output})")
    return metrics


def train(model, name, task, args, epochs, output, learning_rate=None):
    earlier = reused(model, name, output, args)
    if earlier is not None:
        return earlier
    config = TrainingConfig(
        epochs=epochs, batch_size=args.batch_size, max_length=args.max_length, seed=args.train_seed,
        patience=args.patience, learning_rate=learning_rate, output_dir=str(output), progress=False,
    )
    started = time.perf_counter()
    result = Trainer(model, name, task, config).train()
    log(f"  {name}: test {result.test_metrics} ({time.perf_counter() - started:.0f} s)")
    return result.test_metrics


def source_adapters(model: AdapterModel, args) -> list[str]:
    """Stage one, ST-A: each source adapter trained alone (or loaded from an earlier run)."""
    names = []
    for task_name in args.sources.split(","):
        folder = Path(args.work) / "sources" / task_name
        if (folder / "best" / "adapter_config.json").is_file():
            model.load_adapter(folder / "best", activate=False)
            log(f"  {task_name}: loaded from {folder / 'best'}")
        else:
            task = load_task(task_name, seed=0, max_examples=args.source_examples)
            add_task_adapter(model, task_name, "pfeiffer", task, seed=args.train_seed)
            train(model, task_name, task, args, args.source_epochs, folder)
        names.append(task_name)
    return names


def run_seed(model: AdapterModel, sources: list[str], seed: int, args) -> dict:
    work = Path(args.work) / f"seed{seed}"
    target = load_task(args.target, seed=seed, max_examples=args.target_examples)
    log(f"seed {seed}: {target.describe()}")
    scores = {}

    add_task_adapter(model, "probe", "probe", target, seed=args.train_seed)
    scores["head only"] = train(model, "probe", target, args, args.target_epochs, work / "probe")
    model.delete_adapter("probe")

    add_task_adapter(model, "target", "pfeiffer", target, seed=args.train_seed)
    scores["adapter"] = train(model, "target", target, args, args.target_epochs, work / "adapter")

    fused = (*sources, "target")
    fusion = FusionConfig(adapters=fused)
    add_task_adapter(model, "fusion", fusion, target, seed=args.train_seed)
    scores["fusion"] = train(model, "fusion", target, args, args.target_epochs, work / "fusion", args.fusion_lr)
    validation = encode_examples(model.tokenizer, target.validation, args.max_length)
    loader = make_loader(validation, Collator(model.tokenizer, target.kind), 64)
    attention = fusion_attention(model, "fusion", loader)
    kept, _ = prune_fusion(model, "fusion", loader, keep=args.keep)
    scores["fusion pruned"] = evaluate(model, target.test, "fusion", max_length=args.max_length)
    log(f"  fusion pruned to {kept}: test {scores['fusion pruned']}")
    # the pruned fusion trained further (from its weights) on the kept adapters only
    epochs = args.retrain_epochs or args.target_epochs
    scores["pruned, retrained"] = train(model, "fusion", target, args, epochs, work / "fusion-pruned", args.fusion_lr)
    model.delete_adapter("fusion")
    model.delete_adapter("target")

    scores["full FT"] = reused(None, "full", work / "full", args)
    if scores["full FT"] is None:
        full = AdapterModel.from_pretrained(args.model)  # full fine-tuning changes the base: its own copy
        add_task_adapter(full, "full", "full", target, seed=args.train_seed)
        scores["full FT"] = train(full, "full", target, args, args.target_epochs, work / "full")
        del full
    return {"scores": scores, "kept": list(kept), "attention": attention.mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--target", default="convention_speeches")
    parser.add_argument("--target-examples", type=int, default=None, help="cap per split of the target")
    parser.add_argument("--sources", default=SOURCES)
    parser.add_argument("--source-examples", type=int, default=1500)
    parser.add_argument("--source-epochs", type=int, default=2)
    parser.add_argument("--target-epochs", type=int, default=10)
    parser.add_argument("--fusion-lr", type=float, default=None, help="default: the fusion method's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--retrain-epochs", type=int, default=None, help="for the pruned fusion (default: --target-epochs)")
    parser.add_argument("--reuse", action="store_true", help="take every run already finished in WORK instead of training it again")
    parser.add_argument("--work", default="runs/bench-fusion-quality")
    args = parser.parse_args()

    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model = AdapterModel.from_pretrained(args.model)
    log("stage one (ST-A): source adapters")
    sources = source_adapters(model, args)
    runs = {seed: run_seed(model, sources, seed, args) for seed in args.seeds}

    methods = ["head only", "adapter", "full FT", "fusion", "fusion pruned", "pruned, retrained"]
    print(f"\n{args.target} test (accuracy / macro-F1), {args.model}; fusion over {len(sources) + 1} adapters "
          f"({', '.join(sources)}, target), pruned to {args.keep}")
    header = f"{'method':<18}" + "".join(f"{'seed ' + str(s):>16}" for s in args.seeds) + f"{'mean acc':>10}{'mean F1':>9}"
    print(header)
    for method in methods:
        cells = [runs[s]["scores"][method] for s in args.seeds]
        line = "".join(f"{c['accuracy']:>9.3f} / {c['macro_f1']:.2f}" for c in cells)
        mean_acc = statistics.mean(c["accuracy"] for c in cells)
        mean_f1 = statistics.mean(c["macro_f1"] for c in cells)
        print(f"{method:<18}{line}{mean_acc:>10.3f}{mean_f1:>9.3f}")
    for seed in args.seeds:
        attention = ", ".join(f"{k} {v:.2f}" for k, v in sorted(runs[seed]["attention"].items(), key=lambda kv: -kv[1]))
        print(f"seed {seed}: kept {runs[seed]['kept']}; mean attention {attention}")
    print("json:", json.dumps({"bench": "fusion_quality", "args": vars(args), "runs": runs}))


if __name__ == "__main__":
    main()
