"""``adapterkit report``: a run column, unfinished runs skipped with a note, the plot written under
exactly the name given (or refused before any work), CSV and JSON records, and the plot's shape:
a grid of panels, a shared y scale, the saved share on x, a legend instead of point labels, and
the full fine-tuning and majority-class reference lines.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from test_cli import run_cli, write_csv
from test_training import LABELS, build_tiny_model_dir, one_thread  # noqa: F401 (autouse fixture)

from adapterkit.training import TrainingResult
from adapterkit.training.report_plot import report_figure


def result(method: str = "houlsby", task: str = "toy", score: float = 0.8, trained: int = 20_000, saved: int | None = 20_000,
           majority: float | None = 0.55) -> TrainingResult:
    return TrainingResult(
        adapter=task, method=method, model="tiny", task=task, kind="classification",
        test_metrics={"accuracy": score, "macro_f1": score - 0.01}, validation_metrics={}, trainable_params=trained,
        saved_params=saved, base_params=1_000_000, train_time_s=12.3, peak_memory_bytes=300 * 1024**2,
        memory_measure="cpu_rss_growth", epochs_run=1, best_epoch=1, stopped_early=False, learning_rate=1e-3,
        majority_accuracy=majority,
    )


def run_folder(folder: Path, value: TrainingResult) -> Path:
    value = dataclasses.replace(value, output_dir=str(folder))
    value.save(folder / "results.json")
    return folder


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


# ---------------------------------------------------------------- the table
def test_identical_runs_are_told_apart_by_their_run_folders(tmp_path):
    first = run_folder(tmp_path / "seed0" / "rt-lora", result())
    second = run_folder(tmp_path / "seed1" / "rt-lora", result())
    other = run_folder(tmp_path / "rt-bitfit", result("bitfit"))
    code, out, err = run_cli("report", str(first), str(second), str(other), "--style", "plain")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[-1] == "run" and len(rows) == 3
    assert [row.split()[-1] for row in rows] == ["seed0/rt-lora", "seed1/rt-lora", "rt-bitfit"]


def test_unfinished_and_crashed_runs_are_skipped_with_a_note(tmp_path):
    done = run_folder(tmp_path / "done", result())
    (tmp_path / "unfinished" / "checkpoint").mkdir(parents=True)
    (tmp_path / "crashed").mkdir()
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "results.json").write_text('{"adapter": "x", "meth')
    code, out, err = run_cli("report", str(done), *(str(tmp_path / n) for n in ("unfinished", "crashed", "garbled")))
    assert code == 0, err
    assert out.count("houlsby") == 1
    notes = err.strip().splitlines()
    assert len(notes) == 3 and all(n.startswith("adapterkit report: skipped ") for n in notes)
    assert "train --resume" in notes[0] and "crashed" in notes[1] and "garbled" in notes[2]
    code, _, err = run_cli("report", str(tmp_path / "crashed"))
    assert code == 2 and last_line(err).startswith("adapterkit report: error: no finished run")


def test_csv_and_json_records_carry_the_table_values(tmp_path):
    runs = [run_folder(tmp_path / "a", result()), run_folder(tmp_path / "b", result("prefix", trained=110_000, saved=6_000))]
    code, out, err = run_cli("report", *map(str, runs), "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["run"] for r in rows] == ["a", "b"] and rows[1]["method"] == "prefix"
    assert float(rows[1]["test_accuracy"]) == 0.8 and float(rows[1]["saved_share"]) == pytest.approx(0.006)
    assert float(rows[1]["trainable_share"]) == pytest.approx(0.11) and float(rows[0]["majority_accuracy"]) == 0.55
    code, out, err = run_cli("report", *map(str, runs), "--format", "json")
    assert code == 0, err
    records = json.loads(out)
    assert records[1]["saved_params"] == 6_000 and records[0]["test_macro_f1"] == pytest.approx(0.79)
    code, _, err = run_cli("report", *map(str, runs), "--format", "csv", "--domains")
    assert code == 2 and "--format table" in err


def test_an_old_result_without_a_saved_count_gets_it_from_the_saved_adapter(tmp_path):
    from adapterkit.formats.native import write_adapter

    torch = pytest.importorskip("torch")
    folder = run_folder(tmp_path / "old", result(saved=None))
    data = json.loads((folder / "results.json").read_text())
    del data["saved_params"], data["majority_accuracy"]
    (folder / "results.json").write_text(json.dumps(data))
    write_adapter(folder / "best", {"adapter.a": torch.zeros(3, 4), "head.b": torch.zeros(5)}, {"name": "old"})
    code, out, err = run_cli("report", str(folder), "--format", "json")
    assert code == 0, err
    (record,) = json.loads(out)
    assert record["saved_params"] == 17 and record["majority_accuracy"] is None


# ---------------------------------------------------------------- the plot file
def test_the_plot_is_written_under_exactly_the_name_given(tmp_path):
    run = run_folder(tmp_path / "run", result())
    code, out, err = run_cli("report", str(run), "--plot", str(tmp_path / "cmp"))
    assert code == 0, err
    assert (tmp_path / "cmp").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "cmp.png").exists()
    assert f"plot (PNG): {tmp_path / 'cmp'}" in out
    code, out, err = run_cli("report", str(run), "--plot", str(tmp_path / "cmp.svg"), "--format", "json")
    assert code == 0, err
    assert b"<svg" in (tmp_path / "cmp.svg").read_bytes()[:500] and json.loads(out)[0]["run"] == "run"


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_an_unwritable_plot_path_is_one_line_before_any_work(tmp_path, where):
    run = run_folder(tmp_path / "run", result())
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "a_file").write_text("x")
    plot = tmp_path if where == "folder" else tmp_path / "a_file" / "cmp.png"
    code, out, err = run_cli("report", str(run), str(tmp_path / "unfinished"), "--plot", str(plot))
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"adapterkit report: error: --plot {plot}")  # no skip note


# ---------------------------------------------------------------- the plot's shape
def test_the_plot_is_a_grid_with_a_shared_scale_saved_shares_a_legend_and_reference_lines():
    tasks = [f"task{i}" for i in range(5)]
    results = [result(method, task, score, trained, saved, majority=0.4)
               for task in tasks
               for method, score, trained, saved in (("houlsby", 0.8, 20_000, 20_000), ("prefix", 0.7, 110_000, 6_000),
                                                     ("full", 0.85, 1_000_000, 1_000_000))]
    figure = report_figure(results)
    visible = [axes for axes in figure.axes if axes.get_visible()]
    assert len(visible) == 5 and len(figure.axes) == 6  # 3 columns, wrapped onto 2 rows
    assert visible[0].get_subplotspec().get_geometry()[:2] == (2, 3)
    assert all(axes.get_shared_y_axes().joined(visible[0], axes) for axes in visible)
    prefix_x = visible[0].collections[1].get_offsets()[0][0]
    assert prefix_x == pytest.approx(0.6)  # percent saved, not the 11 % trained
    references = {line.get_label(): line.get_ydata()[0] for line in visible[2].get_lines()}
    assert references == {"full fine-tuning": 0.85, "majority class": 0.4}
    assert all(not axes.texts for axes in visible)  # no point labels to overlap: the legend names the runs
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["houlsby", "prefix", "full", "full fine-tuning", "majority class"]
    assert "saved parameters" in figure.get_supxlabel() and "same scale" in figure.get_supylabel()


def test_without_a_full_run_or_a_majority_there_are_no_reference_lines():
    figure = report_figure([result(majority=None), result("bitfit", saved=100, majority=None)])
    assert figure.axes[0].get_lines() == []


# ---------------------------------------------------------------- recorded at training time
def test_training_records_the_majority_class_accuracy_and_the_saved_count(tmp_path):
    files = [write_csv(tmp_path / f"{split}.csv", count, seed) for split, count, seed in
             (("train", 64, 1), ("validation", 16, 2), ("test", 24, 3))]
    code, _, err = run_cli(
        "train", "--model", str(build_tiny_model_dir(tmp_path / "model")), "--method", "prefix", "--option",
        "prefix_length=2", "--train-file", str(files[0]), "--validation-file", str(files[1]), "--test-file",
        str(files[2]), "--text-column", "review", "--label-column", "sentiment", "--epochs", "1", "--batch-size", "16",
        "--max-length", "16", "--output-dir", str(tmp_path / "run"), "--quiet",
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    labels = [row["sentiment"] for row in csv.DictReader(files[2].open())]
    assert saved["majority_accuracy"] == max(Counter(labels).values()) / len(labels) and set(labels) <= set(LABELS)
    from adapterkit.formats.native import count_saved_values

    assert saved["saved_params"] == count_saved_values(tmp_path / "run" / "best") < saved["trainable_params"]
    assert saved["saved_share"] == pytest.approx(saved["saved_params"] / saved["base_params"])
