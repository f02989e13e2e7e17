"""``adapterkit train``'s step-level flags, run config files and Ctrl-C; ``eval``'s per-class
metrics. In-process through ``adapterkit.cli.main`` on the tiny BERT folder of ``test_cli``."""

from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import pytest
import yaml
from test_cli import run_cli, workspace  # noqa: F401 (fixture)
from test_training import LABELS, one_thread  # noqa: F401 (autouse fixture)

from adapterkit.cli.training_args import SCHEDULERS


def data_flags(workspace) -> list[str]:
    return ["--model", str(workspace["model"]), "--train-file", str(workspace["train"]),
            "--validation-file", str(workspace["validation"]), "--test-file", str(workspace["test"]),
            "--text-column", "review", "--label-column", "sentiment"]


def log_steps(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_the_cli_lists_the_trainers_schedules():
    from adapterkit.training.schedule import SCHEDULERS as TRAINER_SCHEDULERS

    assert SCHEDULERS == TRAINER_SCHEDULERS


def test_step_flags_reach_the_trainer_and_the_run_is_logged(workspace, tmp_path):
    output = tmp_path / "run"
    code, out, err = run_cli(
        "train", "--method", "houlsby", "--option", "bottleneck_size=8", *data_flags(workspace), "--batch-size", "8",
        "--max-steps", "7", "--eval-steps", "3", "--save-steps", "2", "--gradient-accumulation-steps", "2",
        "--lr-scheduler", "cosine", "--metric", "macro_f1", "--class-weights", "balanced", "--tensorboard",
        "--output-dir", str(output), "--quiet",
    )
    assert code == 0, err
    results = json.loads((output / "results.json").read_text())
    config = results["config"]
    assert (config["max_steps"], config["eval_steps"], config["save_steps"], config["gradient_accumulation_steps"]) == (7, 3, 2, 2)
    assert (config["lr_scheduler"], config["metric"], config["class_weights"]) == ("cosine", "macro_f1", "balanced")
    assert config["tensorboard_dir"] == str(output / "tensorboard")
    assert "macro_f1" in out  # the table shows the selection metric
    steps = log_steps(output)
    assert [r["step"] for r in steps] == list(range(1, 8)) and [r["step"] for r in steps if "validation" in r] == [3, 6, 7]
    assert any(p.name.startswith("events.out.tfevents") for p in (output / "tensorboard").iterdir())


def test_log_dir_puts_the_event_files_elsewhere(workspace, tmp_path):
    code, _, err = run_cli("train", "--method", "bitfit", *data_flags(workspace), "--max-steps", "2", "--batch-size", "16",
                           "--log-dir", str(tmp_path / "tb"), "--output-dir", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    assert list((tmp_path / "tb").glob("events.out.tfevents*")) and not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--metric", "macro-f1"], "unknown metric 'macro-f1' for any task; did you mean macro_f1?"),
        (["--metric", "pearson"], "unknown metric 'pearson' for classification tasks"),
        (["--class-weights", "1,2,3"], "--class-weights has 3 weight(s), but the task has 2 labels ['neg', 'pos']"),
        (["--max-steps", "0"], "--max-steps must be a positive integer"),
    ],
)
def test_bad_step_flags_exit_2_with_one_line(workspace, tmp_path, flags, message):
    code, _, err = run_cli("train", "--method", "bitfit", *data_flags(workspace), *flags, "--output-dir", str(tmp_path), "--quiet")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_class_weights_that_are_not_numbers_are_a_usage_error(workspace, tmp_path):
    code, _, err = run_cli("train", "--method", "bitfit", *data_flags(workspace), "--class-weights", "auto", "--quiet")
    assert code == 2 and "expected 'balanced' or numbers separated by commas" in err


# ---------------------------------------------------------------- run config files
def test_the_saved_config_repeats_the_run_exactly(workspace, tmp_path):
    first = tmp_path / "first"
    code, _, err = run_cli("train", "--method", "houlsby", "--option", "bottleneck_size=8", "--option", "non_linearity=gelu",
                           *data_flags(workspace), "--epochs", "2", "--batch-size", "16", "--lr", "1e-2",
                           "--class-weights", "1,2", "--output-dir", str(first), "--quiet")
    assert code == 0, err
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["method"] == "houlsby" and saved["option"] == ["bottleneck_size=8", 'non_linearity="gelu"']
    assert saved["class_weights"] == [1.0, 2.0] and saved["output_dir"] == str(first) and saved["name"] == "train_adapter"
    assert saved["train_file"] == str(workspace["train"]) and saved["resume"] is False and "config" not in saved

    second = tmp_path / "second"
    code, _, err = run_cli("train", "--config", str(first / "config.yaml"), "--output-dir", str(second))
    assert code == 0, err
    one, two = (json.loads((folder / "results.json").read_text()) for folder in (first, second))
    assert two["test_metrics"] == one["test_metrics"] and two["history"] == one["history"]
    assert {**two["config"], "output_dir": None} == {**one["config"], "output_dir": None}
    again = yaml.safe_load((second / "config.yaml").read_text())
    assert {**again, "output_dir": None} == {**saved, "output_dir": None}


def test_the_command_line_overrides_the_file_and_json_is_read_too(workspace, tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"method": "bitfit", "task": "rotten_tomatoes", "epochs": 5, "batch-size": 16, "quiet": True}))
    output = tmp_path / "run"
    # the command line gives the data files (replacing the file's --task) and the epochs
    code, _, err = run_cli("train", "--config", str(config), *data_flags(workspace), "--max-steps", "2",
                           "--epochs", "1", "--output-dir", str(output))
    assert code == 0, err
    saved = yaml.safe_load((output / "config.yaml").read_text())
    assert (saved["epochs"], saved["batch_size"], saved["task"], saved["method"]) == (1, 16, None, "bitfit")


@pytest.mark.parametrize(
    "text, message",
    [
        ("method: bitfit\nbatch_szie: 8\n", "unknown key 'batch_szie'; did you mean batch_size?"),
        ("method: bitfit\nepochs: three\n", "epochs must be an integer, got 'three'"),
        ("method: bitfit\nquiet: 1\n", "quiet is a switch: give true or false"),
        ("method: bitfit\nlr_scheduler: step\n", "lr_scheduler must be one of linear, cosine, constant_with_warmup"),
        ("method: bitfit\nmixed_precision: no\n", "mixed_precision is not a switch, got false (YAML reads no/yes"),
        ("- method\n", "must hold a mapping"),
        ("method: [unclosed\n", "is not valid YAML"),
    ],
)
def test_a_bad_config_file_exits_2_with_one_line(tmp_path, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    code, _, err = run_cli("train", "--config", str(config), "--task", "rotten_tomatoes")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_missing_config_file_exits_2(tmp_path):
    code, _, err = run_cli("train", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: file not found" in err


def test_required_flags_still_required_without_the_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 1\n")
    code, _, err = run_cli("train", "--config", str(config), "--task", "rotten_tomatoes")
    assert code == 2 and "--method" in err and "usage:" in err


# ---------------------------------------------------------------- eval's per-class metrics
def test_eval_prints_per_class_metrics_and_the_confusion_matrix(workspace, tmp_path):
    output = tmp_path / "run"
    code, _, err = run_cli("train", "--method", "bitfit", *data_flags(workspace), "--max-steps", "2", "--batch-size", "16",
                           "--output-dir", str(output), "--quiet")
    assert code == 0, err
    argv = ["eval", "--adapter", str(output / "best"), "--test-file", str(workspace["test"]), "--label-column", "sentiment"]
    code, out, err = run_cli(*argv)
    assert code == 0, err
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("class")))
    assert lines[header].split() == ["class", "precision", "recall", "f1", "support"]
    assert [line.split()[0] for line in lines[header + 1 : header + 3]] == list(LABELS)
    assert lines[header + 4].split() == ["true/pred", *LABELS]
    code, out, err = run_cli(*argv, "--json")
    scores = json.loads(out)
    matrix = scores["confusion_matrix"]["matrix"]
    assert scores["confusion_matrix"]["labels"] == list(LABELS) and sum(map(sum, matrix)) == 32
    assert scores["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / 32)
    assert sum(row["support"] for row in scores["per_class"].values()) == 32
    for index, label in enumerate(LABELS):
        assert [int(x) for x in lines[header + 5 + index].split()[1:]] == matrix[index]


# ---------------------------------------------------------------- Ctrl-C
def test_ctrl_c_prints_the_checkpoint_and_the_command_that_resumes(workspace, tmp_path, monkeypatch):
    import adapterkit.training

    class CtrlCAtStep3(adapterkit.training.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, on_step_end=lambda r: r["step"] == 3 and os.kill(os.getpid(), signal.SIGINT))

    flags = ["train", "--method", "bitfit", *data_flags(workspace), "--epochs", "1", "--batch-size", "16"]
    code, _, err = run_cli(*flags, "--output-dir", str(tmp_path / "straight"), "--quiet")
    assert code == 0, err
    monkeypatch.setattr(adapterkit.training, "Trainer", CtrlCAtStep3)
    stopped = tmp_path / "stopped dir"  # a space: the command is quoted
    code, _, err = run_cli(*flags, "--output-dir", str(stopped), "--quiet")
    assert code == 130
    lines = err.strip().splitlines()
    assert f"adapterkit train: stopped at step 3 (epoch 1, batch 3 of 10); checkpoint written to {stopped / 'checkpoint'}" in lines
    command = lines[-1].removeprefix("resume with: ")
    assert lines[-1].startswith("resume with: adapterkit train ") and command.endswith(" --resume")
    monkeypatch.undo()
    code, _, err = run_cli(*shlex.split(command)[1:])
    assert code == 0, err
    straight, resumed = (json.loads((folder / "results.json").read_text()) for folder in (tmp_path / "straight", stopped))
    assert resumed["history"] == straight["history"] and resumed["test_metrics"] == straight["test_metrics"]
