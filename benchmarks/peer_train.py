"""Worker of ``bench_peer_quality.py``: train one method with one library on an exported split, test it.

    <env>/bin/python benchmarks/peer_train.py --library peft --method lora --split FILE
        --model-path DIR --lr 5e-4 --seed 0 --out FILE [--epochs 2] [--batch-size 32] [--max-length 64]

Runs in the library's environment; the model is ``peer_models.build`` (the same head in every
library). The split file (written by the driver from ``adapterkit.data.load_task``) holds the
texts and labels of train, validation and test, so every library sees the same examples; each
tokenises them with the model folder's own tokenizer (pairs truncated longest-first).

The loop is adapterkit's trainer's recipe, written once here so the three libraries share it:
AdamW with weight decay 0.01 on matrices only, linear warm-up over 6% of the steps then linear
decay to 0, gradient norm clipped at 1.0, batches shuffled per epoch from ``(seed, epoch)`` and
padded to their longest example, the model in train mode (dropout on) while training; after
every epoch the validation accuracy, and the epoch with the best one is restored and tested.
One JSON line: accuracies, macro F1, epochs, time, versions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from peer_models import build, versions


def encode(tokenizer, rows: list[list], max_length: int) -> tuple[list[dict], torch.Tensor]:
    """Token ids (unpadded) of each row's one or two texts, and the labels (a row is ``[*texts, label]``)."""
    columns = [list(column) for column in zip(*(row[:-1] for row in rows))]
    encoded = tokenizer(*columns, truncation=True, max_length=max_length)
    features = [{key: encoded[key][i] for key in encoded} for i in range(len(rows))]
    return features, torch.tensor([row[-1] for row in rows])


def batches(tokenizer, features: list[dict], labels: torch.Tensor, size: int, order: list[int]):
    for start in range(0, len(order), size):
        index = order[start : start + size]
        yield dict(tokenizer.pad([features[i] for i in index], return_tensors="pt")), labels[index]


def evaluate(built, tokenizer, features, labels, num_labels: int) -> dict[str, float]:
    built.model.eval()
    predictions = []
    with torch.no_grad():
        for batch, _ in batches(tokenizer, features, labels, 64, list(range(len(features)))):
            predictions.append(built.logits(batch).argmax(-1))
    predicted = torch.cat(predictions)
    f1 = []
    for c in range(num_labels):
        tp = ((predicted == c) & (labels == c)).sum().item()
        denominator = (predicted == c).sum().item() + (labels == c).sum().item()
        f1.append(2 * tp / denominator if denominator else 0.0)
    return {"accuracy": (predicted == labels).float().mean().item(), "macro_f1": sum(f1) / num_labels}


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    split = json.loads(Path(args.split).read_text())
    num_labels = len(split["label_names"])
    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    data = {name: encode(tokenizer, split[name], args.max_length) for name in ("train", "validation", "test")}
    torch.manual_seed(args.seed)  # the method's and the head's initialisation
    built = build(args.library, args.method, args.model_path, num_labels)
    decay = [p for p in built.trainable if p.ndim >= 2]
    no_decay = [p for p in built.trainable if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    features, labels = data["train"]
    steps_per_epoch = -(-len(features) // args.batch_size)
    total = steps_per_epoch * args.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(0.06 * total), total)

    started = time.perf_counter()
    history, best, best_state = [], -1.0, None
    for epoch in range(args.epochs):
        built.model.train()
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch)).tolist()
        for batch, target in batches(tokenizer, features, labels, args.batch_size, order):
            loss = torch.nn.functional.cross_entropy(built.logits(batch), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(built.trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        validation = evaluate(built, tokenizer, *data["validation"], num_labels)
        history.append(validation)
        if validation["accuracy"] > best:
            best, best_epoch = validation["accuracy"], epoch + 1
            best_state = [p.detach().clone() for p in built.trainable]
    train_seconds = time.perf_counter() - started
    with torch.no_grad():
        for p, kept in zip(built.trainable, best_state):
            p.copy_(kept)
    test = evaluate(built, tokenizer, *data["test"], num_labels)
    return {"library": args.library, "method": args.method, "seed": args.seed, "lr": args.lr, "test": test,
            "validation": history, "best_epoch": best_epoch, "train_seconds": train_seconds,
            "trainable": sum(p.numel() for p in built.trainable), "versions": versions(args.library)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = train(args)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
