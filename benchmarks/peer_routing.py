"""Worker of ``bench_peers.py``: one batch whose rows each run their own LoRA adapter, in adapterkit or peft.

    .venv/bin/python benchmarks/peer_routing.py --prepare DIR --model-path MODEL [--adapters 16]
    <env>/bin/python benchmarks/peer_routing.py --library adapterkit|peft --adapters-dir DIR
        --model-path MODEL --out FILE [--rows 64] [--seq 64] [--repeats 5] [--threads 2]

``--prepare`` (adapterkit's environment) makes the adapters once: ``--adapters`` LoRA adapters
(r 8, alpha 16, q and v) with seeded non-zero weights (their B matrices start at zero otherwise),
saved in peft's format, so both libraries load the very same weights (adapterkit converts them
exactly). A timing run loads them all, builds a batch of ``--rows`` rows (``fixed_batch``'s token
ids) whose row i runs adapter ``i mod N``, and times, alternated call by call in inference mode:

* ``routed``: the mixed batch. adapterkit: ``adapters=Routed(rows)`` (one gathered batched
  product per site); peft: ``forward(..., adapter_names=rows)`` (a loop over the adapter groups
  in every LoRA layer).
* ``one``: the same batch through one adapter (adapterkit ``adapters="user0"``; peft's active
  adapter ``user0``).
* ``plain``: no adapter (adapterkit ``adapters=None``; peft ``disable_adapter()``).

The routed and the plain pass's last hidden states are saved to ``--out`` (safetensors), so the
driver can check that both libraries computed the same thing and that the adapters changed it. One JSON line on stdout: the median milliseconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from measure import alternating_medians
from peer_models import fixed_batch


def prepare(args: argparse.Namespace) -> None:
    from adapterkit import AdapterModel

    model = AdapterModel.from_pretrained(args.model_path)
    generator = torch.Generator().manual_seed(0)
    for i in range(args.adapters):
        name = f"user{i}"
        model.add_adapter(name, "lora", None, r=8, alpha=16.0, targets=["q", "v"])
        with torch.no_grad():
            for p in model.adapters[name].parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
        model.save_adapter(name, Path(args.prepare) / name, format="peft")
    print(json.dumps({"prepared": args.adapters}))


def load(args: argparse.Namespace, names: list[str]):
    """(routed, one adapter, plain) callables of the batch in ``args.library``."""
    batch, _ = fixed_batch(args.model_path, args.rows, args.seq, 2)
    rows = [names[i % len(names)] for i in range(args.rows)]
    folder = Path(args.adapters_dir)
    if args.library == "adapterkit":
        from adapterkit import AdapterModel
        from adapterkit.composition import Routed

        model = AdapterModel.from_pretrained(args.model_path).eval()
        for name in names:
            model.load_adapter(folder / name, name=name, activate=False)  # no active setup: adapters=None is plain
        routed = Routed(rows)
        return (
            lambda: model(**batch, adapters=routed).last_hidden_state,
            lambda: model(**batch, adapters=names[0]).last_hidden_state,
            lambda: model(**batch, adapters=None).last_hidden_state,
        )
    from peft import PeftModel
    from transformers import AutoModel

    model = PeftModel.from_pretrained(AutoModel.from_pretrained(args.model_path), folder / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(folder / name, adapter_name=name)
    model.set_adapter(names[0])
    model.eval()

    def plain():
        with model.disable_adapter():
            return model(**batch).last_hidden_state

    return lambda: model(**batch, adapter_names=rows).last_hidden_state, lambda: model(**batch).last_hidden_state, plain


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    names = sorted((p.name for p in Path(args.adapters_dir).iterdir() if p.is_dir()), key=lambda n: int(n[4:]))
    routed, one, plain = load(args, names)
    with torch.inference_mode():
        save_file({"routed": routed().contiguous(), "plain": plain().contiguous()}, args.out)
        one()  # warm-up
        times = alternating_medians({"routed": routed, "one": one, "plain": plain}, args.repeats)
    return {"library": args.library, "adapters": len(names), "rows": args.rows, "seq": args.seq, **{f"{k}_ms": v for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", help="make the adapters into this folder (adapterkit's environment)")
    parser.add_argument("--adapters", type=int, default=16)
    parser.add_argument("--library", choices=("adapterkit", "peft"))
    parser.add_argument("--adapters-dir")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--out")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.prepare:
        prepare(args)
    else:
        print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
