"""A store never loses an adapter silently, a fusion refuses adapters that changed under it, and
``fuse --prune`` keeps both fusions, each saved, stored, printed and reported with its own figure.

Runs the CLI in-process on the tiny random BERT of ``test_training`` (see ``test_cli``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli import run_cli, write_csv
from test_training import build_tiny_model_dir, one_thread  # noqa: F401 (autouse fixture)

from adapterkit.formats.digest import adapter_digest
from adapterkit.formats.native import CONFIG_FILE, read_adapter_config
from adapterkit.inference.store import ADAPTER_HASHES, StoreEntryExists, check_store_entry, save_to_store

SMALL = ["--epochs", "1", "--batch-size", "16", "--max-length", "16", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("store")
    data = {"train": write_csv(root / "train.csv", 96, 1), "validation": write_csv(root / "validation.csv", 32, 2),
            "test": write_csv(root / "test.csv", 32, 3)}
    return {
        "root": root,
        "model": build_tiny_model_dir(root / "model"),
        "args": ["--train-file", str(data["train"]), "--validation-file", str(data["validation"]), "--test-file",
                 str(data["test"]), "--text-column", "review", "--label-column", "sentiment"],
        "test": data["test"],
    }


def train(files, store: Path, name: str, method: str = "pfeiffer", *extra: str) -> tuple[int, str, str]:
    return run_cli("train", "--model", str(files["model"]), "--method", method, "--name", name, "--store", str(store),
                   "--output-dir", str(store.parent / "runs" / f"{name}-{method}"), *files["args"], *SMALL,
                   *extra)


@pytest.fixture(scope="module")
def store(files) -> Path:
    """A store with adapters first and second, and fusion both over them (unpruned)."""
    store = files["root"] / "store"
    for name in ("first", "second"):
        code, _, err = train(files, store, name)
        assert code == 0, err
    code, _, err = run_cli("fuse", "--adapters", "first,second", "--store", str(store), "--name", "both",
                           "--output-dir", str(files["root"] / "fusion"), *files["args"], *SMALL)
    assert code == 0, err
    return store


def copy_of(store: Path, tmp_path: Path) -> Path:
    """A copy of ``store`` whose fusion reads the copy's adapters (it records where they were)."""
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    config = copy / "both" / CONFIG_FILE
    meta = json.loads(config.read_text())
    meta["fused_adapters"] = {name: str(copy / name) for name in meta["fused_adapters"]}
    config.write_text(json.dumps(meta))
    return copy


def evaluate(files, adapter: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli("eval", "--adapter", str(adapter), "--test-file", str(files["test"]), "--label-column", "sentiment",
                   "--text-column", "review", *extra)


# ---------------------------------------------------------------- the digest
def test_the_digest_follows_the_weights_and_config_not_the_records(store, tmp_path):
    from adapterkit.formats.native import read_adapter_weights, write_adapter

    meta = read_adapter_config(store / "first")
    tensors = read_adapter_weights(store / "first")
    again = write_adapter(tmp_path / "again", tensors, {**meta, "training": {"other": "records"}, "task": None})
    assert adapter_digest(again) == adapter_digest(store / "first")  # same adapter, other records and place
    key = sorted(tensors)[0]
    changed = write_adapter(tmp_path / "changed", {**tensors, key: tensors[key] + 1e-3}, meta)
    assert adapter_digest(changed) != adapter_digest(store / "first")
    other_config = dict(meta, config={**meta["config"], "non_linearity": "tanh"})
    assert adapter_digest(write_adapter(tmp_path / "config", tensors, other_config)) != adapter_digest(store / "first")


def test_a_saved_fusion_records_the_digest_of_each_adapter_it_fuses(store):
    meta = read_adapter_config(store / "both")
    assert meta[ADAPTER_HASHES] == {n: adapter_digest(store / n) for n in ("first", "second")}
    assert all(h.startswith("sha256:") and len(h) == 7 + 64 for h in meta[ADAPTER_HASHES].values())


# ---------------------------------------------------------------- a store never loses an adapter silently
def test_training_into_a_taken_store_name_is_refused_before_any_work(files, store, tmp_path):
    store = copy_of(store, tmp_path)
    before = (store / "first" / "adapter.safetensors").read_bytes()
    code, out, err = train(files, store, "first", "lora")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "already holds" in err and "a pfeiffer adapter" in err and "--replace-in-store" in err and "--name" in err
    assert not (tmp_path / "runs" / "first-lora").exists()  # refused before training
    assert (store / "first" / "adapter.safetensors").read_bytes() == before


def test_replacing_in_the_store_says_so_and_the_fusion_over_it_then_refuses_to_load(files, store, tmp_path):
    store = copy_of(store, tmp_path)
    recorded = read_adapter_config(store / "both")[ADAPTER_HASHES]["first"]
    code, out, err = train(files, store, "first", "lora", "--replace-in-store")
    assert code == 0, err
    assert "replaced a pfeiffer adapter" in out and "both" in out and "refuse to load until retrained" in out
    assert read_adapter_config(store / "first")["config"]["method"] == "lora"
    found = adapter_digest(store / "first")
    code, out, err = evaluate(files, store / "both")
    assert code == 2 and "Traceback" not in err
    err = err.strip().splitlines()[-1]  # (transformers' own "Loading weights" bar may come before it)
    assert err.startswith("adapterkit eval: error: fusion") and "'first'" in err and recorded[:23] in err and found[:23] in err
    assert "retrain the fusion" in err and "put back" in err


def test_a_fusion_refuses_a_changed_adapter_given_beside_it(files, store, tmp_path):
    store = copy_of(store, tmp_path)
    other = tmp_path / "elsewhere" / "first"
    code, _, err = run_cli("train", "--model", str(files["model"]), "--method", "pfeiffer", "--name", "first",
                           "--seed", "7", "--output-dir", str(tmp_path / "retrained"), *files["args"], *SMALL)
    assert code == 0, err
    shutil.copytree(tmp_path / "retrained" / "best", other)
    lines = tmp_path / "lines.txt"
    lines.write_text("a good film\n")
    code, _, err = run_cli("predict", "--adapters", f"{other},{store / 'second'},{store / 'both'}", "--input", str(lines))
    assert code == 2 and "'first'" in err and str(other) in err
    code, out, err = run_cli("predict", "--adapters", f"{store / 'first'},{store / 'second'},{store / 'both'}",
                             "--input", str(lines))
    assert code == 0, err


def test_a_fusion_saved_before_digests_were_recorded_still_loads(files, store, tmp_path):
    store = copy_of(store, tmp_path)
    config = store / "both" / CONFIG_FILE
    meta = json.loads(config.read_text())
    del meta[ADAPTER_HASHES]
    config.write_text(json.dumps(meta))
    code, out, err = evaluate(files, store / "both")
    assert code == 0, err and "accuracy" in out


def test_save_to_store_claims_the_name_and_never_replaces_unasked(store, tmp_path, files):
    from adapterkit.model import AdapterModel

    store = copy_of(store, tmp_path)
    model = AdapterModel.from_pretrained(str(files["model"]))
    model.load_adapter(store / "first", activate=False)
    before = adapter_digest(store / "second")
    with pytest.raises(StoreEntryExists, match="already holds"):
        save_to_store(model, "first", store)
    model.add_adapter("second", "lora")  # another adapter under a taken name
    with pytest.raises(StoreEntryExists, match="second"):
        save_to_store(model, "second", store)
    assert adapter_digest(store / "second") == before

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    model.save_adapter = broken
    with pytest.raises(RuntimeError):
        save_to_store(model, "first", store / "new")
    assert not (store / "new" / "first").exists()  # the claim is released
    assert check_store_entry(store, "third", replace=False) is None
    assert "read(s) it" in check_store_entry(store, "first", replace=True)


def test_the_server_registry_refuses_a_fusion_over_a_changed_adapter(files, store, tmp_path):
    from adapterkit.model import AdapterModel
    from adapterkit.serve.errors import IncompatibleAdapter
    from adapterkit.serve.registry import AdapterRegistry

    store = copy_of(store, tmp_path)
    model = AdapterModel.from_pretrained(str(files["model"]))
    assert AdapterRegistry(model, store).ensure(["both"]) == ["first", "second", "both"]
    code, _, err = train(files, store, "second", "houlsby", "--replace-in-store")
    assert code == 0, err
    fresh = AdapterModel.from_pretrained(str(files["model"]))
    with pytest.raises(IncompatibleAdapter, match="'second'"):
        AdapterRegistry(fresh, store).ensure(["both"])


# ---------------------------------------------------------------- fuse --prune keeps both fusions
@pytest.mark.parametrize("more_epochs", [0, 1])
def test_fuse_prune_saves_stores_prints_and_reports_each_fusion_with_its_own_figure(files, store, tmp_path, more_epochs):
    store = copy_of(store, tmp_path)
    output = tmp_path / "pruning"
    code, out, err = run_cli("fuse", "--adapters", "first,second", "--store", str(store), "--name", "pruned_both",
                             "--prune", "1", "--prune-epochs", str(more_epochs), "--output-dir", str(output),
                             *files["args"], *SMALL)
    assert code == 0, err
    whole, pruned = (json.loads((output / p / "results.json").read_text()) for p in (".", "pruned"))
    assert whole["method_config"]["adapters"] == ["first", "second"] and len(pruned["method_config"]["adapters"]) == 1
    assert read_adapter_config(output / "best")["config"]["adapters"] == ["first", "second"]  # the unpruned stays
    kept = read_adapter_config(output / "pruned" / "best")
    assert kept["config"]["adapters"] == pruned["method_config"]["adapters"] == list(kept[ADAPTER_HASHES])
    stored = read_adapter_config(store / "pruned_both")
    assert stored["config"]["adapters"] == kept["config"]["adapters"]  # the store gets the pruned one, said so
    assert "the pruned fusion of" in out and str(output / "pruned" / "best") in out
    # each folder evaluates to its own results.json figure
    for folder, result in ((output / "best", whole), (output / "pruned" / "best", pruned), (store / "pruned_both", pruned)):
        code, shown, err = evaluate(files, folder, "--json")
        assert code == 0, err
        assert json.loads(shown)["accuracy"] == pytest.approx(result["test_metrics"]["accuracy"])
    assert f"accuracy {pruned['test_metrics']['accuracy']:.4f}" in out.split("pruned to")[1]
    # the report of the run folder shows both runs, each with its own figure and name
    code, report, err = run_cli("report", str(output), "--format", "json")
    assert code == 0, err
    rows = {row["run"]: row for row in json.loads(report)}
    assert set(rows) == {"pruning", "pruned"}
    assert rows["pruning"]["test_accuracy"] == whole["test_metrics"]["accuracy"]
    assert rows["pruned"]["test_accuracy"] == pruned["test_metrics"]["accuracy"]


def test_fuse_refuses_a_taken_store_name_and_a_prune_count_that_keeps_everything(files, store, tmp_path):
    code, _, err = run_cli("fuse", "--adapters", "first,second", "--store", str(store), "--name", "both",
                           "--output-dir", str(tmp_path / "again"), *files["args"], *SMALL)
    assert code == 2 and "already holds" in err and not (tmp_path / "again").exists()
    code, _, err = run_cli("fuse", "--adapters", "first,second", "--store", str(store), "--prune", "2",
                           "--output-dir", str(tmp_path / "again"), *files["args"], *SMALL)
    assert code == 2 and "1 <= K < 2" in err


def test_a_k_task_records_and_checks_its_knowledge_adapters_the_same_way(files, tmp_path):
    tiny = ["--option", "bottleneck_size=8", "--option", "num_heads=2", "--option", "transformer_layers=1"]

    def knowledge(seed: str) -> None:
        code, _, err = run_cli("train", "--model", str(files["model"]), "--method", "k_adapter", "--name", "fac", *tiny,
                               "--seed", seed, "--output-dir", str(tmp_path / f"fac{seed}"), *files["args"], *SMALL)
        assert code == 0, err
        shutil.rmtree(tmp_path / "fac", ignore_errors=True)
        shutil.copytree(tmp_path / f"fac{seed}", tmp_path / "fac")

    knowledge("0")
    code, _, err = run_cli("train", "--model", str(files["model"]), "--method", "k_task", "--name", "task",
                           "--knowledge", str(tmp_path / "fac" / "best"), "--output-dir", str(tmp_path / "task"),
                           *files["args"], *SMALL)
    assert code == 0, err
    assert read_adapter_config(tmp_path / "task" / "best")[ADAPTER_HASHES] == {"fac": adapter_digest(tmp_path / "fac" / "best")}
    assert evaluate(files, tmp_path / "task" / "best")[0] == 0
    knowledge("1")  # retrained, and put where the first one was
    code, _, err = evaluate(files, tmp_path / "task" / "best")
    assert code == 2 and "k_task" in err and "'fac'" in err and "retrain the k_task" in err
