"""``adapterkit predict``: one prediction per input text, from a file or standard input."""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path

from ..data.files import read_rows
from ..data.tables import CONVERT_HINT, decode_text, field_text, require_columns
from ..data.task import require_text
from .common import positive_int
from .console import quiet_libraries, show_progress
from .generation import add_generation_arguments
from .paths import require_input_file
from .predictions import output_file, prediction_record, scores_line, write_records

_TABLES = (".csv", ".tsv", ".jsonl", ".json")

DESCRIPTION = """Print one prediction per input: the label name for classification, a number for
regression. Input is --input FILE or standard input: plain text with one input per line (blank
lines are skipped; for pair tasks the two texts are separated by a tab), or a .csv/.tsv/.jsonl file
read with --text-column (default: the columns the adapter was trained on), where a row with an
empty text is an error. With --images, an image model's adapter predicts one label per image
file (printed as PATH<TAB>LABEL). Translation adapters: --adapter translates each line (--language names
the target of a shared adapter); --adapters A,B,... reads LANGUAGE<TAB>SOURCE lines and routes each to
the adapter translating into LANGUAGE, all in one pass per batch. Input is read as UTF-8 (or
--encoding); empty input is an error. --scores adds each class's probability to the printed
lines; --output FILE writes the predictions to a .jsonl file (one JSON object per input: its
text, label and scores, or value for regression) or a .csv/.tsv table instead of printing them."""


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
    parser.add_argument("--max-length", type=positive_int, help="default: the length the adapter was trained with")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--language", help="translation adapters: the target language, e.g. German "
                        "(default: the adapter's only one)")
    parser.add_argument("--encoding", default="utf-8", help="encoding of the input (default: utf-8), e.g. latin1")
    parser.add_argument("--scores", action="store_true",
                        help="classifiers: print each class's probability after the label (LABEL<TAB>class=p ...)")
    parser.add_argument("--output", type=Path, metavar="FILE",
                        help="write the predictions with their scores to FILE (.jsonl, .csv or .tsv) instead of printing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no loading messages")
    add_generation_arguments(parser)
    parser.set_defaults(func=run)


def read_inputs(path: Path | None, columns: tuple[str, ...], encoding: str = "utf-8") -> list[tuple[str, ...]]:
    """Texts from a table file (by column, stripped) or plain lines (tab-separated for pairs;
    blank lines skipped), read from ``path`` or standard input in ``encoding``.

    Raises:
        ValueError: text that is not ``encoding`` (naming the line and how to convert it), no input
            at all, or a row or line with an empty (or whitespace-only) text, naming the file and line.
    """
    fix = f"{CONVERT_HINT}, or name its encoding with --encoding latin1"
    if path is not None:
        require_input_file(path, "--input")
    if path is not None and path.suffix.lower() in _TABLES:
        texts = []
        for row in read_rows(path, encoding, fix):
            where = f"{path} line {row.line}"
            require_columns(row.fields, columns, where, "Name the text column(s) with --text-column.")
            texts.append(tuple(field_text(row.fields[c]) for c in columns))
            require_text(texts[-1], where, columns)
        return texts
    source = str(path or "stdin")
    lines = decode_text(path.read_bytes() if path is not None else stdin_bytes(), source, encoding, fix).splitlines()
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = tuple(line.split("\t")) if len(columns) == 2 else (line,)
        where = f"{source} line {number}"
        if len(parts) != len(columns):
            raise ValueError(f"{where}: a pair task needs two texts separated by a tab")
        require_text(parts, where)
        texts.append(parts)
    if not texts:
        given = f"{path} holds no input lines" if path is not None else "standard input was empty"
        raise ValueError(f"nothing to predict: {given}; give one input per line (--input FILE or standard input)")
    return texts


def stdin_bytes() -> bytes:
    """Standard input as bytes (decoded by the caller, so a wrong encoding is named, not garbled);
    a text stream without a byte buffer (a test's) is encoded back as UTF-8."""
    if sys.stdin.isatty():
        print("reading inputs from standard input, one per line; end with Ctrl-D", file=sys.stderr)
    buffer = getattr(sys.stdin, "buffer", None)
    return buffer.read() if buffer is not None else sys.stdin.read().encode("utf-8", "surrogateescape")


def check_options(args: argparse.Namespace) -> Path | None:
    """Refuse what cannot work before loading anything; returns ``--output`` checked."""
    try:
        codecs.lookup(args.encoding)
    except LookupError:
        raise ValueError(f"--encoding {args.encoding}: unknown encoding; e.g. utf-8, latin1, cp1252") from None
    if args.drop_first and not args.adapters:
        raise ValueError("--drop-first N shares the first N layers between the tasks of --adapters A,B,...; with one "
                         "--adapter there is nothing to share: leave it out")
    if args.drop_first < 0:
        raise ValueError(f"--drop-first N: N is a number of layers, 0 or more; got {args.drop_first}")
    if args.scores and args.adapters:
        raise ValueError("--scores prints one adapter's class probabilities: use it with --adapter (or --output FILE)")
    return output_file(args.output)


def run(args: argparse.Namespace) -> int:
    output = check_options(args)
    if args.adapters:
        quiet_libraries(args.quiet)
        return run_parallel(args, output)
    from ..formats.native import read_adapter_config

    meta = read_adapter_config(args.adapter)  # no torch yet: the inputs are read before the model loads
    images = args.images or meta.get("task", {}).get("modality") == "image"
    columns = tuple(args.text_column or meta.get("task", {}).get("text_columns") or ("text",))
    generates = (meta.get("head") or {}).get("kind") == "causal_lm"  # translates the source column only
    if generates and args.scores:
        raise ValueError(f"{args.adapter} generates text: --scores is for classification adapters")
    texts = None if images else read_inputs(args.input, columns[:1] if generates else columns, args.encoding)

    quiet_libraries(args.quiet)  # imports torch
    from ..inference.loading import load_saved_adapter
    from ..inference.predict import score_texts

    quiet_libraries(args.quiet)  # imports torch: after the inputs are checked
    model, name, meta = load_saved_adapter(args.adapter, args.model)
    if images:
        return predict_image_files(model, name, args, output)
    if model.heads[name].config.kind == "causal_lm":  # translate, or continue the text
        from .generation import predict_generation

        generated = predict_generation(model, name, meta, texts, args)
        return emit([{columns[0]: t[0], "output": g} for t, g in zip(texts, generated)], generated, output, args)
    max_length = args.max_length or meta.get("training", {}).get("max_length", 128)
    predictions = score_texts(model, texts, name, max_length=max_length, batch_size=args.batch_size,
                              progress=show_progress(args.quiet))
    records = [prediction_record(dict(zip(columns, t)), p) for t, p in zip(texts, predictions)]
    return emit(records, [scores_line(p) if args.scores else _shown(p.label) for p in predictions], output, args)


def emit(records: list[dict], lines: list[str], output: Path | None, args: argparse.Namespace) -> int:
    """Write ``records`` to ``output``, or else print ``lines``."""
    if output is None:
        print("\n".join(lines))
        return 0
    write_records(output, records)
    if not args.quiet:
        print(f"{len(records)} predictions written to {output}", file=sys.stderr)
    return 0


def _shown(value: str | float) -> str:
    return f"{value:.6g}" if isinstance(value, float) else value


def run_parallel(args: argparse.Namespace, output: Path | None) -> int:
    """``--adapters a,b,c``: every task's prediction for each input, from one forward pass per batch."""
    from ..composition import AdapterDrop, Parallel
    from ..inference.loading import load_adapters
    from ..inference.multitask import predict_tasks
    from ..inference.store import adapter_folder

    texts_only = ValueError(
        "--adapters predicts texts with several adapters in one pass; for an image model's adapters "
        "run predict --adapter A --images FILE ... once per adapter"
    )
    if args.images:  # before loading anything
        raise texts_only
    folders = [adapter_folder(item.strip(), args.store) for item in args.adapters.split(",") if item.strip()]
    quiet_libraries(args.quiet)
    model, names, metas = load_adapters(folders, args.model)
    if model.processor is not None:
        raise texts_only
    if all(n in model.heads and model.heads[n].config.kind == "causal_lm" for n in names):
        from .generation import route_translations  # translation adapters: one per row, by its language

        rows = read_inputs(args.input, ("language", "source"), args.encoding)
        generated = route_translations(model, names, metas, rows, args)
        return emit([{"language": r[0], "source": r[1], "output": g} for r, g in zip(rows, generated)], generated, output, args)
    setup = AdapterDrop(Parallel(*names), first=args.drop_first)
    columns = tuple(args.text_column or metas[0].get("task", {}).get("text_columns") or ("text",))
    texts = read_inputs(args.input, columns, args.encoding)
    max_length = args.max_length or max(m.get("training", {}).get("max_length", 128) for m in metas)
    predictions = predict_tasks(model, texts, setup, max_length=max_length, batch_size=args.batch_size)
    rows = list(zip(*(predictions[name] for name in names)))
    records = [{**dict(zip(columns, t)), **dict(zip(names, row))} for t, row in zip(texts, rows)]
    lines = ["\t".join(names), *("\t".join(_shown(p) for p in row) for row in rows)]
    return emit(records, lines, output, args)


def predict_image_files(model, name: str, args: argparse.Namespace, output: Path | None) -> int:
    """``PATH<TAB>LABEL`` (with ``--scores``: the probabilities too) for each of ``--images``."""
    from ..data.images import read_image
    from ..inference.predict import score_images

    if not args.images:
        raise ValueError(f"{args.adapter} was trained on images: give the image files with --images FILE ...")
    images = [read_image(path) for path in args.images]
    predictions = score_images(model, images, name, batch_size=args.batch_size, progress=show_progress(args.quiet))
    records = [prediction_record({"image": str(path)}, p) for path, p in zip(args.images, predictions)]
    lines = [f"{path}\t{scores_line(p) if args.scores else p.label}" for path, p in zip(args.images, predictions)]
    return emit(records, lines, output, args)
