"""Step-level training control: max_steps, eval/save every N steps, mid-epoch resume, gradient
accumulation, learning-rate schedules, the selection metric, class weights, the step log and
TensorBoard, Ctrl-C. Tiny random BERT and the toy task of ``test_training``."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import adapter_tensors, fresh, model_dir, one_thread, quick, toy_task  # noqa: F401 (fixtures)
from transformers import BertConfig, BertModel

from adapterkit import AdapterModel
from adapterkit.data import Example, TaskData
from adapterkit.inference.metrics import check_metric, class_report, format_class_report, improves
from adapterkit.training import Trainer, TrainingConfig, add_task_adapter
from adapterkit.training.class_weights import class_weight_vector, reweighted_loss
from adapterkit.training.interrupt import TrainingInterrupted
from adapterkit.training.schedule import plan_steps
from adapterkit.training.step_log import read_log


def log_of(folder: Path) -> list[dict]:
    return read_log(folder / "log.jsonl")


def same_adapters(a: Path, b: Path) -> None:
    expected, got = adapter_tensors(a), adapter_tensors(b)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), (a, key)


# ---------------------------------------------------------------- the plan and the config
def test_the_plan_counts_optimizer_steps_of_accumulated_batches():
    plan = plan_steps(10, epochs=3, accumulation=4, max_steps=None)
    assert (plan.steps_per_epoch, plan.total_steps, plan.epochs) == (3, 9, 3)  # 4 + 4 + 2 batches per epoch
    plan = plan_steps(10, epochs=3, accumulation=1, max_steps=25)
    assert (plan.total_steps, plan.epochs) == (25, 3)  # max_steps decides; the third epoch ends early
    with pytest.raises(ValueError, match="no batches"):
        plan_steps(0, 1, 1, None)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"max_steps": 0}, "max_steps"),
        ({"eval_steps": -1}, "eval_steps"),
        ({"save_steps": 1.5}, "save_steps"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"lr_scheduler": "step"}, "lr_scheduler must be one of linear, cosine, constant_with_warmup"),
        ({"class_weights": "auto"}, "'balanced' or a list"),
        ({"class_weights": (1.0, -1.0)}, ">= 0"),
    ],
)
def test_config_rejects_bad_step_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**bad)


# ---------------------------------------------------------------- max_steps, eval_steps, the step log
def test_max_steps_stops_mid_epoch_validates_there_and_logs_every_step(model_dir, tmp_path):
    task = toy_task(64, 16)  # 8 batches of 8 per epoch
    result = Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=50, max_steps=11, eval_steps=4)).train()
    log = log_of(tmp_path)
    assert [r["step"] for r in log] == list(range(1, 12))
    assert [r["epoch"] for r in log] == [1] * 8 + [2] * 3
    assert all(set(r) >= {"step", "epoch", "loss", "learning_rate"} and math.isfinite(r["loss"]) for r in log)
    assert [r["step"] for r in log if "validation" in r] == [4, 8, 11]  # every 4 steps, and the last
    assert result.epochs_run == 2 and [r["epoch"] for r in result.history] == [1, 2]
    assert log[-1]["learning_rate"] > 0 and result.history[-1]["learning_rate"] == 0.0  # linear decay over 11 steps
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["progress"]
    assert (state["global_step"], state["epoch"], state["batches_in_epoch"]) == (11, 1, 3)
    best = json.loads((tmp_path / "best" / "adapter_config.json").read_text())["training"]
    assert best["step"] in (4, 8, 11) and best["epoch"] == (1 if best["step"] <= 8 else 2)
    assert result.validation_metrics == next(r["validation"] for r in log if r["step"] == best["step"])


def test_patience_counts_step_validations_and_stops_mid_epoch(model_dir, tmp_path):
    task = toy_task(64, 16)  # 8 steps per epoch; a rate too small to change any prediction
    result = Trainer(fresh(model_dir, task=task), "toy", task,
                     quick(tmp_path, epochs=3, learning_rate=1e-12, eval_steps=2, patience=2)).train()
    assert result.stopped_early and result.best_epoch == 1 and result.epochs_run == 1
    log = log_of(tmp_path)
    assert [r["step"] for r in log if "validation" in r] == [2, 4, 6] and log[-1]["step"] == 6
    assert [r.get("best", False) for r in log if "validation" in r] == [True, False, False]
    assert len(result.history) == 1 and result.history[0]["validation"] == log[-1]["validation"]  # the run ended at step 6


def test_a_run_ended_by_max_steps_resumes_with_more_steps_and_one_record_per_epoch(model_dir, tmp_path):
    task = toy_task(64, 16)  # 8 steps per epoch
    Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, max_steps=5)).train()
    again = Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, max_steps=12, resume=True)).train()
    assert [r["epoch"] for r in again.history] == [1, 2] and again.epochs_run == 2
    assert [r["step"] for r in log_of(tmp_path)] == list(range(1, 13))


def test_tensorboard_event_files_hold_the_logged_scalars(model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    task = toy_task(32, 16)  # 4 steps per epoch
    Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=2, tensorboard_dir=str(tmp_path / "tb"))).train()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, 9))
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in log_of(tmp_path)])
    assert [e.step for e in events.Scalars("validation/accuracy")] == [4, 8]


# ---------------------------------------------------------------- mid-epoch resume
class Crash(Exception):
    pass


def crash_at(step: int):
    def hook(record):
        if record["step"] == step:
            raise Crash(step)

    return hook


def test_a_run_resumed_mid_epoch_equals_an_uninterrupted_one(model_dir, tmp_path):
    task = toy_task(48, 16)  # 6 batches per epoch, 12 steps; dropout is on: the generators matter
    settings = dict(epochs=2, learning_rate=3e-3, warmup_ratio=0.25, save_steps=4, eval_steps=5)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = Trainer(fresh(model_dir, task=task), "toy", task, quick(straight, **settings)).train()

    with pytest.raises(Crash):  # after step 9; the last checkpoint is step 8, in epoch 2
        Trainer(fresh(model_dir, task=task), "toy", task, quick(resumed, **settings), on_step_end=crash_at(9)).train()
    state = json.loads((resumed / "checkpoint" / "trainer_state.json").read_text())["progress"]
    assert (state["global_step"], state["epoch"], state["batches_in_epoch"]) == (8, 1, 2)
    assert len(log_of(resumed)) == 9

    model = AdapterModel.from_pretrained(str(model_dir))  # another initialisation: resume overwrites it
    add_task_adapter(model, "toy", "houlsby", task, {"bottleneck_size": 8}, seed=99)
    again = Trainer(model, "toy", task, quick(resumed, resume=True, **settings)).train()

    for folder in ("checkpoint/adapter", "best"):
        same_adapters(straight / folder, resumed / folder)
    assert again.history == result.history and again.test_metrics == result.test_metrics
    assert log_of(resumed) == log_of(straight)  # the lines past step 8 were dropped and written again


# ---------------------------------------------------------------- gradient accumulation
@pytest.fixture(scope="module")
def no_dropout_dir(tmp_path_factory) -> Path:
    from test_training import VOCAB, tiny_tokenizer

    directory = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=len(VOCAB),
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def test_two_accumulated_batches_of_4_give_the_gradient_of_one_batch_of_8(no_dropout_dir, tmp_path, monkeypatch):
    grads: list[list[torch.Tensor]] = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        grads.append([p.grad.clone() for group in self.param_groups for p in group["params"]])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    task = toy_task(16, 8)
    for batch, accumulate in ((8, 1), (4, 2)):
        settings = dict(max_steps=2, batch_size=batch, gradient_accumulation_steps=accumulate, max_grad_norm=None)
        Trainer(fresh(no_dropout_dir, task=task), "toy", task, quick(tmp_path / str(batch), **settings)).train()
    assert len(grads) == 4
    for one, accumulated in ((grads[0], grads[2]), (grads[1], grads[3])):
        for a, b in zip(one, accumulated):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_an_epochs_last_step_takes_the_batches_left_over(model_dir, tmp_path):
    task = toy_task(40, 16)  # 5 batches: steps of 2, 2 and 1
    Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=2, gradient_accumulation_steps=2)).train()
    assert [r["step"] for r in log_of(tmp_path)] == [1, 2, 3, 4, 5, 6]
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["progress"]
    assert state["global_step"] == 6 and state["planned_steps"] == 6


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize("name", ["linear", "cosine", "constant_with_warmup"])
def test_each_schedule_warms_up_then_follows_its_curve(model_dir, tmp_path, name):
    task = toy_task(64, 16)
    peak = 1e-2
    Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, max_steps=8, warmup_ratio=0.25, lr_scheduler=name)).train()
    rates = [r["learning_rate"] for r in log_of(tmp_path)]  # the rate each step used: schedule at 0..7
    decay = {
        "linear": lambda s: (8 - s) / 6,
        "cosine": lambda s: 0.5 * (1 + math.cos(math.pi * (s - 2) / 6)),
        "constant_with_warmup": lambda s: 1.0,
    }[name]
    assert rates == pytest.approx([peak * (s / 2 if s < 2 else decay(s)) for s in range(8)])


def test_resuming_with_more_epochs_rebuilds_the_schedule_and_says_so_in_one_line(model_dir, tmp_path, capsys):
    task = toy_task(32, 16)  # 4 steps per epoch
    Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=1)).train()
    capsys.readouterr()
    again = Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=2, resume=True)).train()
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "rebuilt" in line]
    assert notes == ["warning: resuming a run of 4 optimizer steps as one of 8: the linear learning-rate schedule is "
                     "rebuilt over 8 steps and continues from step 4"]
    assert "Traceback" not in err and "UserWarning" not in err
    rates = [r["learning_rate"] for r in log_of(tmp_path)]
    assert rates[4:] == pytest.approx([1e-2 * (8 - s) / 8 for s in range(4, 8)])  # the 8-step curve from step 4
    assert again.epochs_run == 2 and len(again.history) == 2


def test_resuming_with_fewer_epochs_than_run_says_nothing_is_left(model_dir, tmp_path, capsys):
    task = toy_task(32, 16)  # 4 steps per epoch
    first = Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=2)).train()
    capsys.readouterr()
    again = Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=1, resume=True)).train()
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "step 8" in line] == [
        "warning: the checkpoint is at optimizer step 8, past the 4 steps of this run: nothing is left to train, "
        "the run ends with its best adapter as it is; raise --epochs (or --max-steps) to go on"]
    assert again.test_metrics == first.test_metrics


# ---------------------------------------------------------------- the selection metric
def test_the_selection_metric_is_checked_against_the_tasks_metrics():
    assert check_metric("macro_f1", "classification") == "macro_f1"
    with pytest.raises(ValueError, match=r"unknown metric 'macro-f1' for classification tasks; did you mean macro_f1\?; "
                                         "choose from accuracy, macro_f1"):
        check_metric("macro-f1", "classification")
    with pytest.raises(ValueError, match="for regression tasks"):
        check_metric("accuracy", "regression")
    with pytest.raises(ValueError, match="choose from accuracy, macro_f1, pearson, mse"):
        check_metric("f1")
    assert improves("mse", 0.1, 0.2) and not improves("mse", 0.3, 0.2)


def test_trainer_refuses_a_metric_of_another_kind(model_dir):
    task = toy_task(8, 4)
    with pytest.raises(ValueError, match="unknown metric 'pearson' for classification"):
        Trainer(fresh(model_dir, task=task), "toy", task, quick(metric="pearson"))


def test_macro_f1_selects_the_best_epoch(model_dir, tmp_path):
    task = toy_task(64, 16)
    result = Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=4, metric="macro_f1")).train()
    scores = [r["validation"]["macro_f1"] for r in result.history]
    assert result.best_epoch == 1 + scores.index(max(scores))
    assert result.main_metric == "macro_f1" and result.validation_metrics["macro_f1"] == max(scores)


# ---------------------------------------------------------------- class weights
def test_balanced_class_weights_are_n_over_k_times_count():
    weights = class_weight_vector("balanced", [0, 0, 0, 1, 2, 2], ("a", "b", "c", "absent"))
    assert weights.tolist() == pytest.approx([6 / 12, 6 / 4, 6 / 8, 0.0])
    assert class_weight_vector((1, 2), [0], ("a", "b")).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="has 3 weight"):
        class_weight_vector((1, 2, 3), [0], ("a", "b"))


def test_the_reweighted_loss_is_the_weighted_cross_entropy_plus_what_the_model_added():
    torch.manual_seed(0)
    logits, labels, weights = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0]), torch.tensor([0.5, 2.0, 1.0])
    plain = torch.nn.functional.cross_entropy(logits, labels)
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=weights)
    torch.testing.assert_close(reweighted_loss(plain + 0.25, logits, labels, weights), expected + 0.25)
    zero = reweighted_loss(plain, logits, labels, torch.tensor([0.0, 0.0, 0.0]))
    assert zero.item() == pytest.approx(0.0, abs=1e-6)  # not NaN


def test_a_class_weighed_zero_is_never_learned(model_dir, tmp_path):
    task = toy_task(64, 32)
    model = fresh(model_dir, task=task)
    Trainer(model, "toy", task, quick(tmp_path, epochs=3, class_weights=(1.0, 0.0))).train()
    from adapterkit.training import predict

    predicted = predict(model, [e.texts for e in task.test], "toy")
    assert set(predicted) == {"neg"}


def test_class_weights_need_a_classification_task(model_dir):
    examples = [Example(("good film",), 0.5), Example(("bad plot",), -0.5)]
    task = TaskData("reg", "regression", ("text",), (), examples, examples, examples)
    with pytest.raises(ValueError, match="task 'reg' is regression"):
        Trainer(fresh(model_dir, "probe", task=task), "toy", task, quick(class_weights="balanced"))


# ---------------------------------------------------------------- per-class metrics
def test_class_report_counts_per_class_and_the_confusion_matrix():
    labels, predictions = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 1, 0])
    report = class_report(predictions, labels, ("a", "b", "c"))
    assert report["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert report["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    table = format_class_report(report).splitlines()
    assert table[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert table[1].split() == ["a", "0.6667", "0.6667", "0.6667", "3"]
    assert table[-1].split() == ["c", "1", "0", "0"] and table[-4].split() == ["true/pred", "a", "b", "c"]


# ---------------------------------------------------------------- Ctrl-C
def ctrl_c_at(step: int):
    def hook(record):
        if record["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)

    return hook


def test_ctrl_c_checkpoints_the_step_and_a_resume_ends_as_an_uninterrupted_run(model_dir, tmp_path, capsys):
    task = toy_task(48, 16)
    settings = dict(epochs=2, learning_rate=3e-3)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    result = Trainer(fresh(model_dir, task=task), "toy", task, quick(straight, **settings)).train()
    before = signal.getsignal(signal.SIGINT)
    # Ctrl-C during step 8: the loop finishes the step, checkpoints it and stops
    with pytest.raises(TrainingInterrupted) as stop:
        Trainer(fresh(model_dir, task=task), "toy", task, quick(stopped, **settings), on_step_end=ctrl_c_at(8)).train()
    assert signal.getsignal(signal.SIGINT) is before
    assert "stopping after this optimizer step" in capsys.readouterr().err
    assert stop.value.step == 8 and stop.value.epoch == 2 and stop.value.checkpoint == stopped / "checkpoint"
    assert str(stop.value) == f"stopped at step 8 (epoch 2, batch 2 of 6); checkpoint written to {stopped / 'checkpoint'}"
    again = Trainer(fresh(model_dir, task=task), "toy", task, quick(stopped, resume=True, **settings)).train()
    same_adapters(straight / "best", stopped / "best")
    assert again.history == result.history


def test_an_immediate_interrupt_names_the_last_checkpoint_on_disk(model_dir, tmp_path):
    task = toy_task(32, 16)

    def hard(record):
        if record["step"] == 6:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match=r"the checkpoint in .* holds step 4 \(end of epoch 1\)") as stop:
        Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=2), on_step_end=hard).train()
    assert (stop.value.step, stop.value.epoch) == (4, 1)


def test_resuming_with_the_same_settings_warns_of_nothing(model_dir, tmp_path, capsys):
    task = toy_task(32, 16)
    settings = dict(epochs=2, class_weights=(1.0, 2.0), gradient_accumulation_steps=2, save_steps=1)
    with pytest.raises(Crash):
        Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, **settings), on_step_end=crash_at(3)).train()
    capsys.readouterr()
    Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, resume=True, **settings)).train()
    assert "warning" not in capsys.readouterr().err
    Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, resume=True, **{**settings, "class_weights": None})).train()
    assert "class_weights: [1.0, 2.0] -> None" in capsys.readouterr().err
