"""Training-step time, training peak memory and inference latency of each method on ``minilm``
(or on an image model: ``--model efficientnet-lite0 --image-size 64``, random images).

Usage: ``python benchmarks/bench_methods.py [--model minilm] [--batch 32] [--seq 64] [--steps 10]
[--methods full houlsby houlsby:train_layer_norms=false ...]``

A method is ``NAME[:option=value...]`` (values read as JSON, as ``adapterkit train --option``
reads them), so variants of one method can be compared in the same run; ``full`` must be among
them, it is the reference of the ratios.

Every method runs in its own fresh worker process, so memory freed by one method cannot hide
another's peak; the workers run one after the other in the same invocation (rounds alternate
the order) and ratios are taken against the full fine-tuning and plain-model figures of *this*
run, the only comparison that means anything on a noisy shared machine.

* step time, peak memory (RSS growth), heap peak (``mallinfo2``) and saved activations: measured
  by ``measure.py`` (shared with ``bench_peers.py``; its docstring says how).
* inference: median forward latency (eval mode, no grad) of the adapted model against the plain
  model, alternated in the same worker; LoRA is also measured merged into the base weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from measure import alternating_medians, measure_training

METHODS = ["full", "houlsby", "pfeiffer", "parallel", "scaled_parallel", "lora", "bitfit", "probe", "partial"]


def worker(spec: str, args: argparse.Namespace) -> dict:
    import torch

    from adapterkit import AdapterModel, HeadConfig
    from adapterkit.cli.common import options_dict, parse_option

    method, *options = spec.split(":")

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = {"image_size": args.image_size} if args.image_size else {}
    model = AdapterModel.from_pretrained(args.model, **size).to(device)
    model.add_adapter("task", method, HeadConfig(num_labels=2), **options_dict([parse_option(o) for o in options]))
    model.train_adapter("task")
    if model.processor is not None:  # an image model: random images of its input size
        side = model.processor.size
        batch = {"pixel_values": torch.randn(args.batch, 3, side, side, device=device)}
    else:
        vocab = model.parts.embeddings.num_embeddings
        batch = {
            "input_ids": torch.randint(1000, vocab, (args.batch, args.seq), device=device),
            "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long, device=device),
        }
    labels = torch.randint(0, 2, (args.batch,), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    measured = measure_training(model, lambda: model(**batch, labels=labels).loss, optimizer, args.steps, device)
    trained, total = model.count_parameters("task")

    model.eval()
    result = {"method": spec, **measured, "trainable": trained, "total": total}
    if method in ("full", "partial", "probe"):
        return result  # no adapter in the forward path: inference equals the plain model

    def latency(adapters):
        def run():
            with torch.no_grad():
                model(**batch, adapters=adapters)

        return run

    times = alternating_medians({"plain": latency(None), "adapted": latency("task")}, args.steps)
    result["infer_ms"], result["plain_ms"] = times["adapted"], times["plain"]
    if method == "lora":  # merged but still loaded: the sites stay hooked and add nothing
        model.merge_adapter("task")
        times = alternating_medians({"plain": latency(None), "merged": latency("task")}, args.steps)
        result["merged_infer_ms"], result["merged_plain_ms"] = times["merged"], times["plain"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=0, help="image models: the input size (0: the model's default)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all methods (order alternates)")
    parser.add_argument("--methods", nargs="+", default=METHODS, metavar="METHOD[:OPTION=VALUE...]")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    methods = args.methods
    if "full" not in methods:
        raise SystemExit("--methods must include full: the ratios are taken against it")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for round_index in range(args.rounds):
        for method in methods if round_index % 2 == 0 else reversed(methods):
            cmd = [sys.executable, __file__, "--worker", method] + [
                f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("model", "batch", "seq", "steps", "threads", "image_size")
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[method].append(json.loads(out.strip().splitlines()[-1]))
            print(f"  round {round_index + 1}: {method} done", file=sys.stderr)

    def med(method: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[method])

    full_step, full_mem, full_saved = med("full", "step_ms"), med("full", "peak_mib"), runs["full"][0]["saved_mib"]
    full_heap = med("full", "heap_mib")
    shape = f"image={args.image_size or 'default'}" if args.image_size else f"seq={args.seq}"
    print(f"model={args.model} batch={args.batch} {shape} steps={args.steps} rounds={args.rounds} threads={args.threads}")
    print("| method | trainable | share | step ms | speed-up vs full | peak MiB | memory vs full | heap peak MiB (vs full) | saved activations MiB (vs full) | inference overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        r = runs[method][0]
        overhead = "-"
        if "infer_ms" in r:
            overhead = f"{(med(method, 'infer_ms') / med(method, 'plain_ms') - 1) * 100:+.1f}%"
            if "merged_infer_ms" in r:
                merged = med(method, "merged_infer_ms") / med(method, "merged_plain_ms") - 1
                overhead += f" (merged {merged * 100:+.1f}%)"
        print(
            f"| {method} | {r['trainable']:,} | {100 * r['trainable'] / r['total']:.2f}% | {med(method, 'step_ms'):.0f} | "
            f"{full_step / med(method, 'step_ms'):.2f}x | {med(method, 'peak_mib'):.0f} | "
            f"{med(method, 'peak_mib') / full_mem:.2f}x | "
            f"{med(method, 'heap_mib'):.0f} ({med(method, 'heap_mib') / full_heap:.2f}x) | {r['saved_mib']:.0f} ({r['saved_mib'] / full_saved:.2f}x) | {overhead} |"
        )


if __name__ == "__main__":
    main()
