"""Issue 16 checked as a new user would: what still went wrong after the merges, each as a test
that failed before its fix. Runs in-process on the tiny BERT folder of ``test_cli``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import run_cli, workspace  # noqa: F401 (module-scoped fixture)
from test_cli_io import SMALL, files, one_line_error, train_argv
from test_training import one_thread  # noqa: F401 (autouse fixture)

from adapterkit.cli import main


def test_train_runs_and_saves_its_run(workspace, tmp_path):
    code, out, err = run_cli(*train_argv(workspace, "--output-dir", str(tmp_path / "run")))
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs_run"] == 1
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_predict_output_naming_a_folder_says_so(tmp_path):
    (tmp_path / "preds").mkdir()
    code, _, err = run_cli("predict", "--adapter", str(tmp_path / "nowhere"), "--output", str(tmp_path / "preds"))
    one_line_error(code, err, "is a folder")


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_output_piped_into_head_ends_quietly(monkeypatch):
    """`adapterkit methods | head`: the reader closing the pipe is no error to report."""
    err = io.StringIO()
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    with contextlib.redirect_stderr(err):
        code = main(["methods"])
    assert code == 141 and err.getvalue() == ""


@pytest.mark.parametrize("flags, message", [
    (["--eval-steps", "-1"], "--eval-steps must be a positive integer, got -1"),
    (["--save-steps", "0"], "--save-steps must be a positive integer, got 0"),
    (["--class-weights", "0,0"], "--class-weights must be >= 0 and not all 0"),
])
def test_step_and_weight_flags_are_named_as_flags(workspace, tmp_path, flags, message):
    code, _, err = run_cli(*train_argv(workspace, *flags, "--output-dir", str(tmp_path / "run")))
    one_line_error(code, err, message)
    assert not (tmp_path / "run").exists()


def test_a_negative_seed_names_the_flag(workspace, tmp_path):
    code, _, err = run_cli(*train_argv(workspace, "--seed", "-1", "--output-dir", str(tmp_path / "run")))
    assert code == 2 and "argument --seed: expected a whole number from 0" in err, err
    assert not (tmp_path / "run").exists()


def test_an_unwritable_log_dir_is_refused_before_any_work(workspace, tmp_path):
    (tmp_path / "plain-file").write_text("")
    code, _, err = run_cli(*train_argv(workspace, "--log-dir", str(tmp_path / "plain-file" / "tb"),
                                       "--output-dir", str(tmp_path / "run")))
    one_line_error(code, err, "--log-dir", "is a file, not a folder")
    assert not (tmp_path / "run").exists()  # else a rerun would need --overwrite


def test_a_config_that_is_not_utf8_or_is_a_folder_is_named(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_bytes(b"epochs: 1\nname: caf\xe9\n")
    code, _, err = run_cli("train", "--method", "lora", "--task", "trec6", "--config", str(config))
    one_line_error(code, err, f"--config {config} line 2: not UTF-8 text")
    code, _, err = run_cli("train", "--method", "lora", "--task", "trec6", "--config", str(tmp_path))
    one_line_error(code, err, "is a folder")


def test_python_warnings_are_one_line_naming_the_command(workspace, tmp_path):
    """In a fresh interpreter: pytest records warnings, so in-process they never reach stderr."""
    # the tiny BERT reads 64 positions: asking for 128 warns
    argv = train_argv(workspace, "--max-length", "128", "--output-dir", str(tmp_path / "run"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "adapterkit", *argv], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == (
        "adapterkit train: warning: max_length 128 reduced to 64 tokens per input: this 'bert' model reads 64 positions"
    )


def test_an_overwriting_run_stopped_by_ctrl_c_does_not_keep_the_earlier_result(workspace, tmp_path, monkeypatch):
    import adapterkit.training

    class CtrlCAtStep2(adapterkit.training.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, on_step_end=lambda r: r["step"] == 2 and os.kill(os.getpid(), signal.SIGINT))

    run = tmp_path / "run"
    code, _, err = run_cli(*train_argv(workspace, "--output-dir", str(run)))
    assert code == 0, err
    monkeypatch.setattr(adapterkit.training, "Trainer", CtrlCAtStep2)
    code, _, err = run_cli(*train_argv(workspace, "--output-dir", str(run), "--overwrite", "--lr", "0.05"))
    assert code == 130, err
    assert not (run / "results.json").exists()  # else `report` shows the earlier run as this one
    monkeypatch.undo()
    code, out, err = run_cli("report", str(run))
    assert "skipped" in err and "unfinished" in err, err


def test_fuse_overwrite_without_prune_drops_the_earlier_pruned_fusion(workspace, tmp_path):
    for name in ("first", "second"):
        code, _, err = run_cli(*train_argv(workspace, "--name", name, "--output-dir", str(tmp_path / name), method="pfeiffer"))
        assert code == 0, err
    fuse = ["fuse", "--model", str(workspace["model"]), "--adapters", f"{tmp_path / 'first/best'},{tmp_path / 'second/best'}",
            *files(workspace), *SMALL, "--output-dir", str(tmp_path / "fusion")]
    code, _, err = run_cli(*fuse, "--prune", "1")
    assert code == 0, err
    assert (tmp_path / "fusion" / "pruned" / "results.json").is_file()
    code, _, err = run_cli(*fuse, "--overwrite")
    assert code == 0, err
    code, out, err = run_cli("report", str(tmp_path / "fusion"))
    assert code == 0 and "pruned" not in out, out  # the earlier run's pruned fusion is not this run's


def test_generate_with_an_encoder_base_names_the_flag(workspace):
    code, _, err = run_cli("generate", "--model", str(workspace["model"]), "--prompt", "hi", "--quiet")
    one_line_error(code, err, f"--model {workspace['model']} is an encoder (bert); generate needs a decoder model")


def test_an_adapter_path_that_does_not_exist_is_called_so(tmp_path):
    missing = str(tmp_path / "runs" / "typo" / "best")
    code, _, err = run_cli("eval", "--adapter", missing, "--task", "trec6")
    one_line_error(code, err, f"{missing} does not exist; check the path")
    code, _, err = run_cli("convert", missing, str(tmp_path / "out"), "--to", "peft")
    one_line_error(code, err, f"{missing} does not exist; check the")


def test_a_missing_stack_under_adapter_is_refused_before_any_work(workspace, tmp_path):
    missing = str(tmp_path / "lang" / "best")
    code, _, err = run_cli(*train_argv(workspace, "--stack-under", missing, "--output-dir", str(tmp_path / "run")))
    one_line_error(code, err, f"{missing} does not exist")
    assert not (tmp_path / "run").exists()  # else a rerun would need --overwrite


def test_a_wrong_model_leaves_no_run_folder_behind(workspace, tmp_path):
    argv = train_argv(workspace, "--output-dir", str(tmp_path / "run"))
    argv[argv.index("--model") + 1] = str(tmp_path / "no-such-model")
    code, _, err = run_cli(*argv)
    one_line_error(code, err, "is not a known model name or an existing folder")
    assert not (tmp_path / "run").exists()  # the corrected command needs no --overwrite


def test_class_weights_on_a_regression_task_name_the_flag(workspace, tmp_path):
    values = tmp_path / "values.csv"
    values.write_text("review,sentiment\n" + "".join(f"good film {i},{i / 10}\n" for i in range(20)))
    argv = train_argv(workspace, "--class-weights", "balanced", "--output-dir", str(tmp_path / "run"))
    argv[argv.index("--train-file") + 1] = str(values)
    argv[argv.index("--validation-file"):argv.index("--validation-file") + 4] = []  # no held-out classification files
    code, _, err = run_cli(*argv)
    one_line_error(code, err, "--class-weights weight a classification loss, but task 'values' is regression")


def test_resume_without_a_checkpoint_says_so_even_when_quiet(workspace, tmp_path):
    code, _, err = run_cli(*train_argv(workspace, "--resume", "--output-dir", str(tmp_path / "typo")))
    assert code == 0, err
    assert f"warning: resume: no checkpoint in {tmp_path / 'typo' / 'checkpoint'}; training from the start" in err


def test_fuse_refuses_two_adapters_of_the_same_name(workspace, tmp_path):
    for seed in ("1", "2"):  # two different adapters, both named "same"
        code, _, err = run_cli(*train_argv(workspace, "--name", "same", "--seed", seed,
                                           "--output-dir", str(tmp_path / seed), method="pfeiffer"))
        assert code == 0, err
    code, _, err = run_cli("fuse", "--model", str(workspace["model"]), "--adapters", f"{tmp_path / '1/best'},{tmp_path / '2/best'}",
                           *files(workspace), *SMALL, "--output-dir", str(tmp_path / "fusion"))
    one_line_error(code, err, "both hold adapter 'same'")  # it fused one of them, silently
    assert not (tmp_path / "fusion").exists()


@pytest.mark.parametrize("adapter_flags, message", [
    (["--adapter", "a"], "with one --adapter there is nothing to share"),  # it was ignored
    (["--adapters", "a,b", "--drop-first", "-1"], "--drop-first N: N is a number of layers, 0 or more; got -1"),
])
def test_predict_drop_first_is_checked_before_loading(tmp_path, adapter_flags, message):
    flags = [*adapter_flags, *(() if "--drop-first" in adapter_flags else ("--drop-first", "1"))]
    code, _, err = run_cli("predict", *flags, "--input", str(tmp_path / "in.txt"))
    one_line_error(code, err, message)


@pytest.mark.parametrize("argv", [
    ["predict", "--adapter", "a", "--max-length", "-5"],  # a tokenizer OverflowError traceback
    ["eval", "--adapter", "a", "--task", "trec6", "--max-length", "0"],  # 0 was silently the default
    ["eval", "--adapter", "a", "--task", "trec6", "--batch-size", "0"],  # a DataLoader message, after loading
    ["generate", "--model", "m", "--prompt", "hi", "--num-beams", "0"],  # a ZeroDivisionError traceback
])
def test_sizes_and_lengths_below_one_are_usage_errors(argv):
    code, _, err = run_cli(*argv)
    assert code == 2 and f"argument {argv[-2]}: expected a whole number >= 1, got '{argv[-1]}'" in err, err


def test_fuse_refuses_negative_prune_epochs(tmp_path):
    folders = []
    for name in ("a", "b"):  # adapter_folder only looks for the folders' config files here
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text("{}")
        folders.append(str(tmp_path / name))
    code, _, err = run_cli("fuse", "--adapters", ",".join(folders), "--task", "trec6", "--prune", "1", "--prune-epochs", "-1")
    one_line_error(code, err, "--prune-epochs E: E is 0 (the pruned fusion as it is) or more epochs; got -1")


def test_instruction_data_on_an_encoder_names_model(workspace, tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"instruction": f"say {i}", "response": f"ok {i}"}) + "\n" for i in range(20)))
    code, _, err = run_cli("train", "--model", str(workspace["model"]), "--method", "lora", "--train-file", str(chat),
                           "--quiet", "--output-dir", str(tmp_path / "run"))
    one_line_error(code, err, f"{chat} holds instruction data, which fine-tunes a causal LM, but --model")
    assert not (tmp_path / "run").exists()


def test_repeating_a_run_from_its_config_does_not_overwrite_it(workspace, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli(*train_argv(workspace, "--output-dir", str(run), "--overwrite"))
    assert code == 0, err
    before = (run / "results.json").read_text()
    code, _, err = run_cli("train", "--config", str(run / "config.yaml"))  # output_dir: the run itself
    one_line_error(code, err, "already holds an earlier run")
    assert (run / "results.json").read_text() == before


def test_a_run_config_repeats_the_run_from_another_folder(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(workspace["root"])
    argv = train_argv(workspace, "--output-dir", str(tmp_path / "first"))
    for flag in ("--model", "--train-file", "--validation-file", "--test-file"):  # relative, as users type them
        argv[argv.index(flag) + 1] = Path(argv[argv.index(flag) + 1]).name
    code, _, err = run_cli(*argv)
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("train", "--config", str(tmp_path / "first" / "config.yaml"), "--output-dir", str(tmp_path / "again"))
    assert code == 0, err


def test_generate_names_non_utf8_stdin(monkeypatch):
    class Stdin(io.StringIO):
        buffer = io.BytesIO(b"Un film tr\xe8s r\xe9ussi\n")

    monkeypatch.setattr("sys.stdin", Stdin())
    code, _, err = run_cli("generate", "--model", "smollm2-135m", "--quiet")
    one_line_error(code, err, "stdin line 1: not UTF-8 text (byte 0xe8 at column 11)")  # was a tokenizer traceback


@pytest.mark.parametrize("command", [["train", "--method", "lora"], ["fuse", "--adapters", "a,b"]])
def test_a_negative_patience_is_a_usage_error_in_cli_terms(command):
    code, _, err = run_cli(*command, "--task", "trec6", "--patience", "-1")
    assert code == 2 and "argument --patience: expected a whole number >= 0, got '-1'" in err, err  # was "(or None ...)"


def test_a_run_at_the_defaults_gets_the_plain_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "runs" / "rotten_tomatoes-pfeiffer-minilm"
    earlier.mkdir(parents=True)
    (earlier / "results.json").write_text("{}")
    code, _, err = run_cli("train", "--method", "pfeiffer", "--task", "rotten_tomatoes")
    # the parser's own entries (flag names, config keys) are no settings: no digest was to be added
    one_line_error(code, err, "the default run folder runs/rotten_tomatoes-pfeiffer-minilm already holds an earlier run")


@pytest.mark.parametrize("command", ["train", "fuse"])
def test_an_empty_name_is_refused_not_replaced_by_the_default(command, tmp_path):
    extra = ["--method", "lora"] if command == "train" else ["--adapters", "a,b"]
    code, _, err = run_cli(command, *extra, "--task", "rotten_tomatoes", "--name", " ", "--output-dir", str(tmp_path / "r"))
    assert code == 2 and "argument --name: must not be empty" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["predict", "--adapter"], ["generate", "--adapter"]])
def test_an_input_that_is_a_folder_is_called_a_folder(tmp_path, command):
    from test_cli_options import fake_adapter

    adapter = fake_adapter(tmp_path / "adapter")
    (tmp_path / "inputs.csv").mkdir()
    code, _, err = run_cli(*command, str(adapter), "--input", str(tmp_path / "inputs.csv"))
    one_line_error(code, err, f"--input {tmp_path / 'inputs.csv'}: is a folder; give a file")  # was "file not found"


@pytest.mark.parametrize("flags, message", [
    (["--port", "99999"], "argument --port: expected a port from 1 to 65535, got '99999'"),  # uvicorn started on it
    (["--threads", "0"], "argument --threads: expected a whole number >= 1, got '0'"),  # silently torch's default
])
def test_serve_checks_its_numbers_before_loading(tmp_path, flags, message):
    code, _, err = run_cli("serve", "--store", str(tmp_path), *flags)
    assert code == 2 and message in err, err


@pytest.mark.parametrize("value", ["-1", "nan", "x"])
def test_a_negative_gradient_clip_is_refused_by_the_parser(value, tmp_path):
    code, _, err = run_cli("train", "--method", "lora", "--task", "rotten_tomatoes", "--max-grad-norm", value,
                           "--output-dir", str(tmp_path / "r"))
    assert code == 2 and "argument --max-grad-norm: expected a number >= 0 (0 disables it)" in err and "None" not in err
