"""``adapterkit train`` for K-Adapter: pretrain two knowledge adapters, train a task head over
both with ``--knowledge``, and evaluate it from its folder alone (it records where they are)."""

from __future__ import annotations

import json

from test_cli import run_cli, workspace  # noqa: F401 (the fixture)
from test_training import one_thread  # noqa: F401 (autouse fixture)

from adapterkit.formats.native import FORMAT


def train(workspace, output, *extra: str) -> tuple[int, str, str]:
    return run_cli(
        "train", "--model", str(workspace["model"]), "--train-file", str(workspace["train"]),
        "--validation-file", str(workspace["validation"]), "--test-file", str(workspace["test"]),
        "--text-column", "review", "--label-column", "sentiment", "--epochs", "1", "--batch-size", "16",
        "--output-dir", str(output), "--quiet", *extra,
    )  # fmt: skip


def test_pretrain_knowledge_adapters_then_a_task_head_over_both(workspace, tmp_path):
    tiny = ["--option", "bottleneck_size=8", "--option", "num_heads=2", "--option", "transformer_layers=1"]
    for name, combine in (("fac", "concat"), ("lin", "sum")):
        code, out, err = train(workspace, tmp_path / name, "--method", "k_adapter", "--name", name, *tiny,
                               "--option", f"combine={combine}")  # fmt: skip
        assert code == 0, err
        assert json.loads((tmp_path / name / "results.json").read_text())["method"] == "k_adapter"
    before = {n: (tmp_path / n / "best" / "adapter.safetensors").read_bytes() for n in ("fac", "lin")}
    code, out, err = train(workspace, tmp_path / "task", "--method", "k_task", "--name", "task",
                           "--knowledge", str(tmp_path / "fac" / "best"), "--knowledge", str(tmp_path / "lin" / "best"))  # fmt: skip
    assert code == 0, err
    results = json.loads((tmp_path / "task" / "results.json").read_text())
    assert results["method_config"]["adapters"] == ["fac", "lin"] and results["trainable_params"] == 2 * (3 * 32) + 2
    meta = json.loads((tmp_path / "task" / "best" / "adapter_config.json").read_text())
    assert meta["knowledge_adapters"] == {n: str((tmp_path / n / "best").resolve()) for n in ("fac", "lin")}
    assert before == {n: (tmp_path / n / "best" / "adapter.safetensors").read_bytes() for n in ("fac", "lin")}

    code, out, err = run_cli("eval", "--adapter", str(tmp_path / "task" / "best"), "--test-file", str(workspace["test"]),
                             "--text-column", "review", "--label-column", "sentiment")  # fmt: skip
    assert code == 0, err
    assert f"{100 * results['test_metrics']['accuracy']:.2f}" in out or str(round(results["test_metrics"]["accuracy"], 4)) in out
    (tmp_path / "fac").rename(tmp_path / "moved")
    code, out, err = run_cli("eval", "--adapter", str(tmp_path / "task" / "best"), "--test-file", str(workspace["test"]),
                             "--text-column", "review", "--label-column", "sentiment")  # fmt: skip
    assert code == 2 and "reads adapter 'fac', found neither at" in err and "put its saved folder back at one of those" in err


def test_knowledge_is_only_for_k_task(workspace, tmp_path):
    code, out, err = train(workspace, tmp_path / "x", "--method", "houlsby", "--knowledge", str(tmp_path))
    assert code == 2 and "--knowledge loads knowledge adapters for --method k_task, not for houlsby" in err
    for folder in ("a", "b"):  # two knowledge adapters of one name: the head would read only one
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "adapter_config.json").write_text(json.dumps({"format": FORMAT, "name": "fac"}))
    code, out, err = train(workspace, tmp_path / "x", "--method", "k_task",
                           "--knowledge", str(tmp_path / "a"), "--knowledge", str(tmp_path / "b"))  # fmt: skip
    assert code == 2 and f"--knowledge {tmp_path / 'b'} and {(tmp_path / 'a').resolve()} are both adapter 'fac'" in err
    (tmp_path / "run").mkdir()
    (tmp_path / "a").rename(tmp_path / "run" / "best")
    code, out, err = train(workspace, tmp_path / "x", "--method", "k_task", "--knowledge", str(tmp_path / "run"))
    assert code == 2 and f"is a training run folder, not a saved adapter; use {tmp_path / 'run' / 'best'}" in err
