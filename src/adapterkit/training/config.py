"""``TrainingConfig``: every knob of a training run, and the learning rate each method needs.

Parameter-efficient methods train a few freshly initialised parameters on top of a frozen model,
so they want learning rates one to two orders of magnitude above full fine-tuning, which nudges
millions of pretrained weights and diverges at the same rates. ``learning_rate=None`` therefore
picks a default per method (:func:`default_learning_rate`, declared by each method's config class
with where the figure comes from) rather than one number for all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from ..registry import method_spec
from .schedule import SCHEDULERS

def default_learning_rate(method: str) -> float:
    """The learning rate used when :attr:`TrainingConfig.learning_rate` is None: the one the
    method's config class declares (``default_learning_rate``, with its source in
    ``learning_rate_source``; ``adapterkit methods`` lists both)."""
    return float(method_spec(method).config_cls.default_learning_rate)


@dataclass(frozen=True)
class TrainingConfig:
    """How to train one adapter on one task.

    Args:
        epochs: passes over the training split (early stopping may end the run sooner).
        batch_size: examples per optimizer step; in distributed runs the global batch, split
            into equal slices, one per process (so it must be a multiple of their number).
        learning_rate: peak learning rate; None picks :func:`default_learning_rate` of the method.
        weight_decay: AdamW decoupled weight decay, applied to matrices only: decaying biases and
            norm gains toward zero has no regularising meaning (BERT's recipe excludes them too).
        warmup_ratio: share of all optimizer steps spent warming the learning rate up linearly
            from 0, after which ``lr_scheduler`` takes over.
        lr_scheduler: ``linear`` (decay to 0 at the last step), ``cosine`` (half a cosine to 0)
            or ``constant_with_warmup`` (the peak rate after warm-up), through
            ``transformers.get_scheduler``; see :mod:`adapterkit.training.schedule`.
        max_length: token limit per example (pairs are truncated longest-first).
        seed: seeds the adapter's initialisation, the shuffling and dropout.
        patience: stop after this many validations in a row without improving the main
            validation metric (accuracy, or Pearson for regression); None never stops early.
        eval_every: validate every this many epochs (the last epoch is always validated).
        max_steps: stop after this many optimizer steps (the schedule is sized by it, and
            ``epochs`` is ignored: the run takes as many epochs as the steps need); None: ``epochs``.
        eval_steps: validate every this many optimizer steps instead of every ``eval_every``
            epochs (the last step is always validated).
        save_steps: also write the checkpoint every this many optimizer steps (it is always
            written after each epoch), so a resumed run continues mid-epoch.
        gradient_accumulation_steps: add up the gradients of this many batches per optimizer
            step (an effective batch of ``batch_size`` times this; the last step of an epoch
            takes the batches that remain).
        metric: the validation metric that selects the best adapter and drives ``patience``
            (None: accuracy, Pearson for regression; see ``inference.metrics.METRICS``).
        class_weights: weight the classification loss per class: ``"balanced"`` (n / (k * count)
            over the training split) or one weight per label; None: unweighted.
        max_grad_norm: clip the gradient norm of the trained parameters; None disables clipping.
        output_dir: where ``best/``, ``checkpoint/`` and ``results.json`` go; None trains in a
            temporary folder (no resume, nothing kept but the weights left in the model).
        resume: continue from ``output_dir/checkpoint`` when it exists.
        eval_batch_size: batch size for validation/test (no gradients, so it can be larger).
        mixed_precision: ``no``, ``fp16`` or ``bf16`` (handed to ``accelerate``; useful on GPUs).
            ``accelerate`` fixes it for the whole process at the first ``Accelerator``, so runs
            with different settings need separate processes (or pass ``accelerator=``).
        progress: show a progress bar and per-epoch lines (main process only).
        augment: image tasks: augment the training images in the ways that keep their labels
            (``data.image_tasks.AUGMENTATION``); text tasks ignore it.
        tensorboard_dir: also write TensorBoard event files there (needs the ``tensorboard``
            package); the per-step JSON Lines log ``output_dir/log.jsonl`` is always written.
    """

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128
    seed: int = 0
    patience: int | None = 2
    eval_every: int = 1
    max_grad_norm: float | None = 1.0
    output_dir: str | None = None
    resume: bool = False
    eval_batch_size: int = 64
    mixed_precision: str = "no"
    progress: bool = True
    augment: bool = True
    max_steps: int | None = None
    eval_steps: int | None = None
    save_steps: int | None = None
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = "linear"
    metric: str | None = None
    class_weights: str | tuple[float, ...] | None = None
    tensorboard_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("output_dir", "tensorboard_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(getattr(self, name)))
        if isinstance(self.class_weights, list):  # as read back from JSON
            object.__setattr__(self, "class_weights", tuple(self.class_weights))
        optional_positive = {"max_steps": self.max_steps, "eval_steps": self.eval_steps, "save_steps": self.save_steps}
        for name, value in optional_positive.items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ParameterError(f"{{{name}}} must be a positive integer, got {{value!r}}", value=value)
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "eval_every": self.eval_every,
            "eval_batch_size": self.eval_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ParameterError(f"{{{name}}} must be a positive integer, got {{value!r}}", value=value)
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ParameterError("{learning_rate} must be > 0, got {v}; leave it out for the method's default", v=self.learning_rate)
        if self.weight_decay < 0:
            raise ParameterError("{weight_decay} must be >= 0, got {v}", v=self.weight_decay)
        if not 0 <= self.warmup_ratio < 1:
            raise ParameterError("{warmup_ratio} must be in [0, 1), got {v}", v=self.warmup_ratio)
        if self.patience is not None and self.patience < 1:
            raise ParameterError("{patience} must be >= 1 validations (or None to never stop early), got {v}", v=self.patience)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ParameterError("{max_grad_norm} must be > 0 (or None for no clipping), got {v}", v=self.max_grad_norm)
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {self.mixed_precision!r}")
        if self.lr_scheduler not in SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler!r}")
        self._check_class_weights()
        if self.resume and self.output_dir is None:
            raise ValueError("resume=True needs an output_dir holding the checkpoint to resume from")

    def _check_class_weights(self) -> None:
        weights = self.class_weights
        if weights is None or weights == "balanced":
            return
        if isinstance(weights, str) or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
            raise ParameterError(
                "{class_weights} must be 'balanced' or a list of numbers, one per label; got {w!r}", w=weights
            )
        if not weights or min(weights) < 0 or not sum(weights) > 0:
            raise ParameterError("{class_weights} must be >= 0 and not all 0, got {w}", w=list(weights))

    def learning_rate_for(self, method: str) -> float:
        return self.learning_rate if self.learning_rate is not None else default_learning_rate(method)

    @property
    def output_path(self) -> Path | None:
        return None if self.output_dir is None else Path(self.output_dir)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
