"""Arguments and helpers shared by the subcommands: data selection, method options, models."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.lm_files import FILE_KINDS, is_lm_file, load_lm_files
from ..data.prompts import CHAT_TEMPLATE, SIMPLE
from ..data.task import CLASSIFICATION, KINDS, Example, TaskData


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, booleans, null,
    lists), else taken as a string: ``reduction_factor=8``, ``layers=[4,5]``, ``non_linearity=gelu``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def given_name(text: str) -> str:
    """An argparse type for ``--name``: not empty (an empty name silently meant the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty; leave --name out for the default name")
    return text


def non_negative(text: str) -> float:
    """An argparse type: a number >= 0 (``--max-grad-norm``, where 0 disables clipping)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number >= 0 (0 disables it), got {text!r}")
    return value


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (a size of 0 would be silently replaced by a
    default, or fail late; a negative count read as if it were 0)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


#: Sizes and lengths.
positive_int = whole_number(1)


def parse_seed(text: str) -> int:
    """A random seed: a whole number from 0 to 2**32 - 1 (what numpy, which splits and shuffles, accepts)."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to 4294967295, got {text!r}")
    return seed


def options_dict(pairs: list[tuple[str, Any]] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in pairs or []:
        if key in options:
            raise ValueError(f"--option {key} is given twice")
        options[key] = value
    return options


def add_data_arguments(parser: argparse.ArgumentParser, training: bool) -> None:
    """``--task NAME`` or files: ``--train-file`` (plus optional validation/test files) for
    training, ``--test-file`` for evaluation."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="a bundled task (see `adapterkit tasks`)")
    flag = "--train-file" if training else "--test-file"
    source.add_argument(flag, type=Path, help="a CSV, TSV or JSON Lines file with text and label columns")
    folder = "--train-dir" if training else "--test-dir"
    source.add_argument(folder, type=Path, metavar="DIR", help="a folder of images with one sub-folder per class")
    if training:
        parser.add_argument("--validation-file", type=Path, help="default: 10%% of the train file")
        parser.add_argument("--test-file", type=Path, help="default: 10%% of the train file")
        parser.add_argument("--validation-dir", type=Path, metavar="DIR", help="default: 10%% of the train folder's images")
        parser.add_argument("--test-dir", type=Path, metavar="DIR", help="default: 10%% of the train folder's images")
    parser.add_argument("--text-column", action="append", metavar="COLUMN",
                        help="text column of the files; give it twice for pair tasks (default: text)")
    parser.add_argument("--label-column", default="label", metavar="COLUMN", help="label column of the files (default: label)")
    if training:
        parser.add_argument("--kind", choices=KINDS + tuple(FILE_KINDS),
                            help="task kind of the files (default: inferred from the columns and labels); instruction "
                            "(instruction/response rows) and text (text rows) fine-tune a causal LM")
    parser.add_argument("--max-examples", type=int, metavar="N", help="use at most N examples of each split")


def cap(task: TaskData, max_examples: int | None) -> TaskData:
    if max_examples is None:
        return task
    if max_examples < 1:
        raise ValueError(f"--max-examples must be a positive count, got {max_examples}")
    return dataclasses.replace(
        task, train=task.train[:max_examples], validation=task.validation[:max_examples], test=task.test[:max_examples]
    )


def load_training_data(args: argparse.Namespace) -> TaskData:
    source = "--task" if args.task else "--train-dir" if args.train_dir else "--train-file"
    held_out = {"--train-file": ("validation_file", "test_file"), "--train-dir": ("validation_dir", "test_dir")}
    stray = [f"--{n.replace('_', '-')}" for n in ("validation_file", "test_file", "validation_dir", "test_dir")
             if getattr(args, n) is not None and n not in held_out.get(source, ())]  # fmt: skip
    if stray:  # they would be ignored
        raise ValueError(
            f"{', '.join(stray)} cannot go with {source}: a bundled task brings its own splits, --train-file takes "
            "--validation-file and --test-file, --train-dir takes --validation-dir and --test-dir"
        )
    if args.task:
        from ..data import load_task

        return load_task(args.task, seed=args.seed, max_examples=args.max_examples)
    if args.train_dir:
        from ..data.image_folders import load_image_folders

        task = load_image_folders(args.train_dir, args.validation_dir, args.test_dir, seed=args.seed)
        return cap(task, args.max_examples)
    if is_lm_data(args):
        return cap(load_lm_training_files(args), args.max_examples)
    from ..data import load_files  # torch-free: a file's mistakes show before torch is imported

    task = load_files(
        args.train_file,
        args.validation_file,
        args.test_file,
        text_columns=tuple(args.text_column or ("text",)),
        label_column=args.label_column,
        kind=args.kind,
        seed=args.seed,
    )
    return cap(task, args.max_examples)


def is_lm_data(args: argparse.Namespace) -> bool:
    """Whether ``--train-file`` holds causal-LM rows: ``--kind instruction|text``, or, with no
    ``--kind`` and no ``--text-column``, a first row without the label column whose columns are
    one of ``data/lm_files.py``'s forms."""
    if args.kind in FILE_KINDS:
        return True
    return args.kind is None and not args.text_column and is_lm_file(args.train_file, args.label_column)


def load_lm_training_files(args: argparse.Namespace) -> TaskData:
    """The causal-LM task of the train files, its prompts in the chat template with ``--chat-template``.

    Raises:
        ValueError: ``--text-column``, ``--chat-template`` with plain texts (no prompts to write), and whatever
            ``load_lm_files`` refuses.
    """
    if args.text_column:
        raise ValueError("--text-column names the columns of labelled files; causal-LM files have fixed columns "
                         "(instruction and response, prompt and completion, or text)")
    chat = getattr(args, "chat_template", False)
    task = load_lm_files(args.train_file, args.validation_file, args.test_file, kind=args.kind,
                         prompt_format=CHAT_TEMPLATE if chat else SIMPLE, seed=args.seed)
    if chat and task.prompt_format is None:
        raise ValueError(f"--chat-template writes instruction prompts, but {args.train_file} holds plain texts; drop it")
    return task


def data_name(args: argparse.Namespace) -> str:
    """The name of the training data, known before loading it: the bundled task, the train file's
    stem or the image folder's task name (as the loaded ``TaskData.name`` will be)."""
    if args.task:
        return args.task
    if args.train_file:
        return args.train_file.stem
    from ..data.image_folders import folder_task_name

    return folder_task_name(args.train_dir)


def file_safe_name(text: str) -> str:
    """``text`` as letters, digits, '_' and '-' (a task or file name made a name; no torch needed)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "adapter"


def adapter_name(text: str) -> str:
    """A valid adapter name (:func:`file_safe_name`) made from a task or file name.

    Names of ``nn.Module`` attributes (a file called ``train.csv`` gives ``train``) are refused
    by the model, so those get an ``_adapter`` suffix.
    """
    from torch import nn

    name = file_safe_name(text)
    return f"{name}_adapter" if hasattr(nn.ModuleDict, name) else name


def relabel(examples: list[Example], names: tuple[str, ...], head_names: tuple[str, ...], kind: str) -> list[Example]:
    """Re-index class ids from the data's label order to the order the adapter's head predicts."""
    if kind != CLASSIFICATION or not head_names or tuple(names) == tuple(head_names):
        return examples
    unknown = sorted(set(names) - set(head_names))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the labels the adapter predicts: {list(head_names)}")
    index = [head_names.index(name) for name in names]
    return [dataclasses.replace(e, label=index[e.label]) for e in examples]
