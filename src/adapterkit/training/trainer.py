"""``Trainer``: train one adapter on one task with early stopping, checkpoints and a result.

Built on ``accelerate.Accelerator`` so the same code runs on one CPU, one GPU, or several
processes under ``torchrun``: the accelerator (``adapterkit.distributed.make_accelerator``) moves
the model, wraps it in DDP when there are several processes (only parameters that require grad
are synchronised, i.e. the adapter), splits each batch into one equal slice per process (so N
processes take the steps one process takes), and ``is_main_process`` guards every file write.

One epoch = a pass over the (shuffled) training split, then, every ``eval_every`` epochs,
validation. An improvement of the main validation metric (accuracy, Pearson for regression,
masked-token accuracy for a masked-LM task: its batches masked as BERT's, ``data/masking.py``) saves the adapter to ``output_dir/best``; ``patience`` validations in a row without
one end the run. After every epoch the full state goes to ``output_dir/checkpoint`` (see
``checkpoint.py``), so ``resume=True`` continues after the last completed epoch and ends with
the same weights as a run that was never interrupted. At the end the best adapter is loaded
back into the model (left in eval mode; a reparameterised prefix folded into plain prefixes, and
``best/`` rewritten in that small form), evaluated on the test split, and the
:class:`TrainingResult` is written to ``output_dir/results.json``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

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
from ..inference.metrics import MAIN_METRIC, compute_metrics, improves
from ..inference.perplexity import loader_perplexity
from ..inference.predict import head_config, predict_loader
from .batchnorm import recompute_batchnorm_statistics, trained_batchnorms
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
from .config import TrainingConfig
from .memory import PeakMemory
from .result import TrainingResult, majority_accuracy

if TYPE_CHECKING:
    from ..model import AdapterModel

#: Config fields whose change between an interrupted run and its resumption changes the result.
_RESULT_FIELDS = ("epochs", "batch_size", "learning_rate", "weight_decay", "warmup_ratio", "max_length", "seed", "max_grad_norm")


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
        self._check_head()
        # tokens per input as trained (saved with the adapter): the setup's prompts take positions too
        self.max_length = model.token_budget(self.setup, self.config.max_length)
        self.accelerator = accelerator
        self.on_epoch_end = on_epoch_end
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
        total_steps = len(train_loader) * cfg.epochs
        optimizer = torch.optim.AdamW(self._param_groups(), lr=self.learning_rate)
        scheduler = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total_steps), total_steps)
        wrapped, optimizer, train_loader, val_loader, test_loader, scheduler = acc.prepare(
            model, optimizer, train_loader, val_loader, test_loader, scheduler
        )
        trainable = [p for p in model.parameters() if p.requires_grad]

        checkpoint_dir, best_dir = output / CHECKPOINT_DIR, output / BEST_DIR
        progress = Progress()
        if cfg.resume and (checkpoint_dir / STATE_FILE).is_file():
            progress, saved = load_checkpoint(checkpoint_dir, model, self.adapter, optimizer, scheduler)
            self._warn_changes(saved)
            self._log(f"resuming {checkpoint_dir} after epoch {progress.epoch} of {cfg.epochs}")
        elif cfg.resume:
            self._log(f"no checkpoint in {checkpoint_dir}; training from the start")

        main = MAIN_METRIC[task.kind]
        with PeakMemory(acc.device) as peak:
            for epoch in range(progress.epoch, cfg.epochs):
                if progress.stopped_early:
                    break
                started = time.perf_counter()
                record: dict[str, Any] = {"epoch": epoch + 1}
                record["train_loss"] = self._train_epoch(acc, wrapped, train_loader, optimizer, scheduler, trainable, epoch, progress)
                record["learning_rate"] = scheduler.get_last_lr()[0]
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    recompute_batchnorm_statistics(model, statistics_loader, self.setup)  # saved with the adapter
                    metrics = self._evaluate(acc, val_loader)
                    record["validation"] = metrics
                    if improves(main, metrics[main], progress.best_metric):
                        progress.best_metric, progress.best_epoch, progress.bad_evaluations = metrics[main], epoch + 1, 0
                        record["best"] = True
                        if self._main:
                            model.save_adapter(self.adapter, best_dir, extra=self._saved_extra(epoch + 1, metrics))
                    else:
                        progress.bad_evaluations += 1
                        out_of_patience = cfg.patience is not None and progress.bad_evaluations >= cfg.patience
                        progress.stopped_early = out_of_patience and epoch + 1 < cfg.epochs
                progress.epoch = epoch + 1
                progress.train_time_s += time.perf_counter() - started
                progress.peak_memory_bytes = max(progress.peak_memory_bytes, peak.so_far())
                progress.history.append(record)
                if keep and self._main:
                    save_checkpoint(checkpoint_dir, model, self.adapter, optimizer, scheduler, progress, cfg.to_dict())
                acc.wait_for_everyone()
                self._log_epoch(record, time.perf_counter() - started)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(dict(record))
            if progress.stopped_early:
                self._log(f"stopped early: no {main} improvement for {progress.bad_evaluations} validation(s)")
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
                extra = self._saved_extra(progress.best_epoch, _best_validation(progress))
                model.save_adapter(self.adapter, best_dir, extra=extra)

    def _train_epoch(self, acc, wrapped, loader, optimizer, scheduler, trainable, epoch: int, progress: Progress) -> float:
        cfg = self.config
        wrapped.train()
        loader.set_epoch(epoch)  # the shuffle order of this epoch (and of every process)
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and self._main),
            leave=False,
            dynamic_ncols=True,
        )
        total, count = 0.0, 0
        for batch in bar:
            loss = wrapped(**batch, adapters=self.setup).loss
            acc.backward(loss)
            if cfg.max_grad_norm is not None:
                acc.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            progress.global_step += 1
            total += loss.item()
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        mean = torch.tensor(total / count if count else math.nan, device=acc.device)
        return float(acc.reduce(mean, "mean").item())

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

    def _check_head(self) -> None:
        head, task = head_config(self.model, self.setup), self.task
        if (head.kind == "causal_lm") != (task.kind in GENERATION_KINDS):
            raise ValueError(
                f"adapter {self.adapter!r} has a {head.kind} head, but task {task.name!r} is {task.kind}; "
                + ("causal-LM tasks train an adapter with a causal_lm head (add_task_adapter gives it one)"
                   if task.kind in GENERATION_KINDS else "a causal_lm head trains on translation or language-modelling tasks")
            )
        if head.kind == "causal_lm":
            return
        if head.kind != task.kind:
            raise ValueError(f"adapter {self.adapter!r} has a {head.kind} head, but task {task.name!r} is {task.kind}")
        if head.outputs != task.num_labels:
            raise ValueError(
                f"adapter {self.adapter!r} has a head with {head.outputs} outputs, but task {task.name!r} has "
                f"{task.num_labels} labels; add the adapter with head=task_head(task) (or add_task_adapter)"
            )
        if head.label_names and tuple(head.label_names) != tuple(task.label_names):
            raise ValueError(
                f"adapter {self.adapter!r} predicts labels {list(head.label_names)}, but task {task.name!r} has "
                f"{list(task.label_names)} (names and order must match)"
            )

    def _saved_extra(self, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
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
            epochs_run=progress.epoch,
            best_epoch=progress.best_epoch,
            stopped_early=progress.stopped_early,
            learning_rate=self.learning_rate,
            output_dir=str(output) if output is not None else None,
            history=progress.history,
            config=self.config.to_dict(),
            method_config=self.model.adapters[self.adapter].config.to_dict(),
        )

    def _warn_changes(self, saved: dict[str, Any]) -> None:
        current = self.config.to_dict()
        changed = [f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in _RESULT_FIELDS if saved.get(k) != current[k]]
        if changed:
            warnings.warn(
                "resuming with settings that differ from the interrupted run (" + "; ".join(changed) + "); "
                "the result will differ from an uninterrupted run",
                stacklevel=3,
            )

    def _log(self, message: str) -> None:
        if self.config.progress and self._main:
            print(message, file=sys.stderr, flush=True)

    def _log_epoch(self, record: dict[str, Any], seconds: float) -> None:
        parts = [f"epoch {record['epoch']}/{self.config.epochs}", f"train loss {record['train_loss']:.4f}"]
        if "validation" in record:
            metrics = " ".join(f"{k} {v:.4f}" for k, v in record["validation"].items())
            parts.append(f"validation {metrics}" + (" (best)" if record.get("best") else ""))
        parts.append(f"{seconds:.1f} s")
        self._log(", ".join(parts))


def check_modality(model: AdapterModel, task: TaskData) -> None:
    """Refuse a task the model cannot read: images need a CNN with its preprocessor, texts a tokenizer."""
    if task.modality == "image" and model.processor is None:
        raise ValueError(
            f"task {task.name!r} is images, but this {model.parts.model_type!r} model reads text; "
            "train it on an image model (e.g. --model efficientnet-lite0)"
        )
    if task.modality == "text" and model.processor is not None:
        raise ValueError(
            f"task {task.name!r} is text, but this {model.parts.model_type!r} model reads images; "
            "train it on a text model (e.g. --model minilm), or give this one an image task"
        )
    if task.modality == "text" and model.tokenizer is None:
        raise ValueError(
            "the model has no tokenizer; load it with AdapterModel.from_pretrained or pass tokenizer= to AdapterModel"
        )


def _best_validation(progress: Progress) -> dict[str, float]:
    """The validation metrics of the best epoch ({} before any validation)."""
    return next((r["validation"] for r in progress.history if r["epoch"] == progress.best_epoch), {})
