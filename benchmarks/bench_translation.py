"""Translation adapters on a frozen decoder (Bapna & Firat 2019) with Django's catalogues.

    python benchmarks/bench_translation.py --out benchmarks/results/languages   # the README's table

Base model ``smollm2-135m``; tasks ``django_<ll>`` (English UI strings -> ``ll``), the same
English test sources for every language. Rows, BLEU and chrF (sacrebleu) per language:

(a) ``base, N-shot``: the frozen model prompted with N solved training pairs before the source;
(b) ``lora`` / ``pfeiffer``: one adapter per language, evaluated together: one generation pass per
    batch whose rows are routed to their language's adapter (``Routed``);
(c) ``full``: full fine-tuning, one model per language;
(d) ``shared lora``: one LoRA for all languages, trained on the union (the prompt names the target).

A reference row ``copy`` scores the English source itself as the translation (Django strings
are full of placeholders, names and words the target languages share). Every row trains on the same ``--train-pairs`` sources per language, one epoch, batch
``--batch-size``, each method at its default learning rate, and decodes greedily. Trainable and
stored parameters are per language (the shared row: its one adapter). Results go to
``OUT/translation.json`` after every row (a rerun skips rows already there) and the table to
``OUT/translation.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

from adapterkit import AdapterModel
from adapterkit.data import load_task
from adapterkit.data.task import TRANSLATION, Example, TaskData
from adapterkit.inference.translation import translate, translation_scores
from adapterkit.training import Trainer, TrainingConfig, add_task_adapter


def by_hash(sources, seed: int) -> list[str]:
    return sorted(sources, key=lambda s: hashlib.sha256(f"{seed}\x02{s}".encode()).digest())


def language_tasks(args) -> dict[str, TaskData]:
    """Per language: ``train_pairs`` train, ``eval_pairs`` validation, ``test_strings`` test
    examples, the same English sources for every language (those all of them translate)."""
    full = {code: load_task(f"django_{code}", seed=args.seed) for code in args.languages}

    def common(split: str, count: int) -> list[str]:
        shared = set.intersection(*({e.texts[0] for e in getattr(t, split)} for t in full.values()))
        return by_hash(shared, args.seed)[:count]

    chosen = {"train": common("train", args.train_pairs), "validation": common("validation", args.eval_pairs),
              "test": common("test", args.test_strings)}
    tasks = {}
    for code, task in full.items():
        splits = {}
        for split, sources in chosen.items():
            pairs = {e.texts[0]: e for e in getattr(task, split)}
            splits[split] = [pairs[s] for s in sources]
        tasks[code] = dataclasses.replace(task, **splits)
    return tasks


def union(tasks: dict[str, TaskData]) -> TaskData:
    """All languages' examples in one task, labelled with their target language."""
    names = tuple(t.label_names[0] for t in tasks.values())
    splits = {split: [Example(e.texts, k) for k, t in enumerate(tasks.values()) for e in getattr(t, split)]
              for split in ("train", "validation", "test")}
    return TaskData("django_shared", TRANSLATION, ("source", "target"), names, **splits)


def config(args, seed: int) -> TrainingConfig:
    return TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length, seed=seed,
                          patience=None, eval_batch_size=args.batch_size, progress=False)


def score_rows(tasks, hypotheses: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    return {code: translation_scores(hypotheses[code], [e.texts[1] for e in tasks[code].test]) for code in hypotheses}


def decode(args, model, tasks, adapters_of, few_shot=None) -> dict[str, list[str]]:
    """Translations of every language's test sources; ``adapters_of(code)`` names each row's
    adapter: all languages go through one routed pass per batch (unless few-shot prompts differ)."""
    options = dict(max_length=args.max_length, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                   batch_size=args.decode_batch)
    if few_shot is not None:  # a different prompt prefix per language: one call per language
        return {code: translate(model, [e.texts[0] for e in t.test], t.label_names[0], adapters_of(code),
                                few_shot=few_shot[code], **options) for code, t in tasks.items()}
    rows = [(code, e) for code, t in tasks.items() for e in t.test]
    output = translate(model, [e.texts[0] for _, e in rows], [tasks[c].label_names[0] for c, _ in rows],
                       [adapters_of(c) for c, _ in rows], **options)
    hypotheses: dict[str, list[str]] = {code: [] for code in tasks}
    for (code, _), text in zip(rows, output):
        hypotheses[code].append(text)
    return hypotheses


def run_row(args, row: str, tasks: dict[str, TaskData]) -> dict:
    started = time.perf_counter()
    record: dict = {"row": row}
    if row == "copy":  # no model: the English source as the translation (what copying scores)
        hypotheses = {code: [e.texts[0] for e in t.test] for code, t in tasks.items()}
        record.update(trainable_params=0, stored_params=0, row="copy the English source (no model)")
    elif row == "base":
        model = AdapterModel.from_pretrained(args.model)
        shots = {code: [t.train[k].texts for k in range(args.shots)] for code, t in tasks.items()}
        hypotheses = decode(args, model, tasks, lambda code: None, few_shot=shots)
        record.update(trainable_params=0, stored_params=0, row=f"base, {args.shots}-shot")
    elif row in ("lora", "pfeiffer"):
        model = AdapterModel.from_pretrained(args.model)
        for code, task in tasks.items():
            add_task_adapter(model, f"{row}_{code}", row, task, seed=args.seed)
            result = Trainer(model, f"{row}_{code}", task, config(args, args.seed)).train()
            record.setdefault("train_time_s", {})[code] = result.train_time_s
        record.update(trainable_params=result.trainable_params, stored_params=result.saved_params,
                      row=f"{row}, per language (routed)")
        hypotheses = decode(args, model, tasks, lambda code: f"{row}_{code}")
    elif row == "shared":
        model = AdapterModel.from_pretrained(args.model)
        task = union(tasks)
        add_task_adapter(model, "shared", "lora", task, seed=args.seed)
        result = Trainer(model, "shared", task, config(args, args.seed)).train()
        record.update(trainable_params=result.trainable_params, stored_params=result.saved_params,
                      train_time_s=result.train_time_s, row="lora, one for all languages")
        hypotheses = decode(args, model, tasks, lambda code: "shared")
    elif row == "full":
        hypotheses = {}
        for code, task in tasks.items():
            model = AdapterModel.from_pretrained(args.model)
            add_task_adapter(model, "full", "full", task, seed=args.seed)
            result = Trainer(model, "full", task, config(args, args.seed)).train()
            record.setdefault("train_time_s", {})[code] = result.train_time_s
            hypotheses.update(decode(args, model, {code: task}, lambda c: "full"))
            del model
        record.update(trainable_params=result.trainable_params, stored_params=result.saved_params,
                      row="full fine-tuning, per language")
    else:
        raise ValueError(f"unknown row {row!r}")
    record["scores"] = score_rows(tasks, hypotheses)
    record["examples"] = {code: list(zip([e.texts[0] for e in tasks[code].test][:3], hypotheses[code][:3])) for code in hypotheses}
    record["seconds"] = time.perf_counter() - started
    return record


def table(results: dict, args) -> str:
    codes = args.languages
    head = "| row | " + " | ".join(f"{c} BLEU | {c} chrF" for c in codes) + " | mean BLEU | mean chrF | trainable params | stored params |"
    lines = [head, "|" + "---|" * (3 + 2 * len(codes) + 2)]
    for record in results.values():
        s = record["scores"]
        cells = " | ".join(f"{s[c]['bleu']:.1f} | {s[c]['chrf']:.1f}" for c in codes)
        mean_b = sum(s[c]["bleu"] for c in codes) / len(codes)
        mean_c = sum(s[c]["chrf"] for c in codes) / len(codes)
        lines.append(f"| {record['row']} | {cells} | {mean_b:.1f} | {mean_c:.1f} | {record['trainable_params']:,} | {record['stored_params']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--languages", default="de,es,fr,nl", type=lambda s: s.split(","))
    parser.add_argument("--rows", default="copy,base,lora,pfeiffer,shared,full", type=lambda s: s.split(","))
    # the defaults are the settings of the README's table (sized for a shared 2-core CPU)
    counts = {"--train-pairs": 48, "--eval-pairs": 4, "--test-strings": 24, "--epochs": 1, "--batch-size": 8,
              "--max-length": 40, "--max-new-tokens": 20, "--num-beams": 1, "--decode-batch": 64, "--shots": 2, "--seed": 0}
    for flag, default in counts.items():
        parser.add_argument(flag, type=int, default=default, help=f"(default: {default})")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/languages")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "translation.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    results = saved.get("rows", {})
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "rows", "threads")}
    if saved and saved.get("settings") != settings:
        results = {}  # other settings: start again
    tasks = language_tasks(args)
    for row in args.rows:
        if row in results:
            continue
        results[row] = run_row(args, row, tasks)
        print(f"{results[row]['row']}: {json.dumps(results[row]['scores'])} in {results[row]['seconds']:.0f} s", flush=True)
        path.write_text(json.dumps({"settings": settings, "rows": results, "threads": torch.get_num_threads()}, indent=2, ensure_ascii=False))
    text = table({row: results[row] for row in args.rows if row in results}, args)
    (out / "translation.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
