"""How many optimizer steps a run takes, and its learning-rate schedule.

An epoch of ``B`` batches with gradient accumulation ``K`` takes ``ceil(B / K)`` optimizer steps
(the last one takes the batches left over). A run takes ``epochs`` epochs of them, or, with
``max_steps``, exactly that many steps over as many epochs as they need. The schedule
(``transformers.get_scheduler``: ``linear``, ``cosine`` or ``constant_with_warmup``) warms up
over ``warmup_ratio`` of the run's steps and is sized by its total.

**Resuming with another length** (more ``epochs``, another ``max_steps``): the schedule is
rebuilt over the new total and continues from the step the checkpoint reached
(:func:`continue_schedule`), so the learning rate follows the new run's curve from there (a
linear decay that had reached 0 picks up where the longer curve stands at that step) and reaches
its end with the new last step. :func:`resumed_schedule_note` says so in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import get_scheduler

SCHEDULERS = ("linear", "cosine", "constant_with_warmup")


@dataclass(frozen=True)
class StepPlan:
    """The run's shape: ``batches`` per epoch, ``accumulation`` batches per optimizer step,
    ``total_steps`` optimizer steps over ``epochs`` epochs (the last may end early)."""

    batches: int
    accumulation: int
    total_steps: int
    epochs: int

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.batches // self.accumulation)


def plan_steps(batches: int, epochs: int, accumulation: int, max_steps: int | None) -> StepPlan:
    """The :class:`StepPlan` of ``epochs`` epochs of ``batches`` batches, or of ``max_steps`` steps.

    Raises:
        ValueError: no batches to train on.
    """
    if batches < 1:
        raise ValueError("the training split gives no batches: add training examples")
    per_epoch = -(-batches // accumulation)
    if max_steps is None:
        return StepPlan(batches, accumulation, per_epoch * epochs, epochs)
    return StepPlan(batches, accumulation, max_steps, -(-max_steps // per_epoch))


def make_scheduler(name: str, optimizer: Any, warmup_ratio: float, total_steps: int) -> Any:
    """The ``name`` schedule over ``total_steps`` steps, warming up over ``warmup_ratio`` of them."""
    return get_scheduler(name, optimizer, num_warmup_steps=round(warmup_ratio * total_steps), num_training_steps=total_steps)


def resumed_schedule_note(name: str, saved_total: int, plan: StepPlan, step: int) -> str | None:
    """One line for a run resumed with another total of steps than its checkpoint's; None if the same."""
    if not saved_total or saved_total == plan.total_steps:
        return None
    if step >= plan.total_steps:  # fewer epochs (or --max-steps) than the checkpoint already ran
        return (
            f"the checkpoint is at optimizer step {step}, past the {plan.total_steps} steps of this run: nothing is "
            "left to train, the run ends with its best adapter as it is; raise --epochs (or --max-steps) to go on"
        )
    return (
        f"resuming a run of {saved_total} optimizer steps as one of {plan.total_steps}: the {name} learning-rate "
        f"schedule is rebuilt over {plan.total_steps} steps and continues from step {step}"
    )


def continue_schedule(scheduler: Any) -> None:
    """Set the optimizer's learning rates to ``scheduler``'s value at its current step.

    A scheduler restored from a checkpoint keeps the rates the checkpoint's schedule had set; one
    rebuilt over another total must set its own before the next step uses them. ``scheduler``
    is a ``torch.optim.lr_scheduler.LRScheduler`` or accelerate's wrapper of one.
    """
    inner = getattr(scheduler, "scheduler", scheduler)
    inner.last_epoch -= 1
    inner.step()  # recomputes every group's rate at last_epoch, as the step that reached it did
