"""The training loop: epochs of optimizer steps, with validation, checkpoints and the step log.

:class:`StepLoop` drives what the :class:`~adapterkit.training.Trainer` prepared. Each optimizer
step adds up the gradients of ``gradient_accumulation_steps`` batches (each batch's loss divided
by the number of batches in its step, so the gradient is their mean; DDP synchronises only on a
step's last batch), clips them, steps the optimizer and the schedule, and appends a record to
the step log. Validation comes every ``eval_steps`` steps, or at the end of every
``eval_every``-th epoch, and always after the run's last step; an improvement of the selection
metric saves the best adapter, ``patience`` validations in a row without one end the run. The
checkpoint is written after every epoch, every ``save_steps`` steps, and on Ctrl-C
(``interrupt.py``). A run resumed from a mid-epoch checkpoint skips the batches the epoch had
used and restores the random generators after that, so it goes on exactly as the interrupted
run would have.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..inference.metrics import improves
from .checkpoint import Progress
from .class_weights import reweighted_loss
from .config import TrainingConfig
from .interrupt import StopRequest, TrainingInterrupted, position
from .schedule import StepPlan
from .step_log import StepLog


@dataclass
class LoopParts:
    """What the loop trains: the config and plan, the accelerator and the objects it prepared
    (``wrapped`` model, optimizer, scheduler, training ``loader``), the ``trainable`` parameters
    (for clipping), the ``setup`` of each pass, the class weights (or None) and the selection
    ``metric``."""

    config: TrainingConfig
    plan: StepPlan
    accelerator: Any
    wrapped: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    trainable: list[torch.nn.Parameter]
    setup: Any
    class_weights: torch.Tensor | None
    metric: str


@dataclass
class LoopHooks:
    """What the loop calls back: ``validate()`` the metrics on the validation split;
    ``save_best(epoch, step, metrics)``; ``checkpoint()`` writes it and returns its folder (None
    when the run keeps none); ``report(line)`` and ``report_epoch(record, seconds)`` print;
    ``memory()`` the peak memory so far; ``restore_rng`` the resumed checkpoint's generators
    (None on a fresh run); the ``step_log`` (None on other processes than the main one); the
    Ctrl-C ``stop`` request; the user's ``on_epoch_end`` and ``on_step_end``."""

    validate: Callable[[], dict[str, float]]
    save_best: Callable[[int, int, dict[str, float]], None]
    checkpoint: Callable[[], Path | None]
    report: Callable[[str], None]
    report_epoch: Callable[[dict[str, Any], float], None]
    memory: Callable[[], int]
    restore_rng: Callable[[], None] | None
    step_log: StepLog | None
    stop: StopRequest
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None
    on_step_end: Callable[[dict[str, Any]], None] | None = None


class StepLoop:
    """Train ``parts`` from ``progress`` (updated in place) to the plan's end or early stopping."""

    def __init__(self, parts: LoopParts, hooks: LoopHooks, progress: Progress):
        self.parts, self.hooks, self.progress = parts, hooks, progress
        progress.planned_steps = parts.plan.total_steps
        self._clock = self._epoch_started = time.perf_counter()

    def finished(self) -> bool:
        return self.progress.stopped_early or self.progress.global_step >= self.parts.plan.total_steps

    def run(self) -> None:
        """Train; raises :class:`TrainingInterrupted` after checkpointing a Ctrl-C's step."""
        for epoch in range(self.progress.epoch, self.parts.plan.epochs):
            if self.finished():
                break
            self._epoch(epoch)
        if self.progress.stopped_early:
            self.hooks.report(
                f"stopped early: no {self.parts.metric} improvement for {self.progress.bad_evaluations} validation(s)"
            )

    # ----------------------------------------------------------------- one epoch
    def _epoch(self, epoch: int) -> None:
        parts, progress, plan = self.parts, self.progress, self.parts.plan
        acc, cfg = parts.accelerator, parts.config
        self._epoch_started = time.perf_counter()
        parts.wrapped.train()
        parts.loader.set_epoch(epoch)  # the shuffle order of this epoch (and of every process)
        skip = progress.batches_in_epoch
        if not skip:  # an epoch-boundary checkpoint was taken before this iterator drew from the generator
            self._restore_rng()
        batches = iter(parts.loader)
        for _ in range(skip):  # the batches the interrupted run had used
            next(batches)
        self._restore_rng()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{plan.epochs}", total=plan.batches, initial=skip,
                   disable=not (cfg.progress and acc.is_main_process), leave=False, dynamic_ncols=True)
        losses: list[float] = []
        for index, batch in enumerate(bar, start=skip):
            first = index - index % plan.accumulation
            group = min(plan.accumulation, plan.batches - first)  # batches in this optimizer step
            last_of_step = index + 1 == first + group
            with contextlib.nullcontext() if last_of_step else acc.no_sync(parts.wrapped):
                loss = self._loss(batch)
                acc.backward(loss / group if group > 1 else loss)
            losses.append(loss.item())
            progress.epoch_loss_sum += losses[-1]
            progress.batches_in_epoch = index + 1
            if not last_of_step:
                continue
            record = self._optimizer_step(epoch, losses)
            losses = []
            bar.set_postfix(loss=f"{progress.epoch_loss_sum / progress.batches_in_epoch:.4f}", refresh=False)
            if self._after_step(epoch, record, end_of_epoch=index + 1 == plan.batches):
                return

    def _restore_rng(self) -> None:
        if self.hooks.restore_rng is not None:
            self.hooks.restore_rng()
            self.hooks.restore_rng = None

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        output = self.parts.wrapped(**batch, adapters=self.parts.setup)
        if self.parts.class_weights is None:
            return output.loss
        return reweighted_loss(output.loss, output.logits, batch["labels"], self.parts.class_weights)

    def _optimizer_step(self, epoch: int, losses: list[float]) -> dict[str, Any]:
        parts, acc = self.parts, self.parts.accelerator
        if parts.config.max_grad_norm is not None:
            acc.clip_grad_norm_(parts.trainable, parts.config.max_grad_norm)
        learning_rate = parts.scheduler.get_last_lr()[0]  # the rate this step uses
        parts.optimizer.step()
        parts.scheduler.step()
        parts.optimizer.zero_grad(set_to_none=True)
        self.progress.global_step += 1
        loss = sum(losses) / len(losses)
        if acc.num_processes > 1:
            loss = float(acc.reduce(torch.tensor(loss, device=acc.device), "mean").item())
        return {"step": self.progress.global_step, "epoch": epoch + 1, "loss": loss, "learning_rate": learning_rate}

    def _after_step(self, epoch: int, record: dict[str, Any], end_of_epoch: bool) -> bool:
        """Validate, log and checkpoint as due after a step; True when the run ends here."""
        cfg, progress, hooks = self.parts.config, self.progress, self.hooks
        last = progress.global_step >= self.parts.plan.total_steps
        if cfg.eval_steps is not None:
            due = progress.global_step % cfg.eval_steps == 0
        else:
            due = end_of_epoch and (epoch + 1) % cfg.eval_every == 0
        if due or last:
            record.update(self._validate(epoch, last))
        if hooks.step_log is not None:
            hooks.step_log.write(record)
        ending = last or progress.stopped_early
        written, checkpoint = True, None
        if end_of_epoch or ending:
            checkpoint = self._close_epoch(epoch, record, complete=end_of_epoch)
        elif cfg.save_steps is not None and progress.global_step % cfg.save_steps == 0:
            checkpoint = self._checkpoint()
        else:
            written = False
        if hooks.on_step_end is not None:
            hooks.on_step_end(dict(record))
        if hooks.stop.requested and not ending:  # Ctrl-C during this step
            checkpoint = checkpoint if written else self._checkpoint()
            raise TrainingInterrupted(
                f"stopped at {position(progress.epoch, progress.batches_in_epoch, progress.global_step, self.parts.plan.batches)}"
                + (f"; checkpoint written to {checkpoint}" if checkpoint is not None else " (no checkpoint kept)"),
                checkpoint, progress.epoch + (1 if progress.batches_in_epoch else 0), progress.global_step,
            )
        return ending

    def _validate(self, epoch: int, last: bool) -> dict[str, Any]:
        progress, metric = self.progress, self.parts.metric
        metrics = self.hooks.validate()
        if improves(metric, metrics[metric], progress.best_metric):
            progress.best_metric, progress.best_epoch, progress.best_step = metrics[metric], epoch + 1, progress.global_step
            progress.best_validation, progress.bad_evaluations = dict(metrics), 0
            self.hooks.save_best(epoch + 1, progress.global_step, metrics)
            return {"validation": metrics, "best": True}
        progress.bad_evaluations += 1
        patience = self.parts.config.patience
        progress.stopped_early = patience is not None and progress.bad_evaluations >= patience and not last
        return {"validation": metrics}

    def _close_epoch(self, epoch: int, step_record: dict[str, Any], complete: bool) -> Path | None:
        """The epoch's history record (the run's last, if it ends mid-epoch) and its checkpoint."""
        progress, acc = self.progress, self.parts.accelerator
        mean = progress.epoch_loss_sum / progress.batches_in_epoch if progress.batches_in_epoch else math.nan
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(acc.reduce(torch.tensor(mean, device=acc.device), "mean").item())}
        record["learning_rate"] = self.parts.scheduler.get_last_lr()[0]
        record.update({k: step_record[k] for k in ("validation", "best") if k in step_record})
        if complete:
            progress.epoch, progress.batches_in_epoch, progress.epoch_loss_sum = epoch + 1, 0, 0.0
        progress.history.append(record)
        seconds = time.perf_counter() - self._epoch_started
        checkpoint = self._checkpoint()
        self.hooks.report_epoch(record, seconds)
        if self.hooks.on_epoch_end is not None:
            self.hooks.on_epoch_end(dict(record))
        return checkpoint

    def _checkpoint(self) -> Path | None:
        now = time.perf_counter()
        self.progress.train_time_s += now - self._clock
        self.progress.peak_memory_bytes = max(self.progress.peak_memory_bytes, self.hooks.memory())
        folder = self.hooks.checkpoint()
        self.parts.accelerator.wait_for_everyone()
        self._clock = time.perf_counter()  # writing the checkpoint is not training time
        return folder

