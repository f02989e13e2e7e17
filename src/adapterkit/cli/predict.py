"""``adapterkit predict``: one prediction per input text, from a file or standard input."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.tables import field_text, read_delimited, read_json_lines, require_columns
from ..data.task import require_text
from .generation import add_generation_arguments

_DELIMITERS = {".csv": ",", ".tsv": "\t"}
_JSON_LINES = (".jsonl", ".json")

DESCRIPTION = """Print one prediction per input: the label name for classification, a number for
regression. Input is --input FILE or standard input: plain text with one input per line (blank
lines are skipped; for pair tasks the two texts are separated by a tab), or a .csv/.tsv/.jsonl file
read with --text-column (default: the columns the adapter was trained on), where a row with an
empty text is an error. With --images, an image model's adapter predicts one label per image
file (printed as PATH<TAB>LABEL). Translation adapters: --adapter translates each line (--language names
the target of a shared adapter); --adapters A,B,... reads LANGUAGE<TAB>SOURCE lines and routes each to
the adapter translating into LANGUAGE, all in one pass per batch."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="predict labels with a saved adapter", description=DESCRIPTION)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--adapter", type=Path, help="a saved adapter folder")
    target.add_argument("--adapters", metavar="A,B,...", help="several adapters (names in --store, or folders) "
                        "predicted in one Parallel pass: a header line, then one tab-separated column per task")
    parser.add_argument("--store", type=Path, help="the adapter store that --adapters names refer to")
    parser.add_argument("--drop-first", type=int, default=0, metavar="N",
                        help="with --adapters: no adapters in the first N layers (AdapterDrop), which then run "
                        "once for all tasks instead of once per task")
    parser.add_argument("--model", help="base model (default: the one recorded in the adapter)")
    parser.add_argument("--input", type=Path, help="input file (default: standard input, plain text)")
    parser.add_argument("--images", type=Path, nargs="+", metavar="FILE", help="image files (for an image model's adapter)")
    parser.add_argument("--text-column", action="append", metavar="COLUMN", help="text column(s) of a CSV/TSV/JSONL input")
    parser.add_argument("--max-length", type=int, help="default: the length the adapter was trained with")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--language", help="translation adapters: the target language, e.g. German "
                        "(default: the adapter's only one)")
    add_generation_arguments(parser)
    parser.set_defaults(func=run)


def read_inputs(path: Path | None, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Texts from a table file (by column, stripped) or plain lines (tab-separated for pairs;
    blank lines skipped).

    Raises:
        ValueError: a row or line with an empty (or whitespace-only) text, naming the file and line.
    """
    if path is not None and path.suffix.lower() in (*_DELIMITERS, *_JSON_LINES):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        with path.open(encoding="utf-8-sig", newline="") as stream:
            if path.suffix.lower() in _JSON_LINES:
                rows = read_json_lines(stream, str(path))
            else:
                rows = read_delimited(stream, str(path), _DELIMITERS[path.suffix.lower()])[1]
        texts = []
        for row in rows:
            where = f"{path} line {row.line}"
            require_columns(row.fields, columns, where, "Name the text column(s) with --text-column.")
            texts.append(tuple(field_text(row.fields[c]) for c in columns))
            require_text(texts[-1], where, columns)
        return texts
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = sys.stdin.read().splitlines()
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = tuple(line.split("\t")) if len(columns) == 2 else (line,)
        where = f"{path or 'stdin'} line {number}"
        if len(parts) != len(columns):
            raise ValueError(f"{where}: a pair task needs two texts separated by a tab")
        require_text(parts, where)
        texts.append(parts)
    return texts


def run(args: argparse.Namespace) -> int:
    if args.adapters:
        return run_parallel(args)
    from ..formats.native import read_adapter_config

    meta = read_adapter_config(args.adapter)  # no torch yet: the inputs are read before the model loads
    images = args.images or meta.get("task", {}).get("modality") == "image"
    columns = tuple(args.text_column or meta.get("task", {}).get("text_columns") or ("text",))
    generates = (meta.get("head") or {}).get("kind") == "causal_lm"  # translates the source column only
    texts = None if images else read_inputs(args.input, columns[:1] if generates else columns)

    from ..inference.loading import load_saved_adapter
    from ..inference.predict import predict

    model, name, meta = load_saved_adapter(args.adapter, args.model)
    if images:
        return predict_image_files(model, name, args)
    if model.heads[name].config.kind == "causal_lm":  # translate, or continue the text
        from .generation import predict_generation

        print("\n".join(predict_generation(model, name, meta, texts, args)))
        return 0
    max_length = args.max_length or meta.get("training", {}).get("max_length", 128)
    for prediction in predict(model, texts, name, max_length=max_length, batch_size=args.batch_size):
        print(f"{prediction:.6g}" if isinstance(prediction, float) else prediction)
    return 0


def run_parallel(args: argparse.Namespace) -> int:
    """``--adapters a,b,c``: every task's prediction for each input, from one forward pass per batch."""
    from ..composition import AdapterDrop, Parallel
    from ..inference.loading import load_adapters
    from ..inference.multitask import predict_tasks
    from ..inference.store import adapter_folder

    folders = [adapter_folder(item.strip(), args.store) for item in args.adapters.split(",") if item.strip()]
    model, names, metas = load_adapters(folders, args.model)
    if args.images or model.processor is not None:
        raise ValueError(
            "--adapters predicts texts with several adapters in one pass; for an image model's adapters "
            "run predict --adapter A --images FILE ... once per adapter"
        )
    if all(n in model.heads and model.heads[n].config.kind == "causal_lm" for n in names):
        from .generation import route_translations  # translation adapters: one per row, by its language

        rows = read_inputs(args.input, ("language", "source"))
        print("\n".join(route_translations(model, names, metas, rows, args)))
        return 0
    setup = AdapterDrop(Parallel(*names), first=args.drop_first)
    columns = tuple(args.text_column or metas[0].get("task", {}).get("text_columns") or ("text",))
    texts = read_inputs(args.input, columns)
    max_length = args.max_length or max(m.get("training", {}).get("max_length", 128) for m in metas)
    predictions = predict_tasks(model, texts, setup, max_length=max_length, batch_size=args.batch_size)
    print("\t".join(names))
    for row in zip(*(predictions[name] for name in names)):
        print("\t".join(f"{p:.6g}" if isinstance(p, float) else p for p in row))
    return 0


def predict_image_files(model, name: str, args: argparse.Namespace) -> int:
    """``PATH<TAB>LABEL`` for each of ``--images``."""
    from ..data.images import read_image
    from ..inference.predict import predict_images

    if not args.images:
        raise ValueError(f"{args.adapter} was trained on images: give the image files with --images FILE ...")
    images = [read_image(path) for path in args.images]
    for path, label in zip(args.images, predict_images(model, images, name, batch_size=args.batch_size)):
        print(f"{path}\t{label}")
    return 0
