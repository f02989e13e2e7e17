"""``adapterkit eval``: evaluate a saved adapter on a bundled task's test split or a labelled file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.task import KINDS
from .common import add_data_arguments, parse_seed, positive_int, relabel
from .console import quiet_libraries, show_progress
from .generation import add_generation_arguments
from .names import check_task


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a saved adapter",
        description="Evaluate a saved adapter (e.g. RUN/best) on the test split of a bundled task, on a "
        "labelled file, or on a folder of images with one sub-folder per class (--test-dir). The base model "
        "recorded in the adapter is loaded unless --model is given. An adapter trained above others "
        "(train --stack-under) runs above them again, or above the ones --stack-under names (a MAD-X language "
        "adapter swapped for another language's), or alone with --alone. A masked-LM adapter (a language "
        "adapter) reports masked-token accuracy, loss and perplexity (exp of the mean loss over masked tokens). "
        "A classifier also gets per-class precision, recall and F1 and the confusion matrix (keys per_class and "
        "confusion_matrix with --json).",
    )
    parser.add_argument("--adapter", required=True, type=Path, help="a saved adapter folder")
    parser.add_argument("--model", help="base model (default: the one recorded in the adapter)")
    add_data_arguments(parser, training=False)
    under = parser.add_mutually_exclusive_group()
    under.add_argument("--stack-under", action="append", type=Path, metavar="DIR",
                       help="run the adapter above these saved adapters, lowest first (repeatable), instead of the "
                       "ones it was trained above")
    under.add_argument("--alone", action="store_true", help="run the adapter without the adapters it was trained above")
    parser.add_argument("--seed", type=parse_seed, help="split seed of a bundled task (default: the training seed)")
    parser.add_argument("--max-length", type=positive_int, help="default: the length the adapter was trained with")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--json", action="store_true", help="print the metrics (and a classifier's per-class ones) as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no loading messages")
    add_generation_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.task:
        check_task(args.task)
    from ..formats.native import read_adapter_config

    saved = read_adapter_config(args.adapter)  # no torch yet: a text file's columns are checked before the model loads
    kind = (saved.get("head") or {}).get("kind")
    text_file = args.test_file and kind in KINDS and saved.get("task", {}).get("modality", "text") == "text"
    file_data = read_test_file(args, saved, kind) if text_file else None

    from ..composition import Stack
    from ..data import load_task
    from ..inference.loading import load_saved_adapter, load_under, recorded_under
    from ..inference.masked_lm import evaluate_masked_lm
    from ..inference.metrics import class_report, compute_metrics
    from ..inference.predict import labelled_image_predictions, labelled_predictions

    quiet_libraries(args.quiet)
    progress = show_progress(args.quiet)
    model, name, meta = load_saved_adapter(args.adapter, args.model)
    head = model.heads[name].config
    folders = [] if args.alone else args.stack_under or recorded_under(meta)
    under = load_under(model, folders)
    setup = Stack(*under, name) if under else name
    if args.test_dir or args.test_file:  # before reading them as the adapter's data
        require_modality(args.adapter, model, str(args.test_dir or args.test_file), "image" if args.test_dir else "text")
    if head.kind == "causal_lm":  # translation (BLEU, chrF) or language modelling (perplexity)
        from .generation import evaluate_generation

        metrics = evaluate_generation(model, name, meta, args)
        return _report(metrics, f"{name} on {args.task or args.test_file} ({int(metrics.get('examples', 0)) or 'the'} test examples)", args.json)
    if args.task:
        # the training seed also fixed the split: the same seed keeps training examples out of test
        seed = args.seed if args.seed is not None else meta.get("training", {}).get("seed", 0)
        data = load_task(args.task, seed=seed, max_examples=args.max_examples)
        examples = data.test
    elif args.test_dir:
        from ..data.image_folders import load_image_folders

        # the folder is the whole evaluation set, with the classes the adapter predicts (or some of them)
        data = load_image_folders(args.test_dir, args.test_dir, args.test_dir, classes=head.label_names)
        examples = data.train[: args.max_examples] if args.max_examples else data.train
    else:
        data = file_data or read_test_file(args, meta, head.kind)
        examples = data.train[: args.max_examples] if args.max_examples else data.train
    require_modality(args.adapter, model, data.name, data.modality)
    if data.kind != head.kind:
        raise ValueError(f"adapter {args.adapter} has a {head.kind} head, but the data is {data.kind}")
    examples = relabel(examples, data.label_names, head.label_names, head.kind)
    max_length = args.max_length or meta.get("training", {}).get("max_length", 128)
    title = f"{' > '.join([*under, name])} on {data.name} ({len(examples)} examples)"
    if head.kind == "masked_lm":  # masks seeded by the training seed, as in training's evaluation
        seed = meta.get("training", {}).get("seed", 0)
        metrics = evaluate_masked_lm(model, examples, setup, max_length=max_length, batch_size=args.batch_size, seed=seed,
                                     progress=progress)
        return _report(metrics, title, args.json)
    if data.modality == "image":
        predictions, labels = labelled_image_predictions(model, examples, setup, batch_size=args.batch_size, progress=progress)
    else:
        predictions, labels = labelled_predictions(model, examples, setup, max_length=max_length, batch_size=args.batch_size,
                                                   progress=progress)
    metrics = compute_metrics(head.kind, predictions, labels)
    if head.kind != "classification":
        return _report(metrics, title, args.json)
    names = head.label_names or tuple(str(i) for i in range(head.outputs))
    return _report(metrics, title, args.json, class_report(predictions, labels, names))


def read_test_file(args: argparse.Namespace, meta: dict, kind: str):
    """``--test-file`` as a task of the adapter's ``kind``, its text columns by default the ones the
    adapter was trained on; the file is the whole evaluation set (its train, validation and test)."""
    from ..data import load_files

    columns = tuple(args.text_column or meta.get("task", {}).get("text_columns") or ("text",))
    return load_files(args.test_file, args.test_file, args.test_file, columns, args.label_column, kind=kind)


def _report(metrics: dict[str, float], title: str, as_json: bool, classes: dict | None = None) -> int:
    """Print the metrics (and a classification's per-class table and confusion matrix, ``classes``
    from ``class_report``) as text, or as one JSON object holding both."""
    if as_json:
        print(json.dumps({**metrics, **(classes or {})}, sort_keys=True))
    else:
        print(title)
        for metric, value in metrics.items():
            print(f"{metric} {value:.4f}")
        if classes is not None:
            from ..inference.metrics import format_class_report

            print(f"\n{format_class_report(classes)}")
    return 0


def require_modality(adapter: Path, model, data: str, modality: str) -> None:
    """Refuse ``data`` of another modality than the adapter's model reads (naming the fix)."""
    reads = "image" if model.processor is not None else "text"
    if modality != reads:  # before the labels, which then differ too
        source = "an image task or --test-dir" if reads == "image" else "a text task or --test-file"
        raise ValueError(f"adapter {adapter} reads {reads} data, but {data} is {modality} data; give it {source}")
