"""Regression tests for reported faults (issue 15): a merged LoRA leaking into other passes (1),
LoRA merging in half precision (2), AdapterFusion over Houlsby adapters and what cannot be fused
(3), a frozen fusion's regulariser (4), padding and sequence-level methods on decoders (5), the
base-model check across dtypes (6), Parallel/Routed over adapters of different options (7),
per-row adapters through beam search and sampling (8), the length budget of prompts (9a), empty
inputs (9b) and regression labels shaped (batch, 1) (10).

Tiny random models (``tiny_models``) and the word-level tokenizer of ``test_training``; no network.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_cli import run_cli, write_csv
from test_data import bundled
from test_training import LABELS, build_tiny_model_dir, tiny_tokenizer
from tiny_models import adamw_steps, randomize, tiny_base, tiny_batch
from transformers import AutoConfig, BertConfig, BertModel

from adapterkit import AdapterDrop, AdapterModel, Fuse, HeadConfig, Parallel, Routed, Stack
from adapterkit.data import Example, available_tasks, load_files
from adapterkit.data.task import require_text
from adapterkit.data.image_tasks import IMAGE_TASKS
from adapterkit.formats.fingerprint import base_fingerprint, checkpoint_identity, compare_bases
from adapterkit.heads import head_loss
from adapterkit.inference.multitask import predict_tasks
from adapterkit.training import evaluate, predict

ALL_ROLES = ["q", "k", "v", "o", "ffn_in", "ffn_out"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny BERT and its tokenizer saved with ``save_pretrained`` (float32)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("checkpoint") / "tiny bert")


def load(checkpoint: Path, dtype: torch.dtype) -> AdapterModel:
    return AdapterModel.from_pretrained(str(checkpoint), dtype=dtype)


# ---------------------------------------------------------------- fault 2: LoRA merge/unmerge is lossless
def add_lora(model: AdapterModel, name: str, seed: int) -> None:
    """A LoRA on every projection with a realistic trained update: B ~ N(0, 1e-3)."""
    model.add_adapter(name, "lora", HeadConfig(num_labels=3, dropout=0.0), r=4, targets=ALL_ROLES)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.adapter_parameters(name).items():
            if "lora_B" in key:
                param.copy_(1e-3 * torch.randn(param.shape, generator=generator))


def lora_weights(model: AdapterModel, name: str) -> list[torch.Tensor]:
    """Copies of the weights of the projections adapter ``name`` adapts."""
    return [site.output_module.weight.detach().clone() for site, _ in model.adapters[name].attachments()]


def assert_weights(model: AdapterModel, name: str, expected: list[torch.Tensor]) -> None:
    for weight, want in zip(lora_weights(model, name), expected, strict=True):
        assert torch.equal(weight, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_lora_merge_then_unmerge_leaves_the_base_and_other_adapters_bit_identical(arch, dtype):
    model = AdapterModel(tiny_base(arch).to(dtype))
    model.add_adapter("other", "pfeiffer", HeadConfig(num_labels=3, dropout=0.0), bottleneck_size=4)
    add_lora(model, "lora", seed=0)
    batch = tiny_batch()
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    other_before = model(**batch, adapters="other").logits
    model.merge_adapter("lora")
    model.merge_adapter("lora")  # idempotent
    adapted = len(list(model.adapters["lora"].attachments()))
    assert sum(not torch.equal(v, base_before[k]) for k, v in model.base.state_dict().items()) == adapted
    model.unmerge_adapter("lora")
    model.unmerge_adapter("lora")
    for key, value in model.base.state_dict().items():
        assert torch.equal(value, base_before[key]), key
    assert torch.equal(model(**batch, adapters="other").logits, other_before)


def test_one_adapter_is_merged_at_a_time():
    model = AdapterModel(tiny_base("llama").to(torch.bfloat16))
    add_lora(model, "first", seed=1)
    add_lora(model, "second", seed=2)
    original = lora_weights(model, "first")
    model.merge_adapter("first")
    merged_already = r"adapter 'first' is merged already \(one merged adapter at a time\); call model\.unmerge_adapter\('first'\) first"
    with pytest.raises(ValueError, match=merged_already):
        model.merge_adapter("second")
    assert not model.adapters["second"].merged
    model.unmerge_adapter("first")
    model.merge_adapter("second")
    model.unmerge_adapter("second")
    assert_weights(model, "first", original)


def test_merge_and_unload_keeps_the_update_as_the_new_base():
    model = AdapterModel(tiny_base("llama").to(torch.bfloat16))
    add_lora(model, "first", seed=1)
    add_lora(model, "second", seed=2)
    fingerprint = model.fingerprint
    model.merge_adapter("first")
    first_merged = lora_weights(model, "first")
    model.merge_and_unload("first")
    assert "first" not in model.adapters and model.merged_adapter is None
    assert model.fingerprint != fingerprint  # another base now: adapters of the old one are refused
    assert_weights(model, "second", first_merged)  # the update stays in the base
    model.merge_adapter("second")
    model.unmerge_adapter("second")  # back to the new base, not to the one before "first"
    assert_weights(model, "second", first_merged)


def test_base_output_is_the_unmerged_projection_and_the_kept_weight_is_never_saved(tmp_path):
    model = AdapterModel(tiny_base("llama").to(torch.bfloat16))
    add_lora(model, "lora", seed=0)
    site, delta = next(iter(model.adapters["lora"].attachments()))
    linear = site.output_module
    x = torch.randn(3, 5, linear.in_features, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    before = linear(x)
    weights_before = lora_weights(model, "lora")
    keys = set(model.state_dict())
    model.merge_adapter("lora")
    assert not torch.equal(linear(x), before)
    assert torch.equal(delta.base_output(x), before)
    assert set(model.state_dict()) == keys
    model.save_adapter("lora", tmp_path / "lora")
    assert set(load_file(str(tmp_path / "lora" / "adapter.safetensors"))) == set(model.adapter_parameters("lora"))
    model.unmerge_adapter("lora")
    assert torch.equal(delta.base_output(x), before)
    # the kept weight follows the model to another dtype: unmerging there restores the converted base
    model.merge_adapter("lora")
    model.to(torch.float32)
    model.unmerge_adapter("lora")
    assert_weights(model, "lora", [w.float() for w in weights_before])


# ---------------------------------------------------------------- fault 6: the base check across dtypes
def test_an_adapter_trained_on_a_bfloat16_load_loads_into_the_float32_and_float16_loads(checkpoint, tmp_path):
    trained = load(checkpoint, torch.bfloat16)
    assert trained.fingerprint == load(checkpoint, torch.float32).fingerprint
    trained.add_adapter("task", "pfeiffer", HeadConfig(num_labels=2), bottleneck_size=4)
    trained.save_adapter("task", tmp_path / "task")
    saved = json.loads((tmp_path / "task" / "adapter_config.json").read_text())["base_model"]
    assert saved["dtype"] == "bfloat16" and saved["fingerprint_version"] == 2
    for dtype in (torch.float32, torch.float16):
        model = load(checkpoint, dtype)
        assert model.load_adapter(tmp_path / "task") == "task"


def test_a_base_with_other_weights_is_refused_saying_the_weights_differ(checkpoint, tmp_path):
    trained = load(checkpoint, torch.bfloat16)
    trained.add_adapter("task", "pfeiffer", HeadConfig(num_labels=2), bottleneck_size=4)
    trained.save_adapter("task", tmp_path / "task")
    torch.manual_seed(1)
    other = AdapterModel(BertModel(AutoConfig.from_pretrained(checkpoint)).eval())
    message = (
        rf"trained on base model {checkpoint} \(bfloat16\), but this model is bert \(float32\): same architecture, "
        r"different weights \(\d+ of \d+ probed values differ, e\.g\. `[\w.]+`: saved \S+, here \S+\); "
        r"load it into the model it was trained on"
    )
    with pytest.raises(ValueError, match=message):
        other.load_adapter(tmp_path / "task")


def test_another_architecture_is_refused_saying_so(checkpoint, tmp_path):
    trained = load(checkpoint, torch.float32)
    trained.add_adapter("task", "pfeiffer", HeadConfig(num_labels=2), bottleneck_size=4)
    trained.save_adapter("task", tmp_path / "task")
    llama = AdapterModel(tiny_base("llama"))
    message = (
        r"but this model is llama \(float32\): different architecture \(saved: bert, 2 layers, hidden 32, "
        r"39 parameter tensors; here: llama, 2 layers, hidden 32, 21 parameter tensors; e\.g\. "
        r"`embeddings\.LayerNorm\.bias` is only in the saved model\); load it into the model it was trained on"
    )
    with pytest.raises(ValueError, match=message):
        llama.load_adapter(tmp_path / "task")


def test_compare_bases_accepts_a_float16_load_only_within_half_precision_rounding():
    saved = checkpoint_identity(tiny_base("bert"))
    here = checkpoint_identity(tiny_base("bert").half())
    here["fingerprint"] = "f" * 16  # as when float16 rounding moves a sampled value by a bfloat16 step
    assert compare_bases(saved, here) is None
    # float32 and bfloat16 loads of one checkpoint hash equal, so there a differing fingerprint is a difference
    assert compare_bases(saved, {**here, "dtype": "bfloat16"}) == (
        f"same architecture, different weights (all 78 probed values agree, but the sampled weights differ: "
        f"fingerprint {saved['fingerprint']} saved, {'f' * 16} here)"
    )
    name = "embeddings.word_embeddings.weight"
    value = here["probe"][name]["values"][1]  # the middle value (the first is the padding row's 0)
    here["probe"][name]["values"][1] = value * (1 + 2.0**-6)
    assert compare_bases(saved, here) == (
        f"same architecture, different weights (1 of 78 probed values differ, e.g. `{name}`: "
        f"saved {saved['probe'][name]['values'][1]:.6g}, here {value * (1 + 2.0**-6):.6g})"
    )


def fingerprint_before_version_2(model: torch.nn.Module) -> str:
    """The fingerprint adapterkit saved before version 2: values sampled as loaded, in float32."""
    digest = hashlib.sha256(model.config.model_type.encode())
    for name, param in model.named_parameters():
        flat = param.detach().reshape(-1)
        digest.update(f"{name}:{tuple(param.shape)}".encode())
        digest.update(flat[:: max(1, flat.numel() // 4096)][:4096].float().numpy().tobytes())
    return digest.hexdigest()[:16]


def test_an_adapter_saved_before_fingerprint_version_2_still_loads_into_its_base(tmp_path):
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("task", "pfeiffer", HeadConfig(num_labels=2), bottleneck_size=4)
    model.save_adapter("task", tmp_path / "task")
    config_file = tmp_path / "task" / "adapter_config.json"
    meta = json.loads(config_file.read_text())
    old_keys = ("model_type", "name_or_path", "num_layers", "hidden_size")
    meta["base_model"] = {key: meta["base_model"][key] for key in old_keys}
    meta["base_model"]["fingerprint"] = fingerprint_before_version_2(model.base)
    assert base_fingerprint(model.base, version=1) == meta["base_model"]["fingerprint"]
    config_file.write_text(json.dumps(meta))
    assert AdapterModel(tiny_base("bert")).load_adapter(tmp_path / "task") == "task"
    with pytest.raises(ValueError, match=r"\(dtype not recorded\), but this model is bert \(float32\): same "
                       r"architecture, different weights \(fingerprint \w+ saved, \w+ here; an adapter saved before"):
        AdapterModel(tiny_base("bert", seed=1)).load_adapter(tmp_path / "task")


# ---------------------------------------------------------------- fault 9b: empty inputs
EMPTY = "empty text (or whitespace only); give every input some text, or drop the row"


@pytest.fixture(scope="module")
def decoder() -> AdapterModel:
    """A tiny Llama with two classification adapters and the word-level tokenizer."""
    model = AdapterModel(tiny_base("llama"), tokenizer=tiny_tokenizer())
    for name in ("task", "other"):
        model.add_adapter(name, "lora", HeadConfig(num_labels=2, pooling="last", label_names=LABELS), r=2)
    return model


def test_predict_and_evaluate_refuse_an_empty_input_naming_it(decoder):
    assert len(predict(decoder, ["good film", "bad plot"], "task")) == 2
    with pytest.raises(ValueError, match=r"^texts\[0\]: " + EMPTY.replace("(", r"\(").replace(")", r"\)")):
        predict(decoder, [""], "task")
    with pytest.raises(ValueError, match=r"^texts\[1\]: empty text \(or whitespace only\)"):
        predict(decoder, ["good film", " \t ", "bad plot"], "task")
    with pytest.raises(ValueError, match=r"^texts\[0\]: empty text \(text 2 of the pair\)"):
        predict(decoder, [("good film", " ")], "task")
    with pytest.raises(ValueError, match=r"^examples\[1\]: empty text"):
        evaluate(decoder, [Example(("good film",), 1), Example(("",), 0)], "task")
    with pytest.raises(ValueError, match=r"^texts\[2\]: empty text"):
        predict_tasks(decoder, ["good film", "bad plot", "\n"], Parallel("task", "other"))


@pytest.fixture(scope="module")
def saved_adapter(checkpoint, tmp_path_factory) -> Path:
    model = load(checkpoint, torch.float32)
    model.add_adapter("task", "pfeiffer", HeadConfig(num_labels=2, label_names=LABELS), bottleneck_size=4)
    return model.save_adapter("task", tmp_path_factory.mktemp("adapter") / "task")


@pytest.mark.parametrize("value", ["", "   ", None])
def test_cli_predict_refuses_an_empty_jsonl_row_naming_file_and_line(saved_adapter, tmp_path, value):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"text": "good film"}) + "\n\n" + json.dumps({"text": value}) + "\n")
    code, out, err = run_cli("predict", "--adapter", str(saved_adapter), "--input", str(rows))
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1] == (  # after the progress bar of loading the model
        f"adapterkit predict: error: {rows} line 3: empty text in column 'text' (or whitespace only); "
        "give every input some text, or drop the row"
    )


def test_cli_predict_skips_blank_lines_of_plain_text(saved_adapter, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("good film\nbad plot\n"))
    code, expected, err = run_cli("predict", "--adapter", str(saved_adapter))
    assert code == 0, err
    monkeypatch.setattr("sys.stdin", io.StringIO("\ngood film\n   \n\t\nbad plot\n\n"))
    code, out, err = run_cli("predict", "--adapter", str(saved_adapter))
    assert code == 0, err
    assert out == expected and len(out.splitlines()) == 2


def test_training_files_refuse_an_empty_text_of_a_pair(tmp_path):
    train = tmp_path / "pairs.tsv"
    train.write_text("premise\thypothesis\tlabel\na cat\ta pet\tyes\na dog\t  \tno\n")
    with pytest.raises(ValueError, match=rf"pairs\.tsv line 3: empty text in column 'hypothesis' \(or whitespace only\)"):
        load_files(train, text_columns=("premise", "hypothesis"))


def test_bundled_tasks_hold_no_empty_text():
    missing = []
    text_tasks = [name for name in available_tasks() if name not in IMAGE_TASKS]
    for name in text_tasks:
        try:
            task = bundled(name)
        except ModuleNotFoundError as error:  # its data package is not installed
            missing.append(f"{name}: {error}")
            continue
        for split, examples in (("train", task.train), ("validation", task.validation), ("test", task.test)):
            for index, example in enumerate(examples):
                require_text(example.texts, f"task {name!r} {split}[{index}]")
    if len(missing) == len(text_tasks):
        pytest.skip("no bundled data package is installed: " + "; ".join(missing))


# ---------------------------------------------------------------- fault 10: label shapes in head_loss
REGRESSION = HeadConfig(kind="regression", num_labels=1)
CLASSIFICATION = HeadConfig(num_labels=4)
PREDICTED = torch.tensor([0.1, 0.5, -0.3])
SCORES = torch.tensor([1.0, -0.5, 0.7])


def test_regression_loss_is_the_same_for_labels_shaped_b_and_b1():
    expected = (0.9**2 + 1.0**2 + 1.0**2) / 3  # mean of (score - prediction)^2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no broadcasting warning either
        for labels in (SCORES, SCORES[:, None]):
            assert head_loss(REGRESSION, PREDICTED, labels).item() == pytest.approx(expected, rel=1e-6)


def test_classification_loss_is_the_same_for_labels_shaped_b_and_b1():
    logits = torch.tensor([[0.2, -1.0, 0.5, 0.0], [1.5, 0.3, -0.2, 0.1], [0.0, 0.0, 0.4, -0.8]])
    classes = torch.tensor([2, 0, 3])
    expected = -(logits[range(3), classes] - logits.exp().sum(1).log()).mean().item()
    for labels in (classes, classes[:, None], classes.float()):  # float class ids: mixed multi-task batches
        assert head_loss(CLASSIFICATION, logits, labels).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "config, logits, labels, message",
    [
        (REGRESSION, PREDICTED, torch.zeros(3, 2), r"regression labels of shape \(3, 2\) do not fit logits of shape "
         r"\(3,\): give one score per row, shape \(3,\) or \(3, 1\)"),
        (REGRESSION, PREDICTED, torch.zeros(1, 3), r"labels of shape \(1, 3\) do not fit"),
        (REGRESSION, PREDICTED, torch.zeros(4), r"labels of shape \(4,\) do not fit"),
        (REGRESSION, PREDICTED[:, None], SCORES, r"a regression head's logits must have shape \(batch,\), got \(3, 1\)"),
        (CLASSIFICATION, torch.zeros(3, 4), torch.zeros(3, 4), r"classification labels of shape \(3, 4\) do not fit "
         r"logits of shape \(3, 4\): give one class id per row, shape \(3,\) or \(3, 1\)"),
        (CLASSIFICATION, torch.zeros(3, 4), torch.zeros(3, 1, 1, dtype=torch.long), r"labels of shape \(3, 1, 1\)"),
    ],
)
def test_label_shapes_that_cannot_be_meant_are_refused(config, logits, labels, message):
    with pytest.raises(ValueError, match=message):
        head_loss(config, logits, labels)


def test_every_setup_gives_the_mean_squared_error_for_a_column_of_scores():
    model = AdapterModel(tiny_base("bert"))
    for name in ("a", "b"):
        model.add_adapter(name, "pfeiffer", HeadConfig(kind="regression", num_labels=1, dropout=0.0), bottleneck_size=4)
    batch = tiny_batch()
    column = SCORES[:, None]
    single = model(**batch, labels=column, adapters="a")
    assert single.loss.item() == pytest.approx(F.mse_loss(single.logits, SCORES).item(), rel=1e-6)
    parallel = model(**batch, labels={"a": column, "b": SCORES}, adapters=Parallel("a", "b"))
    expected = sum(F.mse_loss(parallel.tasks[name].logits, SCORES).item() for name in ("a", "b"))
    assert parallel.loss.item() == pytest.approx(expected, rel=1e-6)
    routed = model(**batch, labels=column, adapters=Routed(["a", "b", "a"]))
    assert routed.loss.item() == pytest.approx(F.mse_loss(routed.logits, SCORES).item(), rel=1e-6)


# ---------------------------------------------------------------- fault 1: a merged LoRA leaks into nothing else
# A merged adapter lives in the base weights; every pass that does not run it computes the merged
# projections from the kept original weights (``LoraDelta.base_output``), which is the very
# ``F.linear`` the base computed before the merge: those comparisons are bit-exact. A pass that
# runs the merged adapter computes ``(W + s·BA) x`` instead of ``W x + s·B(A x)``; that differs
# by float32 rounding only, hence 1e-5 there.
MERGE_ATOL = 1e-5



def merge_model(seed: int = 0) -> AdapterModel:
    """A tiny BERT with LoRA ``l`` (non-zero B on every projection) and, to check for leaks, other
    adapters of several kinds: a Pfeiffer, a Houlsby, a BitFit, a prefix and a second LoRA on the
    same projections, each with a 3-way head."""
    model = AdapterModel(tiny_base("bert"))
    add_lora(model, "l", seed=seed)
    others = {
        "pf": ("pfeiffer", {"bottleneck_size": 4}),
        "hb": ("houlsby", {"bottleneck_size": 4}),
        "bf": ("bitfit", {}),
        "px": ("prefix", {"prefix_length": 3, "reparameterize": False}),
    }
    for k, (name, (method, options)) in enumerate(others.items()):
        torch.manual_seed(k)
        model.add_adapter(name, method, HeadConfig(num_labels=3, dropout=0.0), **options)
        randomize(model.adapters[name], seed=10 + k)
    add_lora(model, "l2", seed=seed + 1)
    return model.eval()


OTHER_SETUPS = ["pf", "hb", "bf", "px", "l2", ["l2", "pf"], Routed(["pf", None, "l2"]), Parallel("pf", "hb")]


def outputs(model: AdapterModel, batch, setups) -> list:
    """Logits (or every task's logits) of ``setups``, and the plain base's hidden states."""
    results = []
    with torch.no_grad():
        for setup in setups:
            out = model(**batch, adapters=setup)
            results.append({t: o.logits for t, o in out.tasks.items()} if hasattr(out, "tasks") else out.logits)
        results.append(model(**batch, adapters=None).last_hidden_state)
        with model.using(None):
            results.append(model.body(**batch).last_hidden_state)
    return results


def test_a_merged_lora_leaves_the_plain_base_and_every_other_adapter_bit_identical():
    model, batch = merge_model(), tiny_batch()
    before = outputs(model, batch, OTHER_SETUPS)
    with torch.no_grad():
        own = {s: model(**batch, adapters=s).logits for s in ("l", ("l", "pf"))}
        dropped = {r: model(**batch, adapters=AdapterDrop("l", first=1, robust=r)).logits for r in (False, True)}
        routed = model(**batch, adapters=Routed(["l", "pf", None]))
    model.merge_adapter("l")
    after = outputs(model, batch, OTHER_SETUPS)
    for setup, want, got in zip([*OTHER_SETUPS, "None", "using(None)"], before, after):
        if isinstance(want, dict):
            assert all(torch.equal(got[t], want[t]) for t in want), setup
        else:
            assert torch.equal(got, want), setup
    assert not torch.equal(own["l"], before[0])  # the update is not negligible
    with torch.no_grad():
        for setup, want in own.items():  # passes that run the merged adapter use the merged weights
            torch.testing.assert_close(model(**batch, adapters=setup).logits, want, rtol=0, atol=MERGE_ATOL)
        # AdapterDrop: layer 0 runs no adapter, the merged one included (robust: unmerged in every layer)
        fixed = model(**batch, adapters=AdapterDrop("l", first=1)).logits
        torch.testing.assert_close(fixed, dropped[False], rtol=0, atol=MERGE_ATOL)
        assert torch.equal(model(**batch, adapters=AdapterDrop("l", first=1, robust=True)).logits, dropped[True])
        merged_routed = model(**batch, adapters=Routed(["l", "pf", None]))
        assert all(torch.equal(merged_routed[t].logits, routed[t].logits) for t in ("l", "pf"))


@pytest.mark.parametrize("method, options", [("pfeiffer", {"bottleneck_size": 4}), ("lora", {"r": 2, "targets": ALL_ROLES})])
def test_training_another_adapter_while_a_lora_is_merged_gives_the_weights_of_training_it_unmerged(method, options):
    batch, labels = tiny_batch(), torch.tensor([0, 2, 1])
    trained = []
    for merged in (False, True):
        model = merge_model()
        torch.manual_seed(5)
        model.add_adapter("task", method, HeadConfig(num_labels=3, dropout=0.0), **options)
        if merged:
            model.merge_adapter("l")
        model.train_adapter("task")
        model.train()
        adamw_steps(model, batch, labels, 3)
        trained.append({k: v.detach().clone() for k, v in model.adapter_parameters("task").items()})
    # the same float operations in the same order: bit-identical, not only close
    assert all(torch.equal(trained[1][k], v) for k, v in trained[0].items())


def test_adapters_saved_while_a_lora_is_merged_reload_with_identical_logits(tmp_path):
    model, batch = merge_model(), tiny_batch()
    fingerprint, identity = model.fingerprint, model.base_identity()
    model.merge_adapter("l")
    assert model.fingerprint == fingerprint and model.base_identity() == identity  # the base is the same model
    with torch.no_grad():
        expected = {name: model(**batch, adapters=name).logits for name in ("pf", "px", "l")}
    for name in expected:
        model.save_adapter(name, tmp_path / name)
    fresh = AdapterModel(tiny_base("bert")).eval()
    for name, want in expected.items():
        fresh.load_adapter(tmp_path / name)
        with torch.no_grad():
            got = fresh(**batch, adapters=name).logits
        if name == "l":  # saved as its low-rank factors: runs unmerged in the fresh model
            torch.testing.assert_close(got, want, rtol=0, atol=MERGE_ATOL)
        else:
            assert torch.equal(got, want), name
    # a merged model loads adapters saved before fingerprint version 2, computed on the unmerged base
    meta_file = tmp_path / "pf" / "adapter_config.json"
    meta = json.loads(meta_file.read_text())
    old_keys = ("model_type", "name_or_path", "num_layers", "hidden_size")
    meta["base_model"] = {key: meta["base_model"][key] for key in old_keys}
    meta["base_model"]["fingerprint"] = fingerprint_before_version_2(fresh.base)
    meta_file.write_text(json.dumps(meta))
    assert model.load_adapter(tmp_path / "pf", name="pf_again") == "pf_again"
    with torch.no_grad():
        assert torch.equal(model(**batch, adapters="pf_again").logits, expected["pf"])
    # merge_and_unload makes the merged weights the base: another model, another fingerprint
    model.merge_and_unload("l")
    assert model.fingerprint != fingerprint


def test_deleting_a_merged_lora_restores_the_base_bit_for_bit():
    model, batch = merge_model(), tiny_batch()
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    with torch.no_grad():
        plain = model.body(**batch).last_hidden_state  # outside any pass: the base weights as they are
    model.merge_adapter("l")
    model.delete_adapter("l")
    assert model.merged_adapter is None and "l" not in model.adapters
    assert all(torch.equal(v, base_before[k]) for k, v in model.base.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model.body(**batch).last_hidden_state, plain)
    model.merge_adapter("l2")  # another adapter can be merged now


def test_training_a_merged_lora_is_refused_saying_how_to_unmerge_it():
    model = merge_model()
    model.merge_adapter("l")
    with pytest.raises(ValueError, match=r"adapter 'l' is merged into the base weights; call model\.unmerge_adapter\('l'\)"):
        model.train_adapter("l")
    model.unmerge_adapter("l")
    model.train_adapter("l")


def test_adding_and_loading_adapters_while_a_lora_is_merged(tmp_path):
    """Adapters initialised from the plain base's activations (a prefix from real tokens, a deep
    prompt) get exactly the values they get on an unmerged model; loading works."""
    built = []
    for merged in (False, True):
        model = merge_model()
        if merged:
            model.merge_adapter("l")
        torch.manual_seed(3)
        model.add_adapter("vocab_prefix", "prefix", HeadConfig(num_labels=3, dropout=0.0), prefix_length=4,
                          reparameterize=False, init="vocab")
        torch.manual_seed(4)
        model.add_adapter("deep", "deep_prompt", HeadConfig(num_labels=3, dropout=0.0), prompt_length=3)
        model.add_adapter("more", "lora", HeadConfig(num_labels=3, dropout=0.0), r=2, targets=ALL_ROLES)
        model.eval()
        built.append(model)
    for name in ("vocab_prefix", "deep"):
        want, got = (m.adapter_state(name).tensors() for m in built)
        assert all(torch.equal(got[k], v) for k, v in want.items()), name
    unmerged, merged = built
    unmerged.save_adapter("deep", tmp_path / "deep")
    merged.load_adapter(tmp_path / "deep", name="deep_loaded")
    batch = tiny_batch()
    with torch.no_grad():
        assert torch.equal(merged(**batch, adapters="deep_loaded").logits, unmerged(**batch, adapters="deep").logits)
        assert torch.equal(merged(**batch, adapters="more").logits, unmerged(**batch, adapters="more").logits)


# ---------------------------------------------------------------- fault 3: AdapterFusion over Houlsby adapters
def houlsby_fusion(seed: int = 0, residual_before: bool = True) -> AdapterModel:
    """A tiny BERT with Houlsby adapters ``a`` and ``b`` (bottlenecks after attention and FFN and
    layer-norm deltas, all non-zero) and fusion ``f`` over them with the default sublayers."""
    model = AdapterModel(tiny_base("bert"))
    for k, name in enumerate("ab"):
        torch.manual_seed(seed + k)
        model.add_adapter(name, "houlsby", HeadConfig(num_labels=3, dropout=0.0), bottleneck_size=4)
        randomize(model.adapters[name], seed=seed + 20 + k)
    torch.manual_seed(seed + 9)
    model.add_adapter("f", "fusion", HeadConfig(num_labels=2, dropout=0.0), adapters=("a", "b"), residual_before=residual_before)
    randomize(model.adapters["f"], seed=seed + 99)
    return model.eval()


def houlsby_module(model: AdapterModel, name: str, layer: int, position: str):
    return model.adapters[name].layers[str(layer)][position]


def fused_by_hand(model: AdapterModel, batch, mix) -> torch.Tensor:
    """Final hidden states of the plain base with, at every sublayer output (``attn``, ``ffn``) and
    layer norm (``attn_norm``, ``ffn_norm``) of every layer, ``mix(layer, position, x, out,
    outputs)`` of the adapters' outputs there (``x``: the norm's input)."""
    handles = []
    for layer in range(model.parts.num_layers):
        for position in ("attn", "attn_norm", "ffn", "ffn_norm"):
            module = model.sites[f"{layer}.{position}"].output_module

            def hook(m, args, out, layer=layer, position=position):
                x = args[0] if position.endswith("norm") else None
                adapted = [houlsby_module(model, n, layer, position)(x, out) for n in "ab"]
                return mix(layer, position, x, out, adapted)

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model.body(**batch).last_hidden_state
    finally:
        for handle in handles:
            handle.remove()


def fused_hidden(model: AdapterModel, batch, setup="f") -> torch.Tensor:
    with torch.no_grad(), model.using(setup):
        return model.body(**batch).last_hidden_state


@pytest.mark.parametrize("residual_before", [True, False])
def test_fusion_over_houlsby_adapters_equals_the_hand_computation_at_every_site(residual_before):
    """At ``attn`` and ``ffn`` the paper's fusion (Pfeiffer et al. 2021, Sec. 3.2) over the two
    adapters' outputs (or AdapterHub's: over their own contributions, the sublayer output added
    after the value matrix); at the following layer norm the adapters' norm outputs mixed with the
    attention the fusion gave them at that sublayer (post-norm BERT: the sublayer just before)."""
    model, batch = houlsby_fusion(residual_before=residual_before), tiny_batch()
    attention = {}

    def paper(layer, position, x, out, adapted):
        if position.endswith("norm"):  # attn_norm follows attn, ffn_norm follows ffn
            weights = attention[(layer, position.removesuffix("_norm"))]
            return sum(weights[..., n : n + 1] * adapted[n] for n in range(len(adapted)))
        fusion = houlsby_module(model, "f", layer, position)
        q = fusion.query(out)
        scores = torch.stack([(q * (z @ fusion.key.weight.T)).sum(-1) for z in adapted], dim=-1)
        weights = torch.softmax(scores / fusion.temperature, dim=-1)
        attention[(layer, position)] = weights
        if residual_before:
            return sum(weights[..., n : n + 1] * fusion.value(adapted[n]) for n in range(len(adapted)))
        return out + sum(weights[..., n : n + 1] * fusion.value(adapted[n] - out) for n in range(len(adapted)))

    expected = fused_by_hand(model, batch, paper)
    assert len(attention) == 2 * model.parts.num_layers
    assert not torch.allclose(attention[(0, "attn")], torch.full_like(attention[(0, "attn")], 0.5))
    torch.testing.assert_close(fused_hidden(model, batch), expected, rtol=0, atol=1e-5)


def test_uniform_fusion_over_houlsby_adapters_is_their_mean_at_every_site():
    model, batch = houlsby_fusion(), tiny_batch()
    for layer in model.adapters["f"].fusion_layers():
        with torch.no_grad():
            layer.query.weight.zero_(), layer.query.bias.zero_(), layer.key.weight.zero_()
            layer.value.weight.copy_(torch.eye(layer.value.weight.shape[0])), layer.value.bias.zero_()
    expected = fused_by_hand(model, batch, lambda layer, position, x, out, adapted: torch.stack(adapted).mean(0))
    torch.testing.assert_close(fused_hidden(model, batch), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(expected, fused_hidden(model, batch, "a"), atol=1e-3)


def test_fusion_over_houlsby_adapters_trains_saves_and_loads(tmp_path):
    model, batch, labels = houlsby_fusion(), tiny_batch(), torch.tensor([0, 1, 1])
    assert model.adapters["f"].config.sublayers == ("attn", "ffn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train_adapter("f")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(**batch, labels=labels).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    changed = {k.split(".")[:2][1] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"f"}  # the fusion and its head; the adapters and the base stay
    for name in "abf":
        model.save_adapter(name, tmp_path / name)
    fresh = AdapterModel(tiny_base("bert")).eval()
    for name in "abf":
        fresh.load_adapter(tmp_path / name)
    with torch.no_grad():
        assert torch.equal(fresh(**batch, adapters="f").logits, model(**batch, adapters="f").logits)



@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_fusion_over_houlsby_adapters_trains_the_same_with_gradient_checkpointing(arch):
    """A pre-norm decoder mixes a layer's first norm with the attention of the layer before; the
    recomputed layer must see that attention as the forward pass did, not the last layer's."""
    batch, labels = tiny_batch(), torch.tensor([0, 1, 1])
    grads = []
    for checkpointed in (False, True):
        model = AdapterModel(tiny_base(arch))
        for k, name in enumerate("ab"):
            torch.manual_seed(k)
            model.add_adapter(name, "houlsby", HeadConfig(num_labels=3, dropout=0.0, pooling="last"), bottleneck_size=4)
            randomize(model.adapters[name], seed=20 + k)
        torch.manual_seed(9)
        model.add_adapter("f", "fusion", HeadConfig(num_labels=2, dropout=0.0, pooling="last"), adapters=("a", "b"))
        randomize(model.adapters["f"], seed=99)
        model.train_adapter("f")
        model.train()  # checkpointing acts in training mode only
        if checkpointed:
            model.activation_checkpointing_enable()
        torch.manual_seed(0)  # the same dropout masks (BERT) in both runs; recomputation replays them
        model(**batch, labels=labels).loss.backward()
        grads.append({k: p.grad for k, p in model.adapter_parameters("f").items()})
    for key, grad in grads[0].items():
        torch.testing.assert_close(grads[1][key], grad, rtol=0, atol=1e-6)

FUSABLE = "The methods that can be fused are houlsby, parallel, pfeiffer, scaled_parallel"
UNFUSABLE = [
    ("lora", {"r": 2}, "changes projections"),
    ("bitfit", {}, "changes projections"),
    ("prefix", {"prefix_length": 2}, "changes attention keys and values"),
    ("prompt", {"prompt_length": 2}, "changes the input sequence"),
    ("deep_prompt", {"prompt_length": 2}, "changes the input sequence and layer inputs"),
    ("mam", {"prefix_length": 2, "reparam_hidden": 4, "bottleneck_size": 4}, "changes attention keys and values"),
    ("probe", {}, "acts on no sublayer output"),
    ("union", {"configs": [{"method": "lora", "r": 2}, {"method": "pfeiffer", "bottleneck_size": 4}]}, "changes projections"),
]


@pytest.mark.parametrize("method, options, what", UNFUSABLE, ids=[u[0] for u in UNFUSABLE])
def test_adapters_that_cannot_be_fused_are_refused_when_the_fusion_is_added(method, options, what):
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("a", "pfeiffer", HeadConfig(num_labels=2), bottleneck_size=4)
    model.add_adapter("x", method, HeadConfig(num_labels=2), **options)
    message = (
        rf"^fusion 'f': adapter 'x' \({method}\) cannot be fused: AdapterFusion combines adapters' sublayer outputs, "
        rf"and 'x' {what}\. {FUSABLE}; stack 'x' with the fusion instead: Stack\('x', Fuse\(\.\.\.\)\)$"
    )
    for sublayers in (None, ("ffn",)):  # with or without sublayers given, up front
        with pytest.raises(ValueError, match=message):
            model.add_adapter("f", "fusion", adapters=("a", "x"), sublayers=sublayers)
        assert "f" not in model.adapters
    # the advice works: the adapter runs stacked with a fusion of the others
    model.add_adapter("b", "pfeiffer", HeadConfig(num_labels=2), bottleneck_size=4)
    model.add_adapter("f", "fusion", HeadConfig(num_labels=2), adapters=("a", "b"))
    assert model(**tiny_batch(), adapters=Stack("x", Fuse("a", "b"))).logits.shape == (3, 2)
    with pytest.raises(ValueError, match=rf"^Fuse: adapter 'x' \({method}\) cannot be fused"):
        model(**tiny_batch(), adapters=Fuse("a", "x", fusion="f"))


def test_a_fusion_of_a_fusion_is_refused_when_it_is_added():
    model = houlsby_fusion()
    with pytest.raises(ValueError, match=r"^fusion 'g': 'f' is itself a fusion; fusions cannot be fused\. Fuse the adapters"):
        model.add_adapter("g", "fusion", adapters=("a", "f"))


def test_cli_fuses_houlsby_adapters_from_a_store_prunes_and_evaluates(tmp_path):
    model_dir = build_tiny_model_dir(tmp_path / "model")
    data = {split: write_csv(tmp_path / f"{split}.csv", count, seed) for split, count, seed in
            (("train", 64, 1), ("validation", 16, 2), ("test", 16, 3))}
    files = ["--train-file", str(data["train"]), "--validation-file", str(data["validation"]),
             "--test-file", str(data["test"]), "--text-column", "review", "--label-column", "sentiment"]
    small = ["--epochs", "1", "--batch-size", "16", "--max-length", "16", "--quiet"]
    store = tmp_path / "store"
    for name in ("first", "second"):
        code, _, err = run_cli("train", "--model", str(model_dir), "--method", "houlsby", "--option", "bottleneck_size=4",
                               "--name", name, "--store", str(store), "--output-dir", str(tmp_path / name), *files, *small)
        assert code == 0, err
    code, out, err = run_cli("fuse", "--adapters", "first,second", "--store", str(store), "--name", "both",
                             "--prune", "1", "--prune-epochs", "1", "--output-dir", str(tmp_path / "fusion"), *files, *small)
    assert code == 0, err
    table = out.split("fusion attention per layer (validation split):\n")[1].split("\n\n")[0].splitlines()
    assert [line.split()[0] for line in table[1:]] == ["0.attn", "0.ffn", "1.attn", "1.ffn", "mean"]
    meta = json.loads((store / "both" / "adapter_config.json").read_text())
    assert meta["config"]["sublayers"] == ["attn", "ffn"] and len(meta["config"]["adapters"]) == 1
    code, out, err = run_cli("eval", "--adapter", str(store / "both"), "--test-file", str(data["test"]),
                             "--label-column", "sentiment", "--text-column", "review", "--json")
    assert code == 0, err
    assert 0 <= json.loads(out)["accuracy"] <= 1


def test_advice_in_composition_errors_is_something_the_api_can_do():
    model = AdapterModel(tiny_base("bert"))
    model.add_adapter("p", "prefix", HeadConfig(num_labels=2), prefix_length=2)
    model.add_adapter("q", "prompt", HeadConfig(num_labels=2), prompt_length=2)
    model.add_adapter("r", "pfeiffer", HeadConfig(num_labels=2), bottleneck_size=4)
    model.add_adapter("bare", "pfeiffer", bottleneck_size=4)
    batch = tiny_batch()
    # prompts cannot be routed, so Parallel does not send them to Routed; prefixes can be
    with pytest.raises(ValueError, match=r"cannot run inside Parallel; run them one pass per task \(alone or in a Stack\)$"):
        model(**batch, adapters=Parallel("q", "r"))
    with pytest.raises(ValueError, match=r"or per row with Routed\(\[\.\.\.\]\) over the batch repeated once per task$"):
        model(**batch, adapters=Parallel("p", "r"))
    both = {k: v.repeat(2, 1) for k, v in batch.items()}
    assert model(**both, adapters=Routed(["p"] * 3 + ["r"] * 3)).logits.shape == (6, 2)
    # a branch without a head: end it with an adapter that has one
    with pytest.raises(ValueError, match=r"end the branch with an adapter that has a head \(Stack\('bare', <adapter"):
        model(**batch, adapters=Parallel("bare", "r"))
    model.add_adapter("s", "pfeiffer", HeadConfig(num_labels=2), bottleneck_size=4)
    assert set(model(**batch, adapters=Parallel(Stack("bare", "r"), "s")).tasks) == {"r", "s"}
    with pytest.raises(ValueError, match=r"'r' is a pfeiffer adapter, not a fusion; name a fusion with fusion=\.\.\., or add "
                       r"one with model\.add_adapter\(<new name>, 'fusion'"):
        model(**batch, adapters=Fuse("bare", fusion="r"))
    with pytest.raises(ValueError, match=r"route only adapters with heads, or only adapters without"):
        model(**batch, adapters=Routed(["r", "bare", "r"]))
    model.add_adapter("f", "fusion", HeadConfig(num_labels=2), adapters=("r", "bare"))
    # nesting: each refusal says what to write instead, and that runs
    for build, fix, instead in [
        (lambda: Parallel("r", AdapterDrop("bare", first=1)),
         r"AdapterDrop wraps the whole setup: AdapterDrop\(Parallel\(\.\.\.\), first=n\)",
         lambda: AdapterDrop(Parallel("r", "s"), first=1)),
        (lambda: Stack("r", Routed(["r"])),
         r"Routed chooses the adapter of each row of the whole batch: use it alone, or inside AdapterDrop",
         lambda: AdapterDrop(Routed(["r", None, "r"]), first=1)),
        (lambda: Fuse("r", Parallel("r", "bare")),
         r"put the Fuse inside the Parallel instead, e.g\. Parallel\(Fuse\(\.\.\.\), \.\.\.\)",
         lambda: Parallel(Fuse("r", "bare", fusion="f"), "s")),
        (lambda: Parallel("r", Parallel("s", "f")), r"list the elements in one Parallel", lambda: Parallel("r", "s", "f")),
        (lambda: Stack("r", None), r"None \(no adapter\) is only a row of Routed", lambda: Routed(["r", None, "r"])),
    ]:
        with pytest.raises(ValueError, match=fix):
            build()
        assert model(**batch, adapters=instead()) is not None  # the replacement runs on this model


# ---------------------------------------------------------------- fault 4: a frozen fusion adds no regulariser
def test_a_frozen_fusion_adds_no_regulariser_and_a_training_one_does():
    model = AdapterModel(tiny_base("bert"))
    for k, name in enumerate("ab"):
        model.add_adapter(name, "pfeiffer", HeadConfig(num_labels=3, dropout=0.0), bottleneck_size=4)
        randomize(model.adapters[name], seed=k)
    model.add_adapter("fz", "fusion", HeadConfig(num_labels=3, dropout=0.0), adapters=("a", "b"))
    model.add_adapter("task", "pfeiffer", HeadConfig(num_labels=3, dropout=0.0), bottleneck_size=4)
    fusion = model.adapters["fz"]
    with torch.no_grad():
        for layer in fusion.fusion_layers():  # the value matrix moved off the identity
            layer.value.weight.add_(0.3 * torch.eye(layer.value.weight.shape[0]))
    penalty = fusion.regularization()
    assert penalty.item() > 0
    setup, batch, labels = Stack(Fuse("a", "b", fusion="fz"), "task"), tiny_batch(), torch.tensor([2, 0, 1])
    model.train_adapter("task")
    model.train()
    out = model(**batch, labels=labels, adapters=setup)
    assert not any(p.requires_grad for p in fusion.parameters())
    assert out.loss.item() == F.cross_entropy(out.logits, labels).item()
    # while the fusion trains, its regulariser is part of the loss
    model.train_adapter("fz")
    model.train()
    out = model(**batch, labels=labels, adapters=setup)
    expected = F.cross_entropy(out.logits, labels) + penalty
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(p.requires_grad for p in fusion.parameters())


# ---------------------------------------------------------------- fault 5: padding and sequence-level methods on decoders
DECODER_METHODS = {
    "prompt": ("prompt", {"prompt_length": 4}),
    "deep_prompt": ("deep_prompt", {"prompt_length": 4}),
    "prefix": ("prefix", {"prefix_length": 3, "reparam_hidden": 8}),
    "mam": ("mam", {"prefix_length": 3, "reparam_hidden": 8, "bottleneck_size": 4}),
}
LENGTHS = (7, 4, 2)  # three rows of different lengths: the shorter ones padded


def decoder_with(method: str, options: dict, head: HeadConfig) -> AdapterModel:
    model = AdapterModel(tiny_base("llama"))
    torch.manual_seed(0)
    model.add_adapter("task", method, head, **options)
    randomize(model.adapters["task"], seed=4, std=0.1)
    randomize(model.heads["task"], seed=5, std=0.1)
    return model.eval()


def padded(side: str, lengths=LENGTHS) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """A batch padded by hand (pad id 0, mask 0) on ``side``, and each row's tokens alone."""
    generator = torch.Generator().manual_seed(7)
    rows = [torch.randint(3, 120, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, tokens in enumerate(rows):
        span = slice(width - len(tokens), width) if side == "left" else slice(0, len(tokens))
        ids[r, span], mask[r, span] = tokens, 1
    return {"input_ids": ids, "attention_mask": mask}, rows


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", DECODER_METHODS)
def test_each_row_of_a_padded_decoder_batch_equals_the_row_alone(name, side):
    method, options = DECODER_METHODS[name]
    model = decoder_with(method, options, HeadConfig(num_labels=3, pooling="last", dropout=0.0))
    batch, rows = padded(side)
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        together = model(**batch, adapters="task").logits
        alone = torch.cat([model(input_ids=tokens[None], adapters="task").logits for tokens in rows])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    # training mode (no dropout in this model): the batch loss is the mean of the rows' losses,
    # and so are the gradients
    model.train_adapter("task")
    model.train()
    loss = model(**batch, labels=labels).loss
    grads = torch.autograd.grad(loss, list(model.adapter_parameters("task").values()))
    row_losses = [model(input_ids=tokens[None], labels=labels[r : r + 1]).loss for r, tokens in enumerate(rows)]
    mean = torch.stack(row_losses).mean()
    torch.testing.assert_close(loss, mean, rtol=0, atol=1e-5)
    mean_grads = torch.autograd.grad(mean, list(model.adapter_parameters("task").values()))
    for got, want in zip(grads, mean_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", DECODER_METHODS)
def test_predict_and_evaluate_on_a_left_padding_decoder_equal_one_text_at_a_time(name):
    method, options = DECODER_METHODS[name]
    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "left"
    model = decoder_with(method, options, HeadConfig(kind="regression", num_labels=1, pooling="last", dropout=0.0))
    model.tokenizer = tokenizer
    texts = ["good film", "the movie was a great story", "bad", "it is a dull and weak plot"]
    batched = predict(model, texts, "task", batch_size=4)
    alone = [predict(model, [text], "task", batch_size=1)[0] for text in texts]
    assert batched == pytest.approx(alone, abs=1e-5)
    examples = [Example((text,), float(k)) for k, text in enumerate(texts)]
    together = evaluate(model, examples, "task", batch_size=4)
    one_by_one = evaluate(model, examples, "task", batch_size=1)
    assert together == pytest.approx(one_by_one, abs=1e-5)


@pytest.mark.parametrize("name", DECODER_METHODS)
def test_generation_from_a_left_padded_batch_gives_each_row_its_own_tokens(name):
    method, options = DECODER_METHODS[name]
    model = decoder_with(method, options, HeadConfig(kind="causal_lm"))
    batch, rows = padded("left")
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    together = model.generate(**batch, adapters="task", **settings)
    assert torch.equal(together, model.generate(**batch, adapters="task", use_cache=False, **settings))
    for r, tokens in enumerate(rows):
        alone = model.generate(input_ids=tokens[None], adapters="task", **settings)
        assert torch.equal(together[r, -5:], alone[0, -5:]), r


# ---------------------------------------------------------------- fault 7: Parallel and Routed run adapters of different options
MIXED_OPTIONS = {
    "lora dropouts": {
        "d1": ("lora", {"r": 2, "dropout": 0.1, "targets": ALL_ROLES}),
        "d0": ("lora", {"r": 4, "dropout": 0.0}),
    },
    "activations": {
        "relu": ("pfeiffer", {"bottleneck_size": 4}),
        "gelu": ("pfeiffer", {"bottleneck_size": 8, "non_linearity": "gelu"}),
    },
}


def mixed_model(adapters: dict) -> AdapterModel:
    model = AdapterModel(tiny_base("bert"))
    for k, (name, (method, options)) in enumerate(adapters.items()):
        torch.manual_seed(k)
        model.add_adapter(name, method, HeadConfig(num_labels=3, dropout=0.0), **options)
        randomize(model.adapters[name], seed=30 + k)
    return model.eval()


@pytest.mark.parametrize("kind", MIXED_OPTIONS)
def test_parallel_and_routed_in_eval_mode_equal_each_adapter_alone(kind):
    model, batch = mixed_model(MIXED_OPTIONS[kind]), tiny_batch()
    first, second = MIXED_OPTIONS[kind]
    with torch.no_grad():
        alone = {name: model(**batch, adapters=name).logits for name in (first, second)}
        parallel = model(**batch, adapters=Parallel(first, second))
        routed = model(**batch, adapters=Routed([first, second, first]))
    for name in (first, second):  # one gathered bmm against one matmul: float32 rounding apart
        torch.testing.assert_close(parallel[name].logits, alone[name], rtol=0, atol=1e-5)
    by_row = torch.stack([alone[first][0], alone[second][1], alone[first][2]])
    torch.testing.assert_close(routed.logits, by_row, rtol=0, atol=1e-5)


def test_parallel_and_routed_train_loras_with_different_dropouts():
    """In training mode each dropout rate is its own group (``routing.apply_batched``); dropout
    masks differ between a batched and a single run, so the check is that it runs, is finite, has
    the right shapes and trains both adapters."""
    model, batch = mixed_model(MIXED_OPTIONS["lora dropouts"]), tiny_batch()
    model.requires_grad_(False)
    for name in ("d1", "d0"):
        for param in model.adapter_parameters(name).values():
            param.requires_grad_(True)
    model.train()
    torch.manual_seed(0)
    for setup, labels in ((Parallel("d1", "d0"), {"d1": torch.tensor([0, 1, 2]), "d0": torch.tensor([2, 2, 0])}),
                          (Routed(["d1", "d0", "d1"]), torch.tensor([0, 1, 2]))):
        model.zero_grad()
        out = model(**batch, labels=labels, adapters=setup)
        for name in ("d1", "d0"):
            assert out[name].logits.shape == (3 if isinstance(setup, Parallel) else len(out.rows[name]), 3)
            assert torch.isfinite(out[name].logits).all()
        assert torch.isfinite(out.loss)
        out.loss.backward()
        for name in ("d1", "d0"):
            grads = [p.grad for k, p in model.adapter_parameters(name).items() if "lora_A" in k]
            assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), name


def test_in_training_mode_each_lora_keeps_its_own_dropout_rate_in_a_routed_batch():
    model, batch = mixed_model(MIXED_OPTIONS["lora dropouts"]), tiny_batch()
    with torch.no_grad():
        evaluated = {name: model(**batch, adapters=name).logits for name in ("d1", "d0")}
        model.train()
        model.base.eval()  # the adapters' own dropout only
        torch.manual_seed(1)
        routed = model(**batch, adapters=Routed(["d1", "d0", "d1"]))
    torch.testing.assert_close(routed["d0"].logits, evaluated["d0"][1:2], rtol=0, atol=1e-5)  # rate 0: no dropout
    assert not torch.allclose(routed["d1"].logits, evaluated["d1"][[0, 2]], atol=1e-4)  # rate 0.1 acted


# ---------------------------------------------------------------- fault 8: per-row adapters through beam search and sampling
ROW_METHODS = {
    "lora": ("lora", {"r": 4, "targets": ALL_ROLES}),
    "prefix": ("prefix", {"prefix_length": 3, "reparameterize": False}),
}


def routed_decoder(method: str, options: dict) -> AdapterModel:
    """A tiny Llama with causal-LM adapters ``u1`` and ``u2`` that change the next token."""
    model = AdapterModel(tiny_base("llama"))
    for k, name in enumerate(("u1", "u2")):
        torch.manual_seed(k)
        model.add_adapter(name, method, HeadConfig(kind="causal_lm"), **options)
        randomize(model.adapters[name], seed=40 + k, std=1.0)
    return model.eval()


@pytest.mark.parametrize("name", ROW_METHODS)
def test_routed_generation_gives_each_row_its_tokens_alone_through_beams_and_sampling(name):
    model = routed_decoder(*ROW_METHODS[name])
    batch, rows = padded("left", lengths=(5, 3))
    new = 4
    routed = Routed(["u1", "u2"])

    def generate(adapters, **options):
        return model.generate(**options, adapters=adapters, max_new_tokens=new, pad_token_id=0)

    def alone(r, **options):
        return generate(routed.rows[r], input_ids=rows[r][None], **options)[:, -new:]

    greedy = dict(do_sample=False)
    assert not torch.equal(alone(0, **greedy), generate("u2", input_ids=rows[0][None], **greedy)[:, -new:])
    for options in (dict(num_beams=2, **greedy), dict(num_beams=2, num_return_sequences=2, **greedy),
                    dict(do_sample=True, top_k=1, num_return_sequences=2)):  # top_k=1: sampling that is greedy
        together = generate(routed, **batch, **options)[:, -new:]
        copies = options.get("num_return_sequences", 1)
        assert together.shape == (2 * copies, new)
        for r in range(2):  # returned sequences come row by row: row r's are [r * copies, (r + 1) * copies)
            torch.manual_seed(0)
            expected = alone(r, **options)
            assert torch.equal(together[r * copies : (r + 1) * copies], expected), (options, r)
    torch.manual_seed(0)  # free sampling: runs and returns two sequences per row
    sampled = generate(routed, **batch, do_sample=True, num_return_sequences=2)
    assert sampled.shape == (4, batch["input_ids"].shape[1] + new)


# ---------------------------------------------------------------- fault 9a: prompts and the model's positions
def short_bert_dir(directory: Path) -> Path:
    """A tiny BERT that reads 32 positions, with the word-level tokenizer, saved as a model folder."""
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=len(tiny_tokenizer().vocab), max_position_embeddings=32)
    BertModel(config).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def long_examples(count: int, seed: int) -> list[Example]:
    """Toy examples of 6 to 40 words: the longer ones need every position the model has."""
    generator = torch.Generator().manual_seed(seed)
    words = ("the", "a", "movie", "film", "plot", "actor", "it", "was", "story", "cast")
    examples = []
    for k in range(count):
        label = k % 2
        size = int(torch.randint(6, 41, (1,), generator=generator))
        text = [words[int(i)] for i in torch.randint(0, len(words), (size,), generator=generator)]
        text[int(torch.randint(0, size, (1,), generator=generator))] = ("good", "bad")[label]
        examples.append(Example((" ".join(text),), 1 - label))
    return examples


REDUCED = (
    r"max_length 32 reduced to 24 tokens per input: this 'bert' model reads 32 positions; "
    r"the prompts \(and shifted prefixes\) of Stack\('task'\) take 8"
)


def test_training_with_a_prompt_fits_inputs_to_the_positions_left_before_the_first_step(tmp_path):
    from adapterkit.data import TaskData
    from adapterkit.training import Trainer, TrainingConfig, add_task_adapter

    model = AdapterModel.from_pretrained(str(short_bert_dir(tmp_path / "bert32")))
    splits = long_examples(24, 1), long_examples(8, 2), long_examples(8, 3)
    task = TaskData("long", "classification", ("text",), LABELS, *splits)
    assert max(len(model.tokenizer(e.texts[0])["input_ids"]) for e in task.train) > 32
    add_task_adapter(model, "task", "prompt", task, {"prompt_length": 8})
    assert model.token_budget("task") == 24 and model.token_budget(None) == 32 and model.token_budget("task", 16) == 16
    first_step = []
    model.base.register_forward_pre_hook(lambda module, args: first_step.append(len(caught)) if not first_step else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = TrainingConfig(epochs=1, batch_size=8, max_length=32, progress=False, output_dir=str(tmp_path / "run"))
        result = Trainer(model, "task", task, config).train()
    assert first_step == [1] and re.fullmatch(REDUCED, str(caught[0].message))  # warned before the first step
    assert result.epochs_run == 1 and "accuracy" in result.test_metrics
    texts = [e.texts[0] for e in task.test]
    with pytest.warns(UserWarning, match=REDUCED):
        assert len(predict(model, texts, "task", max_length=32)) == len(texts)
    with pytest.warns(UserWarning, match=REDUCED):
        assert "accuracy" in evaluate(model, task.test, "task", max_length=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # within the budget: nothing to say
        predict(model, texts, "task", max_length=24)


def test_cli_train_eval_and_predict_with_a_prompt_fit_inputs_to_the_positions_left(tmp_path, monkeypatch):
    model_dir = short_bert_dir(tmp_path / "bert32")
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        with (tmp_path / f"{split}.csv").open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["text", "label"])
            writer.writerows([e.texts[0], LABELS[e.label]] for e in long_examples(16, seed))
    argv = [item for split in ("train", "validation", "test") for item in (f"--{split}-file", str(tmp_path / f"{split}.csv"))]
    with pytest.warns(UserWarning, match=REDUCED):
        code, _, err = run_cli("train", "--model", str(model_dir), "--method", "prompt", "--option", "prompt_length=8",
                               "--name", "task", "--max-length", "32", "--epochs", "1", "--batch-size", "8",
                               "--output-dir", str(tmp_path / "run"), "--quiet", *argv)
    assert code == 0, err
    best = str(tmp_path / "run" / "best")
    assert json.loads((tmp_path / "run" / "best" / "adapter_config.json").read_text())["training"]["max_length"] == 24
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eval reads the length the adapter was trained with: 24
        code, out, err = run_cli("eval", "--adapter", best, "--test-file", str(tmp_path / "test.csv"), "--json")
    assert code == 0 and "accuracy" in json.loads(out), err
    monkeypatch.setattr("sys.stdin", io.StringIO(" ".join(["the movie was good"] * 12) + "\n"))
    with pytest.warns(UserWarning, match=REDUCED):  # a longer --max-length is fitted again
        code, out, err = run_cli("predict", "--adapter", best, "--max-length", "32")
    assert code == 0 and out.strip() in LABELS, err
