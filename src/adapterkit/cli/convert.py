"""``adapterkit convert``: an adapter folder from one format to another (adapterkit, peft, AdapterHub)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..formats.detect import FORMATS
from .paths import writable_dir

#: Not an adapter format: the adapter merged into its base, a plain transformers model folder (inference/merged.py).
MERGED = "merged"

DESCRIPTION = """Convert an adapter folder saved by adapterkit, peft or AdapterHub (recognised by its
JSON) into another format. The adapter is loaded into its base model (the one the folder records, or
--model) and saved again, so what either side cannot represent exactly is refused with the reason,
never approximated. AdapterHub's pickled .bin weights are read with torch.load(weights_only=True);
everything written is safetensors (load AdapterHub output with use_safetensors=True). See
docs/formats.md for what converts. --to merged merges a LoRA or IA3 adapter into its base model and
writes a plain transformers folder with the tokenizer (AutoModelForCausalLM.from_pretrained(TARGET)
loads it without adapterkit); methods that cannot merge, and adapters with a classification or
other head of their own, are refused."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert an adapter between adapterkit, peft and AdapterHub, or merge it into its model",
                                   description=DESCRIPTION)
    parser.add_argument("source", type=Path, help="the adapter folder to convert")
    parser.add_argument("target", type=Path, help="the folder to write (replaced atomically)")
    parser.add_argument("--to", required=True, choices=(*FORMATS, MERGED),
                        help="the format to write; merged: the adapter merged into its base, a plain transformers folder")
    parser.add_argument("--model", help="base model (default: the one recorded in the source)")
    parser.add_argument("--adapter", metavar="NAME", help="which adapter of a folder holding several (default: its main one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.to == MERGED:
        return run_merged(args)
    from ..inference.convert import convert

    writable_dir(args.target, "target")  # before loading the model
    done = convert(args.source, args.target, args.to, model=args.model, adapter=args.adapter)
    others = [name for name in done.adapters if name != done.adapter]
    print(f"{args.source} ({done.source_format}) -> {done.target} ({done.format}): adapter {done.adapter!r}"
          + (f"; the source also held {', '.join(others)}" if others else ""))
    return 0


def run_merged(args: argparse.Namespace) -> int:
    from ..inference.merged import export_merged

    done = export_merged(args.source, args.target, model=args.model, adapter=args.adapter)
    print(f"{args.source} ({done.source_format}) -> {done.target} (merged): {done.method} adapter {done.adapter!r} merged "
          "into its base model, saved with its tokenizer; load it with transformers' from_pretrained")
    return 0
