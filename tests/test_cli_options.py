"""Errors in the command line's terms (issue 16): library messages that name Python parameters
(``text_columns=``, ``kind='classification'``, ``batch_size``) name the command's flags when they
reach a command-line user; a wrong label column and a training run's folder are diagnosed as such;
``eval`` and ``predict`` check a file's columns before they load the model (before torch, even).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_cli import run_cli
from test_cli_fast import run_fresh

from adapterkit.data import load_files
from adapterkit.errors import ParameterError
from adapterkit.formats.native import FORMAT


def write_rows(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([header, *rows])
    return path


@pytest.fixture
def reviews(tmp_path) -> Path:
    """40 rows, a distinct review per row and a pos/neg sentiment."""
    return write_rows(tmp_path / "reviews.csv", ["review", "sentiment"],
                      [[f"review number {i} says little", "pos" if i % 2 else "neg"] for i in range(40)])


def test_a_parameter_error_spells_parameters_as_python_keywords_or_as_given():
    error = ParameterError("{where}: use {kind:='classification'} or {text_columns:=}; {batch_size} is {n}", where="f.csv", n=0)
    assert str(error) == "f.csv: use kind='classification' or text_columns=; batch_size is 0"
    flags = {"kind": "--kind", "text_columns": "--text-column", "batch_size": "--batch-size"}
    assert error.spell(flags) == "f.csv: use --kind classification or --text-column; --batch-size is 0"
    assert error.spell({}) == str(error) and isinstance(error, ValueError)


@pytest.mark.parametrize(
    "extra, flag_message, python_word",
    [
        ([], "Name the file's columns with --text-column and --label-column.", "text_columns="),
        (["--text-column", "review", "--label-column", "review"],
         "column 'review' looks like text (40 distinct values in 40 rows), not labels; name the label column with --label-column",
         "label_column="),
        (["--text-column", "review", "--label-column", "sentiment", "--kind", "regression"],
         "is not a number, but the task is a regression; fix the label or load the data with --kind classification",
         "kind="),
        (["--text-column", "review", "--label-column", "sentiment", "--batch-size", "0"], "--batch-size must be a positive integer, got 0",
         "batch_size"),
        (["--text-column", "review", "--label-column", "sentiment", "--lr", "-1"], "--lr must be > 0", "learning_rate"),
        (["--text-column", "review", "--text-column", "a", "--text-column", "b", "--label-column", "sentiment"],
         "--text-column names 3 columns", "text_columns"),
    ],
)
def test_train_errors_name_flags_not_python_keywords(reviews, tmp_path, extra, flag_message, python_word):
    code, _, err = run_cli("train", "--method", "lora", "--model", str(tmp_path / "no-model"), "--train-file", str(reviews),
                           "--output-dir", str(tmp_path / "run"), *extra)
    assert code == 2 and flag_message in err and python_word not in err and "Traceback" not in err


def test_train_checks_a_files_columns_before_importing_torch(reviews, tmp_path):
    probe, _, err = run_fresh("train", "--method", "lora", "--train-file", str(reviews), "--output-dir", str(tmp_path / "run"))
    assert probe["code"] == 2 and "missing column(s) ['text', 'label']" in err and "--text-column" in err
    assert "torch" not in probe["imported"]


def test_too_few_examples_per_label_names_the_validation_file_flag(tmp_path):
    few = write_rows(tmp_path / "few.csv", ["text", "label"], [["good", "pos"], ["bad", "neg"], ["fine", "ok"]])
    code, _, err = run_cli("train", "--method", "lora", "--train-file", str(few), "--output-dir", str(tmp_path / "run"))
    assert code == 2 and "add examples or pass --validation-file" in err


def test_the_library_still_speaks_python(reviews):
    with pytest.raises(ParameterError, match="looks like text .* name the label column with label_column="):
        load_files(reviews, text_columns=("review",), label_column="review")
    with pytest.raises(ValueError, match="Name the file's columns with text_columns= and label_column="):
        load_files(reviews)


def test_a_label_column_of_whole_numbers_suggests_regression(tmp_path):
    scores = write_rows(tmp_path / "scores.csv", ["text", "label"], [[f"text {i}", i] for i in range(40)])
    code, _, err = run_cli("train", "--method", "lora", "--train-file", str(scores), "--output-dir", str(tmp_path / "run"))
    assert code == 2 and "40 distinct whole numbers in 40 rows" in err and "--kind regression" in err


def test_a_few_distinct_labels_are_still_labels(tmp_path):
    """Small files with a label per row keep the message they had (too few per label), not 'looks like text'."""
    rows = [[f"text {i}", f"class{i}"] for i in range(6)]
    small = write_rows(tmp_path / "small.csv", ["text", "label"], rows)
    with pytest.raises(ValueError, match="too few examples per label"):
        load_files(small)


# ---------------------------------------------------------------- eval / predict: checked before the model
def fake_adapter(folder: Path, modality: str = "text") -> Path:
    """An adapter folder's config alone: enough for the checks made before the model loads."""
    folder.mkdir(parents=True)
    meta = {"format": FORMAT, "name": "reviews", "config": {"method": "lora"},
            "head": {"kind": "classification", "num_labels": 2, "label_names": ["neg", "pos"]},
            "task": {"text_columns": ["review"], "modality": modality}, "base_model": {"name_or_path": "minilm"}}
    (folder / "adapter_config.json").write_text(json.dumps(meta))
    return folder


def test_eval_checks_the_test_files_columns_before_importing_torch(tmp_path):
    adapter = fake_adapter(tmp_path / "adapter")
    wrong = write_rows(tmp_path / "wrong.csv", ["text", "label"], [["good", "pos"]])
    probe, _, err = run_fresh("eval", "--adapter", str(adapter), "--test-file", str(wrong))
    assert probe["code"] == 2
    assert "missing column(s) ['review']" in err and "--text-column and --label-column" in err
    assert "torch" not in probe["imported"]


def test_predict_checks_the_inputs_columns_before_importing_torch(tmp_path):
    adapter = fake_adapter(tmp_path / "adapter")
    wrong = write_rows(tmp_path / "inputs.csv", ["text"], [["good"]])
    probe, _, err = run_fresh("predict", "--adapter", str(adapter), "--input", str(wrong))
    assert probe["code"] == 2 and "missing column(s) ['review']" in err and "--text-column" in err
    assert "torch" not in probe["imported"]


def test_eval_on_a_run_folder_names_its_best_adapter(tmp_path):
    run = tmp_path / "runs" / "x"
    fake_adapter(run / "best")
    (run / "checkpoint").mkdir()
    code, _, err = run_cli("eval", "--adapter", str(run), "--task", "trec6")
    assert code == 2 and f"{run} is a training run folder, not a saved adapter; use {run / 'best'}" in err
    unfinished = tmp_path / "runs" / "y"
    (unfinished / "checkpoint").mkdir(parents=True)
    code, _, err = run_cli("predict", "--adapter", str(unfinished))
    assert code == 2 and f"{unfinished} is a training run folder with no best adapter yet" in err


def test_a_base_model_that_is_not_recorded_is_named_with_model(tmp_path):
    from adapterkit.inference.convert import peer_base

    with pytest.raises(ParameterError, match="does not record its base model; name it with model="):
        peer_base(tmp_path, None)
    adapter = fake_adapter(tmp_path / "adapter")
    meta = json.loads((adapter / "adapter_config.json").read_text())
    del meta["base_model"]
    (adapter / "adapter_config.json").write_text(json.dumps(meta))
    code, _, err = run_cli("eval", "--adapter", str(adapter), "--task", "trec6")
    assert code == 2 and "does not record its base model; name it with --model" in err


def test_a_split_left_empty_is_named_with_its_file_parameter(tmp_path):
    import dataclasses

    from test_training import build_tiny_model_dir, fresh, toy_task

    from adapterkit.training import Trainer

    task = dataclasses.replace(toy_task(), validation=[])
    model = fresh(build_tiny_model_dir(tmp_path / "model"), "lora", task)
    with pytest.raises(ParameterError, match=r"has no validation examples; give it some \(validation_file=") as caught:
        Trainer(model, "toy", task)
    assert "(--validation-file, or" in caught.value.spell({"validation_file": "--validation-file"})
