"""``TrainingConfig``: every knob of a training run, and the learning rate each method needs.

Parameter-efficient methods train a few freshly initialised parameters on top of a frozen model,
so they want learning rates one to two orders of magnitude above full fine-tuning, which nudges
millions of pretrained weights and diverges at the same rates. ``learning_rate=None`` therefore
picks a default per method (:func:`default_learning_rate`) rather than one number for all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Default learning rates (AdamW, linear decay with warmup), with where they come from.
#: Our runs are short (a few epochs on CPU), so each sits at the upper end of what the paper or
#: the peer library uses for that method.
DEFAULT_LEARNING_RATES: dict[str, float] = {
    # Houlsby et al. 2019 swept {3e-5, 3e-4, 3e-3}; AdapterHub trains bottleneck adapters at 1e-4
    # for 10-30 epochs. With 1-3 epochs, 1e-3 converges where 1e-4 is still far from it.
    "houlsby": 1e-3,
    "pfeiffer": 1e-3,
    "parallel": 1e-3,
    # s = 4 multiplies the adapter's output (and so its effective step) by four.
    "scaled_parallel": 5e-4,
    # Hu et al. 2021, RoBERTa-base GLUE: 4e-4 to 5e-4 with r = 8, alpha = 16.
    "lora": 5e-4,
    # Ben Zaken et al. 2021 swept {1e-4, 4e-4, 7e-4, 1e-3}; bias-only training tolerates the top.
    "bitfit": 1e-3,
    # Li & Liang 2021 / P-tuning v2 train prefixes at 1e-4 .. 1e-2 depending on length and model.
    "prefix": 1e-3,
    "mam": 1e-3,
    # Lester et al. 2021 use 0.3 with Adafactor; with AdamW soft prompts need about 3e-2.
    "prompt": 3e-2,
    # Devlin et al. 2019 / RoBERTa: 2e-5 .. 5e-5 for every weight of the model.
    "full": 2e-5,
    "partial": 2e-5,
    # A linear (or MLP) head on frozen features: a small convex-ish problem, 1e-3 is standard.
    "probe": 1e-3,
    # Pfeiffer et al. 2021 train fusion at 5e-5 for 10 epochs on large targets. Fusion starts
    # from identity values and near-uniform attention; on targets of a few hundred examples and
    # 5-10 epochs, 1e-3 is what benchmarks/bench_fusion_quality.py measured with.
    "fusion": 1e-3,
}
#: For a registered method not in the table: most such methods train few fresh parameters.
FALLBACK_LEARNING_RATE = 1e-3


def default_learning_rate(method: str) -> float:
    """The learning rate used when :attr:`TrainingConfig.learning_rate` is None.

    A method's config class may declare ``default_learning_rate`` itself (a class attribute);
    that wins, so a new method carries its own default without editing this table.
    """
    from ..registry import REGISTRY

    spec = REGISTRY.get(method)
    declared = getattr(spec.config_cls, "default_learning_rate", None) if spec else None
    if declared is not None:
        return float(declared)
    return DEFAULT_LEARNING_RATES.get(method, FALLBACK_LEARNING_RATE)


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
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0 (or None for the method's default), got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 validations (or None to never stop early), got {self.patience}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (or None for no clipping), got {self.max_grad_norm}")
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
