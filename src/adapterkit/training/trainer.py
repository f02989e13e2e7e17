"""``Trainer``: train one adapter on one task with early stopping, checkpoints and a result.

Built on ``accelerate.Accelerator`` so the same code runs on one CPU, one GPU, or several
processes under ``torchrun``: the accelerator (``adapterkit.distributed.make_accelerator``) moves
the model, wraps it in DDP when there are several processes (only parameters that require grad
are synchronised, i.e. the adapter), splits each batch into one equal slice per process (so N
processes take the steps one process takes), and ``is_main_process`` guards every file write.

The trainer builds the loaders, the optimizer and the learning-rate schedule
(``schedule.py``: sized by ``epochs`` or ``max_steps`` and the gradient accumulation), resumes
from ``output_dir/checkpoint`` when asked (``checkpoint.py``), and hands them to the loop
(``loop.py``): optimizer steps, validation every ``eval_every`` epochs or ``eval_steps`` steps,
the best adapter (by the selection ``metric``: accuracy, Pearson for regression, masked-token
accuracy for a masked-LM task, perplexity for causal-LM tasks, unless another is named) saved to
``output_dir/best``, ``patience``, checkpoints (after every epoch, every ``save_steps`` steps, on
Ctrl-C: ``interrupt.py``), and the per-step log ``output_dir/log.jsonl`` (``step_log.py``). A
resumed run ends with the same weights as a run that was never interrupted, from an epoch
boundary or mid-epoch. At the end the best adapter is loaded back into the model (left in eval
mode; a reparameterised prefix folded into plain prefixes, and ``best/`` rewritten in that small
form), evaluated on the test split, and the :class:`TrainingResult` is written to
``output_dir/results.json`` (a fresh run, not resumed, first removes an earlier run's, so that an
unfinished run never shows another's result).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..composition import Setup
from ..data.batching import Collator, encode_examples, make_loader
from ..data.causal_lm import CausalLMCollator, encode_for
from ..data.image_tasks import AUGMENTATION, DEFAULT_AUGMENT
from ..data.images import make_image_loader
from ..data.masking import MaskedLMCollator
from ..data.task import GENERATION_KINDS, MASKED_LM, TaskData
from ..distributed import make_accelerator
from ..errors import ParameterError
from ..formats.native import CONFIG_FILE, read_adapter_config
from ..inference.masked_lm import masked_lm_metrics
from ..inference.metrics import MAIN_METRIC, check_metric, compute_metrics
from ..inference.perplexity import loader_perplexity
from ..inference.predict import predict_loader
from .batchnorm import recompute_batchnorm_statistics, trained_batchnorms
from .checks import check_head, check_modality
from .checkpoint import (
    BEST_DIR,
    CHECKPOINT_DIR,
    RESULTS_FILE,
    STATE_FILE,
    Progress,
    json_form,
    load_checkpoint,
    restore_adapter_weights,
    save_checkpoint,
)
from .class_weights import task_class_weights
from .config import TrainingConfig
from .interrupt import StopRequest, TrainingInterrupted, interrupted_without_checkpoint, position
from .loop import LoopHooks, LoopParts, StepLoop
from .memory import PeakMemory
from .result import TrainingResult, majority_accuracy
from .schedule import StepPlan, continue_schedule, make_scheduler, plan_steps, resumed_schedule_note
from .step_log import LOG_FILE, StepLog

if TYPE_CHECKING:
    from ..model import AdapterModel

#: Config fields whose change between an interrupted run and its resumption changes the result
#: (a change of length, ``epochs`` or ``max_steps``, is told by ``schedule.resumed_schedule_note``).
_RESULT_FIELDS = ("batch_size", "learning_rate", "weight_decay", "warmup_ratio", "max_length", "seed", "max_grad_norm",
                  "gradient_accumulation_steps", "lr_scheduler", "class_weights", "metric")


class Trainer:
    """Train adapter ``adapter`` of ``model`` on ``task``.

    Args:
        model: an :class:`~adapterkit.AdapterModel` with a tokenizer, holding the adapter (with a
            head matching the task; :func:`~adapterkit.training.add_task_adapter` adds both).
        adapter: the adapter to train; only its parameters (and its head) are optimised.
        task: train/validation/test splits.
        config: a :class:`TrainingConfig` (defaults if None).
        setup: the composition used in forward passes (default: the adapter alone), e.g.
            ``Stack("lang", adapter)`` to train a task adapter on top of a frozen one.
        accelerator: an ``accelerate.Accelerator`` to use instead of a new one.
        on_epoch_end: called with each epoch's record (after its checkpoint is written).
        on_step_end: called with each optimizer step's record (as in ``log.jsonl``, after any
            checkpoint of that step is written).

    Raises:
        ValueError: an adapter, head, task or config that do not fit together (an unknown
            selection metric for the task's kind, class weights on a task that is not
            classification or of another number of labels).
        TrainingInterrupted: (from :meth:`train`) Ctrl-C stopped the run; it names the checkpoint.

    Inputs are truncated to ``config.max_length`` tokens, or to fewer when the model's positions
    less the setup's prompt positions leave fewer (``AdapterModel.token_budget``, which warns when
    it reduces the length); the length used is saved with the adapter for ``eval`` and ``predict``.
    """

    def __init__(
        self,
        model: AdapterModel,
        adapter: str,
        task: TaskData,
        config: TrainingConfig | None = None,
        *,
        setup: str | Setup | None = None,
        accelerator: Accelerator | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        on_step_end: Callable[[dict[str, Any]], None] | None = None,
    ):
        if adapter not in model.adapters:
            known = ", ".join(model.adapters) or "none"
            raise ValueError(f"no adapter named {adapter!r} on this model (adapters: {known})")
        check_modality(model, task)
        for split in ("train", "validation", "test"):
            if not getattr(task, split):
                raise ParameterError(
                    f"task {{task!r}} has no {{split}} examples; give it some ({{{split}_file:=}}, or a train file "
                    "large enough to split them off)", task=task.name, split=split
                )
        self.model = model
        self.adapter = adapter
        self.task = task
        self.config = config or TrainingConfig()
        self.setup = setup if setup is not None else adapter
        check_head(model, adapter, self.setup, task)
        self.metric = check_metric(self.config.metric or MAIN_METRIC[task.kind], task.kind)
        self.class_weights = task_class_weights(self.config.class_weights, task)
        # tokens per input as trained (saved with the adapter): the setup's prompts take positions too
        self.max_length = model.token_budget(self.setup, self.config.max_length)
        self.accelerator = accelerator
        self.on_epoch_end = on_epoch_end
        self.on_step_end = on_step_end
        self.method = model.adapters[adapter].config.method
        self.learning_rate = self.config.learning_rate_for(self.method)

    # ----------------------------------------------------------------- public
    def train(self) -> TrainingResult:
        """Train (or resume), restore the best adapter into the model, test it, return the result."""
        with contextlib.ExitStack() as stack:
            if self.config.output_path is not None:
                output = self.config.output_path
            else:
                output = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="adapterkit-train-")))
            return self._run(output)

    # ----------------------------------------------------------------- the run
    def _run(self, output: Path) -> TrainingResult:
        cfg, task, model = self.config, self.task, self.model
        # split batches, DDP with unused parameters (AdapterDrop), gloo on CPU: see distributed.py
        acc = self.accelerator or make_accelerator(cfg)
        if cfg.output_dir is None and acc.num_processes > 1:
            raise ValueError("distributed training needs output_dir: every process must read the best adapter back")
        self._main = acc.is_main_process
        keep = cfg.output_dir is not None

        set_seed(cfg.seed)
        model.train_adapter(self.adapter)
        model.train()
        loader = self._loader_maker()

        train_loader = loader(task.train, cfg.batch_size, cfg.seed)
        eval_batch = -(-cfg.eval_batch_size // acc.num_processes) * acc.num_processes  # splits evenly
        val_loader = loader(task.validation, eval_batch)
        test_loader = loader(task.test, eval_batch)
        # BatchNorms that train get precise statistics before each evaluation (training/batchnorm.py)
        statistics_loader = loader(task.train, eval_batch) if trained_batchnorms(model) else ()  # unshuffled, not augmented
        # With split batches the prepared loader has as many steps as this one, and accelerate
        # steps the scheduler once per optimizer step.
        plan = plan_steps(len(train_loader), cfg.epochs, cfg.gradient_accumulation_steps, cfg.max_steps)
        self._epochs = plan.epochs
        optimizer = torch.optim.AdamW(self._param_groups(), lr=self.learning_rate)
        scheduler = make_scheduler(cfg.lr_scheduler, optimizer, cfg.warmup_ratio, plan.total_steps)
        wrapped, optimizer, train_loader, val_loader, test_loader, scheduler = acc.prepare(
            model, optimizer, train_loader, val_loader, test_loader, scheduler
        )
        trainable = [p for p in model.parameters() if p.requires_grad]

        checkpoint_dir, best_dir = output / CHECKPOINT_DIR, output / BEST_DIR
        progress, restore_rng = self._resume(checkpoint_dir, optimizer, scheduler, plan)
        if keep and self._main and restore_rng is None:  # a fresh run: an earlier run's result is not this one's
            (output / RESULTS_FILE).unlink(missing_ok=True)
        step_log = None
        if keep and self._main:  # a resumed run keeps the log up to its checkpoint's step
            step_log = StepLog(output / LOG_FILE, cfg.tensorboard_dir, progress.global_step if restore_rng else None)

        def validate() -> dict[str, float]:
            recompute_batchnorm_statistics(model, statistics_loader, self.setup)  # saved with the adapter
            return self._evaluate(acc, val_loader)

        def save_best(epoch: int, step: int, metrics: dict[str, float]) -> None:
            if self._main:
                model.save_adapter(self.adapter, best_dir, extra=self._saved_extra(epoch, metrics, step))

        def checkpoint() -> Path | None:
            if keep and self._main:
                save_checkpoint(checkpoint_dir, model, self.adapter, optimizer, scheduler, progress, cfg.to_dict())
            return checkpoint_dir if keep else None

        parts = LoopParts(
            cfg, plan, acc, wrapped, optimizer, scheduler, train_loader, trainable, self.setup, self.class_weights, self.metric
        )
        with PeakMemory(acc.device) as peak, StopRequest(keep and acc.num_processes == 1) as stop:
            hooks = LoopHooks(
                validate, save_best, checkpoint, self._log, self._log_epoch, peak.so_far, restore_rng, step_log, stop,
                self.on_epoch_end, self.on_step_end,
            )
            try:
                StepLoop(parts, hooks, progress).run()
            except TrainingInterrupted:
                raise
            except KeyboardInterrupt:
                raise interrupted_without_checkpoint(checkpoint_dir if keep else None) from None
            finally:
                if step_log is not None:
                    step_log.close()
        progress.peak_memory_bytes = max(progress.peak_memory_bytes, peak.bytes)

        acc.wait_for_everyone()
        trained = model.count_parameters(self.adapter)[0]  # in the training form, before any folding
        if (best_dir / CONFIG_FILE).is_file():
            self._restore_best(acc, best_dir, progress)
        test_metrics = self._evaluate(acc, test_loader)
        model.eval()  # hand the model back ready for inference (no dropout)
        result = self._result(progress, test_metrics, acc, output if keep else None, trained)
        if keep and self._main:
            result.save(output / RESULTS_FILE)
        acc.wait_for_everyone()
        return result

    def _resume(self, checkpoint_dir: Path, optimizer, scheduler, plan: StepPlan) -> tuple[Progress, Callable[[], None] | None]:
        """(progress, restore_rng): a fresh start, or the checkpoint's state when resuming."""
        cfg = self.config
        if cfg.resume and (checkpoint_dir / STATE_FILE).is_file():
            progress, saved, restore_rng = load_checkpoint(checkpoint_dir, self.model, self.adapter, optimizer, scheduler)
            self._warn_changes(saved)
            if progress.batches_in_epoch and progress.history and progress.history[-1]["epoch"] == progress.epoch + 1:
                progress.history.pop()  # a run that ended mid-epoch (max_steps) recorded it; the epoch goes on
            note = resumed_schedule_note(cfg.lr_scheduler, progress.planned_steps, plan, progress.global_step)
            if note is not None:
                continue_schedule(scheduler)
                self._warn(note)
            where = position(progress.epoch, progress.batches_in_epoch, progress.global_step, plan.batches)
            self._log(f"resuming {checkpoint_dir} at {where} of {plan.total_steps} steps")
            return progress, restore_rng
        if cfg.resume:
            self._warn(f"resume: no checkpoint in {checkpoint_dir}; training from the start")  # even quiet: a mistyped folder?
        return Progress(), None

    def _restore_best(self, acc, best_dir: Path, progress: Progress) -> None:
        """Load the best weights back into the model, folded into their inference form.

        An adapter with a training-only reparameterisation (a prefix computed by an MLP, or a
        union holding one, such as MAM) is folded once training is over: the same outputs from
        far fewer parameters (on minilm a prefix of length 30 keeps 138K of the MLP form's 2.57M),
        and ``best/`` is rewritten in that form, which is what ``eval``, ``predict`` and serving
        load. The checkpoint keeps the training form, which resuming needs. A run resumed after it
        had finished finds ``best/`` already folded, so it folds the live adapter first.
        """
        model = self.model
        saved = json_form(read_adapter_config(best_dir)["config"])
        if saved != json_form(model.adapters[self.adapter].config.to_dict()):
            model.fold_adapter(self.adapter)
        restore_adapter_weights(model, self.adapter, best_dir)
        if model.fold_adapter(self.adapter):  # the same answer on every process
            acc.wait_for_everyone()  # every process has read best/ before it is rewritten
            if self._main:
                extra = self._saved_extra(progress.best_epoch, _best_validation(progress), progress.best_step)
                model.save_adapter(self.adapter, best_dir, extra=extra)

    def _loader_maker(self):
        """``loader(examples, batch_size, shuffle_seed=None)`` for the task's modality: token ids
        padded per batch, or preprocessed images (augmented when shuffled, as the task allows)."""
        model, task = self.model, self.task
        if task.modality == "image":
            augment = AUGMENTATION.get(task.name, DEFAULT_AUGMENT) if self.config.augment else None
            return lambda examples, batch_size, shuffle_seed=None: make_image_loader(
                examples, model.processor, batch_size, shuffle_seed, augment
            )
        if task.kind in GENERATION_KINDS:  # prompt/text ids with labels per token (data/causal_lm.py)
            collator = CausalLMCollator(model.tokenizer)
            encode = lambda examples: encode_for(task.kind, model.tokenizer, examples, task.label_names, self.max_length, task.prompt_format)  # noqa: E731
        else:
            collator = Collator(model.tokenizer, task.kind)
            encode = lambda examples: encode_examples(model.tokenizer, examples, self.max_length)  # noqa: E731

        def loader(examples, batch_size, shuffle_seed=None):
            encoded = encode(examples)
            if task.kind == MASKED_LM:  # BERT's masking, seeded; new masks each epoch in training (data/masking.py)
                return make_loader(encoded, MaskedLMCollator(model.tokenizer, self.config.seed, dynamic=shuffle_seed is not None), batch_size, shuffle_seed)
            return make_loader(encoded, collator, batch_size, shuffle_seed)

        return loader

    def _evaluate(self, acc, loader) -> dict[str, float]:
        if self.task.kind in GENERATION_KINDS:  # teacher-forced: cheap enough for every epoch
            return loader_perplexity(self.model, loader, self.setup, acc)
        if self.task.kind == MASKED_LM:
            return masked_lm_metrics(self.model, loader, self.setup, acc)
        predictions, labels = predict_loader(self.model, loader, self.setup, self.task.kind, acc)
        return compute_metrics(self.task.kind, predictions, labels)

    # ----------------------------------------------------------------- helpers
    def _param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: weight decay on matrices, none on biases and norm gains (1-d)."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(f"adapter {self.adapter!r} has no trainable parameters")
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def _saved_extra(self, epoch: int, metrics: dict[str, float], step: int | None) -> dict[str, Any]:
        """Stored in the best adapter's config, so ``eval``/``predict`` know how it was trained."""
        task = self.task
        image = {"image_size": self.model.processor.size} if task.modality == "image" else {}
        return {
            "task": {
                "name": task.name,
                "kind": task.kind,
                "modality": task.modality,
                "text_columns": list(task.text_columns),
                "label_names": list(task.label_names),
                **({"prompt_format": task.prompt_format} if task.prompt_format else {}),  # generate writes prompts alike
            },
            "training": {
                "epoch": epoch,
                "step": step,
                "validation": metrics,
                "max_length": self.max_length,
                "learning_rate": self.learning_rate,
                "seed": self.config.seed,
                **image,
            },
        }

    def _result(
        self, progress: Progress, test_metrics: dict[str, float], acc, output: Path | None, trained: int
    ) -> TrainingResult:
        saved, base = self.model.count_parameters(self.adapter)
        return TrainingResult(
            adapter=self.adapter,
            method=self.method,
            model=getattr(self.model, "name_or_path", None),
            task=self.task.name,
            kind=self.task.kind,
            test_metrics=test_metrics,
            validation_metrics=_best_validation(progress),
            trainable_params=trained,
            saved_params=saved,
            majority_accuracy=majority_accuracy(self.task),
            base_params=base,
            train_time_s=progress.train_time_s,
            peak_memory_bytes=progress.peak_memory_bytes,
            memory_measure=PeakMemory(acc.device).measure,
            epochs_run=progress.epoch + (1 if progress.batches_in_epoch else 0),
            best_epoch=progress.best_epoch,
            stopped_early=progress.stopped_early,
            learning_rate=self.learning_rate,
            output_dir=str(output) if output is not None else None,
            history=progress.history,
            config=self.config.to_dict(),
            method_config=self.model.adapters[self.adapter].config.to_dict(),
        )

    def _warn_changes(self, saved: dict[str, Any]) -> None:
        current = json_form(self.config.to_dict())
        saved = {**json_form(TrainingConfig().to_dict()), **saved}  # checkpoints from before a field existed
        changed = [f"{k}: {saved[k]!r} -> {current[k]!r}" for k in _RESULT_FIELDS if saved[k] != current[k]]
        if changed:
            self._warn(
                "resuming with settings that differ from the interrupted run (" + "; ".join(changed) + "); "
                "the result will differ from an uninterrupted run"
            )

    def _warn(self, message: str) -> None:
        """One line on stderr (main process), even without progress output."""
        if self._main:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def _log(self, message: str) -> None:
        if self.config.progress and self._main:
            print(message, file=sys.stderr, flush=True)

    def _log_epoch(self, record: dict[str, Any], seconds: float) -> None:
        parts = [f"epoch {record['epoch']}/{self._epochs}", f"train loss {record['train_loss']:.4f}"]
        if "validation" in record:
            metrics = " ".join(f"{k} {v:.4f}" for k, v in record["validation"].items())
            parts.append(f"validation {metrics}" + (" (best)" if record.get("best") else ""))
        parts.append(f"{seconds:.1f} s")
        self._log(", ".join(parts))


def _best_validation(progress: Progress) -> dict[str, float]:
    """The validation metrics of the best validation ({} before any); checkpoints written before
    ``best_validation`` was kept have them in the best epoch's history record."""
    return progress.best_validation or next((r["validation"] for r in progress.history if r["epoch"] == progress.best_epoch), {})
