"""The command line's input and output: output paths checked before any work, file-system errors
as one line, predict's input decoding, empty input, default run folders that do not collide,
``--overwrite``, the absolute base-model path, ``predict --output``/``--scores``, progress bars
and ``--quiet``. Runs in-process on the tiny BERT folder of ``test_cli``."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest
from test_cli import run_cli, workspace, write_csv  # noqa: F401 (module-scoped fixture)
from test_training import build_tiny_model_dir, one_thread  # noqa: F401 (autouse fixture)

import adapterkit.cli.evaluate
import adapterkit.cli.predict
from adapterkit.cli import build_parser, train
from adapterkit.cli.console import quiet_children, quiet_libraries, show_progress
from adapterkit.cli.paths import describe_os_error, writable_dir, writable_file

ROOT = os.geteuid() == 0
SMALL = ["--epochs", "1", "--batch-size", "16", "--max-length", "16", "--quiet"]


def files(workspace) -> list[str]:
    return ["--train-file", str(workspace["train"]), "--validation-file", str(workspace["validation"]),
            "--test-file", str(workspace["test"]), "--text-column", "review", "--label-column", "sentiment"]


def train_argv(workspace, *extra: str, method: str = "bitfit") -> list[str]:
    return ["train", "--model", str(workspace["model"]), "--method", method, *files(workspace), *SMALL, *extra]


@pytest.fixture(scope="module")
def adapter(workspace) -> Path:
    """One adapter trained through the CLI, for the predict and eval tests."""
    output = workspace["root"] / "io-run"
    code, _, err = run_cli(*train_argv(workspace, "--output-dir", str(output)))
    assert code == 0, err
    return output / "best"


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create anything in: read-only by permission, or (as root, whom
    permissions do not stop) a path under a file."""
    if ROOT:
        (tmp_path / "plain-file").write_text("")
        return tmp_path / "plain-file"
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


# ---------------------------------------------------------------- output paths, before any work
def test_train_refuses_an_output_dir_that_is_a_file_before_loading_anything(tmp_path):
    (tmp_path / "taken").write_text("")
    # the train file does not exist either: the output path is checked first
    code, _, err = run_cli("train", "--method", "bitfit", "--train-file", str(tmp_path / "missing.csv"),
                           "--output-dir", str(tmp_path / "taken"))
    one_line_error(code, err, "--output-dir", "taken: is a file, not a folder")


def test_train_refuses_an_output_dir_it_cannot_create(tmp_path):
    blocked = unwritable_folder(tmp_path)
    code, _, err = run_cli("train", "--method", "bitfit", "--train-file", str(tmp_path / "missing.csv"),
                           "--output-dir", str(blocked / "run"))
    one_line_error(code, err, "--output-dir", "cannot create the folder")


@pytest.mark.skipif(ROOT, reason="root writes in any folder")
def test_train_refuses_an_existing_folder_without_write_permission(tmp_path):
    blocked = unwritable_folder(tmp_path)
    code, _, err = run_cli("train", "--method", "bitfit", "--train-file", str(tmp_path / "missing.csv"),
                           "--output-dir", str(blocked), "--overwrite")
    one_line_error(code, err, "no permission to write in this folder")


def test_train_and_fuse_refuse_a_store_that_is_a_file(tmp_path):
    (tmp_path / "store").write_text("")
    code, _, err = run_cli("train", "--method", "bitfit", "--train-file", str(tmp_path / "missing.csv"),
                           "--output-dir", str(tmp_path / "run"), "--store", str(tmp_path / "store"))
    one_line_error(code, err, "--store", "is a file, not a folder")
    folders = []
    for name in ("a", "b"):  # fuse reads the adapters first (cheap), then checks where it writes
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text("{}")
        folders.append(str(tmp_path / name))
    code, _, err = run_cli("fuse", "--adapters", ",".join(folders), "--task", "rotten_tomatoes",
                           "--output-dir", str(tmp_path / "fusion"), "--store", str(tmp_path / "store"))
    one_line_error(code, err, "--store", "is a file, not a folder")
    code, _, err = run_cli("fuse", "--adapters", ",".join(folders), "--task", "rotten_tomatoes",
                           "--output-dir", str(tmp_path / "store" / "fusion"))
    one_line_error(code, err, "--output-dir", "is a file, not a folder")


def test_predict_checks_its_output_file_before_loading_the_adapter(tmp_path):
    (tmp_path / "plain-file").write_text("")
    (tmp_path / "folder.jsonl").mkdir()
    missing = str(tmp_path / "no-adapter")  # would fail if it were loaded first
    for output, message in ((tmp_path / "plain-file" / "p.jsonl", "cannot create the file"),
                            (tmp_path / "folder.jsonl", "is a folder; give a file name"),
                            (tmp_path / "p.txt", "unknown extension; use .jsonl")):
        code, _, err = run_cli("predict", "--adapter", missing, "--output", str(output))
        one_line_error(code, err, "--output", message)


def test_convert_checks_its_target_before_loading(tmp_path):
    (tmp_path / "plain-file").write_text("")
    code, _, err = run_cli("convert", str(tmp_path / "no-adapter"), str(tmp_path / "plain-file"), "--to", "peft")
    one_line_error(code, err, "target", "is a file, not a folder")


def test_path_checks_create_nothing(tmp_path):
    assert writable_dir(tmp_path / "a" / "b", "--x") == tmp_path / "a" / "b"
    assert writable_file(tmp_path / "c" / "p.jsonl", "--x") == tmp_path / "c" / "p.jsonl"
    assert list(tmp_path.iterdir()) == []


def test_a_file_system_error_during_the_work_is_one_line_naming_the_path(monkeypatch, tmp_path):
    from test_cli_options import fake_adapter

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/srv/models/x")

    monkeypatch.setattr("adapterkit.inference.loading.load_saved_adapter", denied)
    somewhere = fake_adapter(tmp_path / "somewhere")  # eval reads its config before loading
    code, _, err = run_cli("eval", "--adapter", str(somewhere), "--task", "rotten_tomatoes", "--quiet")
    one_line_error(code, err, "adapterkit eval: error: /srv/models/x: permission denied")
    assert describe_os_error(FileNotFoundError("x.csv: file not found")) == "x.csv: file not found"
    assert describe_os_error(OSError(18, "Invalid cross-device link", "a", None, "b")) == "a -> b: invalid cross-device link"


# ---------------------------------------------------------------- predict's and eval's input
def stdin_bytes(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_predict_names_non_utf8_stdin_and_reads_it_with_encoding(adapter, monkeypatch):
    latin1 = "Un film tr\u00e8s r\u00e9ussi\nawful plot\n".encode("latin-1")
    stdin_bytes(monkeypatch, latin1)
    code, _, err = run_cli("predict", "--adapter", str(adapter), "--quiet")
    one_line_error(code, err, "stdin line 1: not UTF-8 text (byte 0xe8 at column 11)", "iconv -f latin1 -t utf-8",
                   "--encoding latin1")
    stdin_bytes(monkeypatch, latin1)
    code, out, err = run_cli("predict", "--adapter", str(adapter), "--quiet", "--encoding", "latin1")
    assert code == 0, err
    assert len(out.splitlines()) == 2 and set(out.split()) <= {"neg", "pos"}
    code, _, err = run_cli("predict", "--adapter", str(adapter), "--encoding", "no-such-codec")
    one_line_error(code, err, "--encoding no-such-codec: unknown encoding")


@pytest.mark.parametrize("name, content", [("in.txt", "good\ncaf\u00e9 ok\n"), ("in.csv", "review\ngood\ncaf\u00e9 ok\n")])
def test_predict_names_a_non_utf8_input_file_and_its_line(adapter, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1"))
    code, _, err = run_cli("predict", "--adapter", str(adapter), "--input", str(path), "--quiet")
    line = 2 if name == "in.txt" else 3
    one_line_error(code, err, f"{path} line {line}: not UTF-8 text (byte 0xe9 at column 4)", "iconv")


def test_predict_and_eval_refuse_empty_input(adapter, tmp_path, monkeypatch):
    stdin_bytes(monkeypatch, b"")
    code, out, err = run_cli("predict", "--adapter", str(adapter), "--quiet")
    one_line_error(code, err, "nothing to predict: standard input was empty")
    assert out == ""
    stdin_bytes(monkeypatch, b"\n  \n")
    code, _, err = run_cli("predict", "--adapter", str(adapter), "--quiet")
    one_line_error(code, err, "standard input was empty")
    (tmp_path / "blank.txt").write_text("\n\n")
    code, _, err = run_cli("predict", "--adapter", str(adapter), "--input", str(tmp_path / "blank.txt"), "--quiet")
    one_line_error(code, err, "blank.txt holds no input lines")
    (tmp_path / "header.csv").write_text("review,sentiment\n")
    code, _, err = run_cli("predict", "--adapter", str(adapter), "--input", str(tmp_path / "header.csv"), "--quiet")
    one_line_error(code, err, "header.csv is empty: it holds no examples")
    code, _, err = run_cli("eval", "--adapter", str(adapter), "--test-file", str(tmp_path / "header.csv"),
                           "--label-column", "sentiment", "--quiet")
    one_line_error(code, err, "header.csv is empty: it holds no examples")


def test_eval_names_the_line_of_a_non_utf8_test_file(adapter, tmp_path):
    path = tmp_path / "test.csv"
    path.write_bytes("review,sentiment\ngood,pos\ncaf\u00e9,neg\n".encode("latin-1"))
    code, _, err = run_cli("eval", "--adapter", str(adapter), "--test-file", str(path), "--label-column", "sentiment")
    one_line_error(code, err, f"{path} line 3: not UTF-8 text", "iconv -f latin1")


# ---------------------------------------------------------------- run folders
def settings_of(*argv: str) -> Path:
    return train.output_dir(build_parser().parse_args(["train", *argv]), "rotten_tomatoes")


def test_default_run_folders_are_readable_deterministic_and_distinct(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = settings_of("--method", "pfeiffer", "--task", "rotten_tomatoes")
    assert plain == Path("runs/rotten_tomatoes-pfeiffer-minilm")  # at the defaults: no digest
    assert settings_of("--task", "rotten_tomatoes", "--method", "pfeiffer", "--quiet", "--store", "s", "--nproc", "2") == plain
    # where logs and checkpoints go, or where the flags came from, is no setting of the run either
    assert settings_of("--task", "rotten_tomatoes", "--method", "pfeiffer", "--tensorboard", "--save-steps", "5",
                       "--replace-in-store", "--log-dir", "tb") == plain
    r8 = settings_of("--method", "pfeiffer", "--option", "reduction_factor=8", "--task", "rotten_tomatoes")
    assert r8 == Path("runs/rotten_tomatoes-pfeiffer-minilm-3705e9")  # stable across processes and versions
    two = ("--option", "reduction_factor=8", "--option", "non_linearity=gelu")
    assert settings_of("--method", "pfeiffer", *two, "--task", "rotten_tomatoes") == settings_of(
        "--method", "pfeiffer", *two[2:], *two[:2], "--task", "rotten_tomatoes")  # options in any order
    others = {settings_of("--method", "pfeiffer", "--task", "rotten_tomatoes", *extra)
              for extra in (["--seed", "1"], ["--epochs", "5"], ["--lr", "1e-3"], ["--option", "reduction_factor=4"])}
    assert len(others | {plain, r8}) == 6


def test_the_default_folder_names_the_model_and_an_earlier_run_is_refused(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(*train_argv(workspace))
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("train-bitfit-tiny_model-") and len(run.name.rsplit("-", 1)[1]) == 6  # train.csv: adapter train_adapter
    assert str(Path("runs") / run.name / "best") in out
    first = (run / "results.json").read_text()
    code, _, err = run_cli(*train_argv(workspace))  # the same run again: refused, nothing touched
    one_line_error(code, err, f"the default run folder {Path('runs') / run.name} already holds an earlier run", "--overwrite",
                   "--resume")
    assert (run / "results.json").read_text() == first
    code, _, err = run_cli(*train_argv(workspace, "--seed", "1"))  # another seed: another folder
    assert code == 0, err
    assert len(list((tmp_path / "runs").iterdir())) == 2
    code, _, err = run_cli(*train_argv(workspace, "--overwrite"))
    assert code == 0, err
    code, _, err = run_cli(*train_argv(workspace, "--resume"))
    assert code == 0, err


def test_the_store_refuses_to_replace_an_adapter_without_replace_in_store(workspace, tmp_path):
    store = tmp_path / "store"
    code, _, err = run_cli(*train_argv(workspace, "--name", "task", "--store", str(store), "--output-dir", str(tmp_path / "a")))
    assert code == 0, err
    saved = (store / "task" / "adapter.safetensors").read_bytes()
    code, _, err = run_cli(*train_argv(workspace, "--name", "task", "--store", str(store), "--output-dir", str(tmp_path / "b"),
                                       "--seed", "3"))
    one_line_error(code, err, f"the store already holds {store / 'task'}", "--replace-in-store", "--name")
    assert not (tmp_path / "b").exists() and (store / "task" / "adapter.safetensors").read_bytes() == saved
    code, _, err = run_cli(*train_argv(workspace, "--name", "task", "--store", str(store), "--output-dir", str(tmp_path / "b"),
                                       "--seed", "3", "--replace-in-store"))
    assert code == 0, err
    assert (store / "task" / "adapter.safetensors").read_bytes() != saved


def test_fuse_refuses_an_earlier_run_unless_overwrite(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    for name in ("first", "second"):
        code, _, err = run_cli(*train_argv(workspace, "--name", name, "--store", str(store), "--output-dir", name, method="pfeiffer"))
        assert code == 0, err
    fuse = ["fuse", "--adapters", "first,second", "--store", str(store), *files(workspace), *SMALL]
    code, _, err = run_cli(*fuse)
    assert code == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("train_fusion-") and (store / "train_fusion").is_dir()
    code, _, err = run_cli(*fuse)
    one_line_error(code, err, "already holds an earlier run", "--overwrite")
    code, _, err = run_cli(*fuse, "--overwrite")
    one_line_error(code, err, "the store already holds", "--replace-in-store")
    code, _, err = run_cli(*fuse, "--overwrite", "--replace-in-store")
    assert code == 0, err
    # and predict --adapters writes every task's label per input
    stdin_bytes(monkeypatch, b"good film\n")
    code, _, err = run_cli("predict", "--adapters", "first,second", "--store", str(store), "--scores")
    one_line_error(code, err, "--scores prints one adapter's class probabilities")
    stdin_bytes(monkeypatch, b"good film\n")
    code, _, err = run_cli("predict", "--adapters", "first,second", "--store", str(store), "--output", "p.jsonl", "--quiet")
    assert code == 0, err
    (record,) = [json.loads(line) for line in Path("p.jsonl").read_text().splitlines()]
    assert record["review"] == "good film" and {record["first"], record["second"]} <= {"neg", "pos"}


# ---------------------------------------------------------------- the base model's path
def test_a_relative_model_folder_is_recorded_absolute_and_found_from_elsewhere(tmp_path, monkeypatch, workspace):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    build_tiny_model_dir(Path("tinybert"))
    code, _, err = run_cli("train", "--model", "tinybert", "--method", "bitfit", *files(workspace), *SMALL, "--output-dir", "run")
    assert code == 0, err
    meta = json.loads(Path("run/best/adapter_config.json").read_text())
    assert meta["base_model"]["name_or_path"] == str((tmp_path / "work" / "tinybert").resolve())
    monkeypatch.chdir(tmp_path)
    stdin_bytes(monkeypatch, b"good film\n")
    code, out, err = run_cli("predict", "--adapter", "work/run/best", "--quiet")
    assert code == 0 and out.strip() in {"neg", "pos"}, err
    # a peer export records the absolute folder as well, even when --model names it relatively
    monkeypatch.chdir(tmp_path / "work")
    from adapterkit.model import AdapterModel

    assert AdapterModel.from_pretrained("tinybert").base.config._name_or_path == str(Path("tinybert").resolve())


def test_a_recorded_base_that_is_gone_names_model_and_the_wrong_base_is_still_refused(adapter, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    config = moved / "adapter_config.json"
    meta = json.loads(config.read_text())
    meta["base_model"]["name_or_path"] = "tinybert"  # relative, as an older adapterkit could record
    config.write_text(json.dumps(meta))
    code, _, err = run_cli("eval", "--adapter", str(moved), "--task", "rotten_tomatoes")
    one_line_error(code, err, "was trained on base model 'tinybert', not found here", "--model")
    import torch
    from transformers import BertModel

    other = build_tiny_model_dir(tmp_path / "other")
    weights = BertModel.from_pretrained(other)
    with torch.no_grad():  # the same architecture, other weights
        for param in weights.parameters():
            param.add_(0.5)
    weights.save_pretrained(other)
    code, _, err = run_cli("eval", "--adapter", str(moved), "--model", str(other), "--task", "rotten_tomatoes", "--quiet")
    one_line_error(code, err, "trained on base model", "different weights")


# ---------------------------------------------------------------- predictions with scores
def test_predict_scores_and_output_files(adapter, workspace, tmp_path, monkeypatch):
    stdin_bytes(monkeypatch, b"good film\nawful plot\n")
    code, out, err = run_cli("predict", "--adapter", str(adapter), "--scores", "--quiet")
    assert code == 0, err
    for line in out.splitlines():
        label, scores = line.split("\t")
        probabilities = dict(item.split("=") for item in scores.split())
        assert set(probabilities) == {"neg", "pos"} and abs(sum(map(float, probabilities.values())) - 1) < 1e-3
        assert label == max(probabilities, key=lambda k: float(probabilities[k]))
    code, plain, err = run_cli("predict", "--adapter", str(adapter), "--input", str(workspace["test"]), "--quiet")
    assert code == 0, err
    jsonl = tmp_path / "out" / "preds.jsonl"  # its folder is created
    code, out, err = run_cli("predict", "--adapter", str(adapter), "--input", str(workspace["test"]), "--output", str(jsonl))
    assert code == 0 and out == "" and f"32 predictions written to {jsonl}" in err, err
    records = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [r["label"] for r in records] == plain.split()
    with workspace["test"].open(newline="") as stream:
        assert [r["review"] for r in records] == [row["review"] for row in csv.DictReader(stream)]
    assert all(set(r["scores"]) == {"neg", "pos"} and abs(sum(r["scores"].values()) - 1) < 1e-4 for r in records)
    table = tmp_path / "preds.csv"
    code, _, err = run_cli("predict", "--adapter", str(adapter), "--input", str(workspace["test"]), "--output", str(table), "--quiet")
    assert code == 0 and err == "", err
    with table.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["review", "label", "score_neg", "score_pos"] and [r["label"] for r in rows] == plain.split()


def test_predict_output_of_a_regression_adapter_has_values(workspace, tmp_path, monkeypatch):
    data = tmp_path / "scores.csv"
    data.write_text("text,label\n" + "".join(f"w{i} w{i % 3},{i / 10}\n" for i in range(40)))
    code, _, err = run_cli("train", "--model", str(workspace["model"]), "--method", "bitfit", "--train-file", str(data),
                           *SMALL, "--output-dir", str(tmp_path / "run"))
    assert code == 0, err
    stdin_bytes(monkeypatch, b"w1 w1\nw2 w2\n")
    code, _, err = run_cli("predict", "--adapter", str(tmp_path / "run" / "best"), "--output", str(tmp_path / "p.jsonl"),
                           "--quiet")
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["text"] for r in records] == ["w1 w1", "w2 w2"]
    assert all(set(r) == {"text", "value"} and isinstance(r["value"], float) for r in records)


# ---------------------------------------------------------------- progress bars and --quiet
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eval_and_predict_draw_progress_bars_on_a_terminal_only(adapter, workspace, monkeypatch):
    import contextlib

    from adapterkit.cli import main

    for argv in (["eval", "--adapter", str(adapter), "--test-file", str(workspace["test"]), "--label-column", "sentiment"],
                 ["predict", "--adapter", str(adapter), "--input", str(workspace["test"])]):
        for extra, shown in (([], True), (["--quiet"], False)):
            err = Terminal()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                assert main([*argv, "--batch-size", "8", *extra]) == 0
            assert ("batch" in err.getvalue()) == shown, (argv, extra, err.getvalue())
    assert show_progress(False) is sys.stderr.isatty() and not show_progress(True)


def test_quiet_silences_transformers_and_other_ranks_drop_warnings(monkeypatch):
    from transformers.utils import logging

    logging.enable_progress_bar()  # other tests ran --quiet in this process
    logging.set_verbosity_warning()
    try:
        with warnings.catch_warnings():
            monkeypatch.setenv("RANK", "0")
            quiet_libraries(False)
            assert logging.is_progress_bar_enabled()
            quiet_libraries(True)
            assert not logging.is_progress_bar_enabled() and logging.get_verbosity() == logging.ERROR
            logging.enable_progress_bar()
            monkeypatch.setenv("RANK", "1")
            quiet_libraries(False)  # a non-main rank: silent even without --quiet
            assert not logging.is_progress_bar_enabled()
            with warnings.catch_warnings(record=True) as caught:
                warnings.warn("repeated on every rank")
            assert caught == []
    finally:
        logging.enable_progress_bar()
        logging.set_verbosity_warning()


def test_quiet_keeps_torchs_cpp_warnings_out_of_launched_processes(monkeypatch):
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)
    quiet_children(False)
    assert "TORCH_CPP_LOG_LEVEL" not in os.environ
    quiet_children(True)
    assert os.environ["TORCH_CPP_LOG_LEVEL"] == "ERROR"
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "INFO")  # the user's choice is kept
    quiet_children(True)
    assert os.environ["TORCH_CPP_LOG_LEVEL"] == "INFO"


def test_make_demo_can_run_twice():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    demo = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "--output-dir runs/demo-houlsby" in demo and "--overwrite" in demo
