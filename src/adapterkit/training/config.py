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
        warmup_ratio: share of all steps spent warming the learning rate up linearly from 0,
            after which it decays linearly to 0 (``get_linear_schedule_with_warmup``).
        max_length: token limit per example (pairs are truncated longest-first).
        seed: seeds the adapter's initialisation, the shuffling and dropout.
        patience: stop after this many validations in a row without improving the main
            validation metric (accuracy, or Pearson for regression); None never stops early.
        eval_every: validate every this many epochs (the last epoch is always validated).
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

    def __post_init__(self) -> None:
        if self.output_dir is not None:
            object.__setattr__(self, "output_dir", str(self.output_dir))
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "eval_every": self.eval_every,
            "eval_batch_size": self.eval_batch_size,
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
        if self.resume and self.output_dir is None:
            raise ValueError("resume=True needs an output_dir holding the checkpoint to resume from")

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
