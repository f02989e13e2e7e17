"""Worker of ``bench_peers.py``: one library's training step, memory and inference latency for one method.

    <env>/bin/python benchmarks/peer_speed.py --library peft --method lora --model-path DIR
        [--batch 32] [--seq 64] [--steps 5] [--infer-repeats 10] [--threads 2]

Runs in whichever environment has the library (adapterkit's ``.venv``, ``.peer-envs/peft``,
``.peer-envs/adapters``) and prints one JSON line. The model comes from ``peer_models.build``;
step, memory and latency are measured by ``measure.py``, the protocol ``bench_methods.py`` uses:
AdamW on one fixed batch (``peer_models.fixed_batch``: the same token ids in every environment),
cross-entropy loss; then, in eval mode without gradients, the adapted model's forward alternated
with transformers' plain model (same folder, same head, no library) loaded in the same process.
"""

from __future__ import annotations

import argparse
import json

import torch

from measure import alternating_medians, measure_training
from peer_models import build, build_plain, fixed_batch, versions


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    built = build(args.library, args.method, args.model_path, num_labels=2)
    batch, labels = fixed_batch(args.model_path, args.batch, args.seq, 2)
    optimizer = torch.optim.AdamW(built.trainable, lr=1e-5)

    def loss():
        return torch.nn.functional.cross_entropy(built.logits(batch), labels)

    result = {"library": args.library, "method": args.method, "versions": versions(args.library)}
    result |= measure_training(built.model, loss, optimizer, args.steps)
    result["trainable"] = sum(p.numel() for p in built.trainable)
    if args.method == "full":
        return result  # nothing added to the forward pass

    plain = build_plain(args.model_path, 2)
    built.model.eval()
    plain.model.eval()

    def forward(fn):
        def call():
            with torch.no_grad():
                fn(batch)

        return call

    forward(built.logits)()  # warm-up
    times = alternating_medians({"plain": forward(plain.logits), "adapted": forward(built.logits)}, args.infer_repeats)
    result["infer_ms"], result["plain_ms"] = times["adapted"], times["plain"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--infer-repeats", type=int, default=10, help="forward passes of each model, alternated")
    parser.add_argument("--threads", type=int, default=2)
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
