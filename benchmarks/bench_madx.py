"""MAD-X on minilm: language adapters per language, a task adapter above the English one, swapped.

    python benchmarks/bench_madx.py --work runs/madx    # the README's table (2-core CPU, < 30 min)

Pfeiffer et al. 2020 (MAD-X, arXiv 2005.00052) train a language adapter per language with the
masked-LM objective on a frozen multilingual encoder, a task adapter on English above the English
language adapter (``Stack(lang_en, task)``), and transfer zero-shot by swapping in the target
language's adapter (``Stack(lang_de, task)``). Here the frozen encoder is minilm, which is
English-only (its WordPiece vocabulary splits German, Spanish and Dutch into many short pieces),
so this measures what the recipe gives on such a base, not the paper's setting.

1. ``lang_<l>``: a Pfeiffer adapter with a masked-LM head (tied to the word embeddings) trained on
   ``mlm_parlspeech_<l>`` (the speeches of ``parlspeech_<l>_bloc``'s train split) for each of en,
   de, es, nl; ``head_<l>``: the masked-LM head alone on the frozen base (``probe``), trained the
   same way on the same texts: the "base + head" rows, which tell what the adapter adds to a head
   that learns the language's token statistics too.
2. ``task``: a Pfeiffer adapter with a 2-way head (left / right bloc of the speaker's party,
   ``data/party_blocs.py``) trained on ``parlspeech_en_bloc`` above the frozen ``lang_en``.
3. Cross-lingual table: accuracy on each language of the task adapter (a) alone, (b) above
   ``lang_en``, (c) above the target language's adapter; English on its test split, every other
   language on its validation + test splits (texts neither the task adapter nor that language's
   adapter trained on), with the majority-class share beside it.
4. Masked-LM table: masked-token accuracy and masked-LM-loss perplexity (``exp`` of the mean
   cross-entropy over the masked positions, BERT masking with seed 0, the same masks for every
   row) of each ``head_<l>`` and each language adapter on each language's test split.

Every run is kept in ``WORK/<name>/``; a rerun skips what is there. Results go to
``benchmarks/results/madx/madx.json`` and ``madx.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from adapterkit import AdapterModel
from adapterkit.composition import Stack
from adapterkit.data import load_task
from adapterkit.inference.masked_lm import evaluate_masked_lm
from adapterkit.inference.predict import evaluate
from adapterkit.training import Trainer, TrainingConfig, add_task_adapter

LANGUAGES = ("en", "de", "es", "nl")
RESULTS = Path(__file__).resolve().parent / "results" / "madx"


def config(args, output: Path, epochs: int) -> TrainingConfig:
    return TrainingConfig(
        epochs=epochs, batch_size=args.batch_size, max_length=args.max_length, seed=0, patience=None,
        output_dir=str(output), progress=False,
    )  # fmt: skip


def train(args, name: str, method: str, task_name: str, epochs: int, under: str | None = None) -> dict:
    """Train ``name`` on ``task_name`` (above the saved adapter ``under``, frozen) unless kept."""
    output = Path(args.work) / name
    if (output / "results.json").is_file():
        return json.loads((output / "results.json").read_text())
    task = load_task(task_name, seed=0)
    model = AdapterModel.from_pretrained(args.model)
    setup = None
    if under is not None:
        model.load_adapter(Path(args.work) / under / "best", activate=False)
        setup = Stack(under, name)
    add_task_adapter(model, name, method, task)
    started = time.perf_counter()
    result = Trainer(model, name, task, config(args, output, epochs), setup=setup).train()
    print(f"{name} on {task.describe()}: test {result.test_metrics} in {time.perf_counter() - started:.0f} s", flush=True)
    return result.to_dict()


def majority(examples) -> float:
    return Counter(e.label for e in examples).most_common(1)[0][1] / len(examples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/madx")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mlm-epochs", type=int, default=1)
    parser.add_argument("--task-epochs", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()

    runs = {f"lang_{l}": train(args, f"lang_{l}", "pfeiffer", f"mlm_parlspeech_{l}", args.mlm_epochs) for l in LANGUAGES}
    runs.update({f"head_{l}": train(args, f"head_{l}", "probe", f"mlm_parlspeech_{l}", args.mlm_epochs) for l in LANGUAGES})
    runs["task"] = train(args, "task", "pfeiffer", "parlspeech_en_bloc", args.task_epochs, under="lang_en")

    model = AdapterModel.from_pretrained(args.model)
    for name in (*(f"lang_{l}" for l in LANGUAGES), *(f"head_{l}" for l in LANGUAGES), "task"):
        model.load_adapter(Path(args.work) / name / "best", activate=False)
    model.eval()

    transfer = {}
    for l in LANGUAGES:
        task = load_task(f"parlspeech_{l}_bloc", seed=0)
        examples = task.test if l == "en" else task.validation + task.test
        rows = {"task alone": "task", "+ lang_en": Stack("lang_en", "task"), f"+ lang_{l}": Stack(f"lang_{l}", "task")}
        transfer[l] = {
            "examples": len(examples),
            "majority": majority(examples),
            **{row: evaluate(model, examples, setup, max_length=args.max_length) for row, setup in rows.items()},
        }
        print(l, json.dumps(transfer[l]), flush=True)

    mlm = {}
    for l in LANGUAGES:
        texts = load_task(f"mlm_parlspeech_{l}", seed=0).test
        mlm[l] = {
            name: evaluate_masked_lm(model, texts, name, max_length=args.max_length, seed=0)
            for name in (*(f"head_{k}" for k in LANGUAGES), *(f"lang_{k}" for k in LANGUAGES))
        }
        print(l, json.dumps(mlm[l]), flush=True)

    record = {
        "command": "python benchmarks/bench_madx.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        ),
        "settings": vars(args),
        "training": {  # the masked-LM runs' own scores are in the masked_lm table (the same masks for every row)
            name: {k: run[k] for k in ("train_time_s", "trainable_params", "epochs_run", *(("test_metrics", "validation_metrics") if name == "task" else ()))}
            for name, run in runs.items()
        },
        "transfer": transfer,
        "masked_lm": mlm,
        "wall_time_s": time.perf_counter() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "madx.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(record)
    (RESULTS / "madx.md").write_text(table)
    print(table)


def markdown(record: dict) -> str:
    lines = [f"`{record['command']}`", "", "Party bloc (left / right) accuracy of the task adapter trained on English above lang_en:", ""]
    lines += ["| target | examples | majority | task alone | + lang_en | + target's lang |", "|---|---|---|---|---|---|"]
    for l, row in record["transfer"].items():
        lines.append(
            f"| {l} | {row['examples']} | {row['majority']:.3f} | {row['task alone']['accuracy']:.3f} | "
            f"{row['+ lang_en']['accuracy']:.3f} | {row[f'+ lang_{l}']['accuracy']:.3f} |"
        )
    names = list(next(iter(record["masked_lm"].values())))
    lines += ["", "Masked-LM on each language's test split: masked-token accuracy / MLM-loss perplexity "
              "(head_x: base + a masked-LM head trained on x; lang_x: x's language adapter with its head):", ""]
    lines += ["| text | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for l, row in record["masked_lm"].items():
        lines.append(f"| {l} | " + " | ".join(f"{row[n]['masked_accuracy']:.3f} / {row[n]['perplexity']:.0f}" for n in names) + " |")
    lines += ["", "Training (seconds on this machine, trainable parameters):", ""]
    for name, run in record["training"].items():
        scores = f", English test {json.dumps({k: round(v, 4) for k, v in run['test_metrics'].items()})}" if "test_metrics" in run else ""
        lines.append(f"- {name}: {run['train_time_s']:.0f} s, {run['trainable_params']:,} parameters, {run['epochs_run']} epoch(s){scores}")
    lines.append(f"\nwhole run: {record['wall_time_s']:.0f} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
