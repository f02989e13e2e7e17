"""``adapterkit train``'s step-level flags: steps, schedule, metric, class weights, logs, run config.

:func:`add_training_control_arguments` adds them to the train parser; :func:`training_controls`
turns the parsed values into :class:`~adapterkit.training.TrainingConfig` keyword arguments,
checking the metric name before any data or model is loaded; :func:`check_against_task` checks
the metric and class weights against the task before the model is loaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

#: Must match ``training.schedule.SCHEDULERS`` (not imported: building the parser imports no torch).
SCHEDULERS = ("linear", "cosine", "constant_with_warmup")


def parse_class_weights(text: str) -> str | tuple[float, ...]:
    """``balanced`` or comma-separated weights, one per label in the task's label order."""
    if text.strip() == "balanced":
        return "balanced"
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'balanced' or numbers separated by commas (e.g. 1,3.5), got {text!r}") from None


def add_training_control_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the step, schedule, metric, class-weight, logging and ``--config`` flags."""
    group = parser.add_argument_group("steps, schedule and logs")
    group.add_argument("--max-steps", type=int, metavar="N",
                       help="stop after N optimizer steps (the schedule is sized by it; --epochs is then ignored)")
    group.add_argument("--eval-steps", type=int, metavar="N",
                       help="validate every N optimizer steps instead of every --eval-every epochs")
    group.add_argument("--save-steps", type=int, metavar="N",
                       help="also checkpoint every N optimizer steps (always after each epoch); --resume continues mid-epoch")
    group.add_argument("--gradient-accumulation-steps", type=int, default=1, metavar="K",
                       help="add up the gradients of K batches per optimizer step: an effective batch of --batch-size x K")
    group.add_argument("--lr-scheduler", choices=SCHEDULERS, default="linear",
                       help="learning-rate schedule after the warm-up (default: linear decay to 0)")
    group.add_argument("--metric", help="the validation metric that selects the best adapter and drives --patience "
                       "(default: accuracy, pearson for regression; e.g. macro_f1, mse)")
    group.add_argument("--class-weights", type=parse_class_weights, metavar="balanced|W1,W2,...",
                       help="weight the classification loss per class: balanced (n / (classes x count) over the "
                       "training split) or one weight per label, in the task's label order")
    group.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard event files to OUTPUT_DIR/tensorboard (OUTPUT_DIR/log.jsonl is always written)")
    group.add_argument("--log-dir", type=Path, metavar="DIR", help="write the TensorBoard event files to DIR (implies --tensorboard)")
    group.add_argument("--config", type=Path, metavar="FILE",
                       help="read flags from a YAML or JSON file (keys: the flags' names with _, e.g. batch_size: 16); "
                       "flags on the command line override it. Every run saves its flags as OUTPUT_DIR/config.yaml")


def training_controls(args: argparse.Namespace, output_dir: str) -> dict[str, Any]:
    """The :class:`~adapterkit.training.TrainingConfig` keyword arguments of these flags.

    Raises:
        ValueError: an unknown ``--metric`` (with the metric names; whether the task reports it
            is checked once the task is loaded).
    """
    from ..inference.metrics import check_metric

    if args.metric is not None:
        check_metric(args.metric)
    tensorboard = args.log_dir or (Path(output_dir) / "tensorboard" if args.tensorboard else None)
    return {
        "max_steps": args.max_steps,
        "eval_steps": args.eval_steps,
        "save_steps": args.save_steps,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "lr_scheduler": args.lr_scheduler,
        "metric": args.metric,
        "class_weights": args.class_weights,
        "tensorboard_dir": str(tensorboard) if tensorboard is not None else None,
    }


def check_against_task(args: argparse.Namespace, task: Any) -> None:
    """Refuse a ``--metric`` the task does not report and ``--class-weights`` that do not fit it,
    before the model is loaded (the trainer checks them again).

    Raises:
        ValueError: naming the metrics of the task's kind, or its labels.
    """
    from ..inference.metrics import check_metric
    from ..training.class_weights import task_class_weights

    if args.metric is not None:
        check_metric(args.metric, task.kind)
    task_class_weights(args.class_weights, task)
