"""Tests for adapterkit.training: batching, metrics, state round trips, the trainer, reports.

Everything runs on a tiny random BERT (hidden 32, 2 layers) with a word-level tokenizer built
from an in-memory vocabulary, on a toy sentiment task whose label is decided by one word, so
training a few steps is enough to learn it. One test, marked ``integration``, trains Houlsby
adapters on the real MiniLM and rotten_tomatoes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel, BertTokenizer

from adapterkit import AdapterModel, HeadConfig
from adapterkit.data import Example, TaskData
from adapterkit.training import (
    Collator,
    EpochShuffleSampler,
    PeakMemory,
    Trainer,
    TrainingConfig,
    TrainingResult,
    accuracy,
    add_task_adapter,
    compute_metrics,
    default_learning_rate,
    encode_examples,
    evaluate,
    format_table,
    macro_f1,
    mse,
    pearson,
    plot_results,
    predict,
)
from adapterkit.training.rng import capture_rng_state, restore_rng_state
from adapterkit.training.state import flatten, load_tree, save_tree, unflatten

POSITIVE = ("good", "great", "superb", "lovely", "fine", "nice")
NEGATIVE = ("bad", "awful", "poor", "dull", "ugly", "weak")
FILLER = ("the", "a", "movie", "film", "plot", "actor", "it", "was", "is", "story", "cast", "scene")
VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER)
LABELS = ("neg", "pos")


# ---------------------------------------------------------------- shared helpers (also used by test_cli)
def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)})


def build_tiny_model_dir(directory: Path) -> Path:
    """A tiny BERT plus its tokenizer saved as a local Hugging Face model folder."""
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=len(VOCAB), max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def toy_examples(count: int, seed: int) -> list[Example]:
    """A filler word and a sentiment word; the sentiment word decides the label."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        label = rng.randrange(2)
        words = [rng.choice(FILLER), rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        examples.append(Example((" ".join(words),), label))
    return examples


def toy_task(train: int = 192, held_out: int = 32) -> TaskData:
    return TaskData(
        "toy", "classification", ("text",), LABELS,
        toy_examples(train, 1), toy_examples(held_out, 2), toy_examples(held_out, 3),
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the threads'
    spin-waits make them several times slower; restored afterwards for other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-bert"))


def fresh(model_dir: Path, method: str = "houlsby", task: TaskData | None = None, **options) -> AdapterModel:
    model = AdapterModel.from_pretrained(str(model_dir))
    options = options or ({"bottleneck_size": 8} if method == "houlsby" else {})
    add_task_adapter(model, "toy", method, task or toy_task(), options, seed=0)
    return model


def quick(tmp_path: Path | None = None, **overrides) -> TrainingConfig:
    settings = dict(epochs=3, batch_size=8, learning_rate=1e-2, warmup_ratio=0.0, patience=None, progress=False)
    settings.update(overrides)
    if tmp_path is not None:
        settings["output_dir"] = str(tmp_path)
    return TrainingConfig(**settings)


def adapter_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter.safetensors"))


# ---------------------------------------------------------------- batching
def test_collator_pads_to_the_longest_in_the_batch_and_encodes_pairs():
    tokenizer = tiny_tokenizer()
    examples = [Example(("good movie", "the plot"), 1), Example(("bad",), 0)]
    with pytest.raises(ValueError, match="same number of texts"):
        encode_examples(tokenizer, examples, 16)
    pairs = [Example(("good movie", "the plot"), 1), Example(("bad", "it"), 0)]
    dataset = encode_examples(tokenizer, pairs, 16)
    batch = Collator(tokenizer, "classification")([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == (2, 7)  # [CLS] good movie [SEP] the plot [SEP]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 5 + [0] * 2]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert batch["labels"].dtype == torch.long

    tokenizer.padding_side = "left"
    single = encode_examples(tokenizer, [Example(("good movie plot",), 0.5), Example(("bad",), -1.0)], 4)
    batch = Collator(tokenizer, "regression")([single[0], single[1]])
    assert batch["input_ids"].shape == (2, 4)  # the first is truncated to max_length 4
    assert batch["attention_mask"][1].tolist() == [0, 1, 1, 1]
    assert batch["labels"].dtype == torch.float32


def test_shuffle_order_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(50, seed=1), EpochShuffleSampler(50, seed=1)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    a.set_epoch(1)
    assert list(a) != list(b)
    torch.manual_seed(123)  # the global generator plays no part
    b.set_epoch(1)
    assert list(a) == list(b)


# ---------------------------------------------------------------- metrics
def test_metrics_match_hand_computed_values():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 1, 0])
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    # F1 per class: 0 -> 2*2/(4+1+1)=2/3, 1 -> 2*2/(4+1)=0.8, 2 -> 0
    assert macro_f1(predictions, labels) == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    scores, targets = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 8.5])
    assert pearson(scores, targets) == pytest.approx(np.corrcoef(scores, targets)[0, 1])
    assert pearson(np.ones(4), targets) == 0.0
    assert mse(scores, targets) == pytest.approx(np.mean((scores - targets) ** 2))
    assert set(compute_metrics("regression", scores, targets)) == {"pearson", "mse"}
    assert set(compute_metrics("classification", predictions, labels)) == {"accuracy", "macro_f1"}


# ---------------------------------------------------------------- state without pickle
def test_optimizer_state_round_trips_exactly_through_safetensors_and_json(tmp_path):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    groups = [{"params": params[:1], "weight_decay": 0.01}, {"params": params[1:], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.8, 0.99))
    for _ in range(3):
        sum((p**2).sum() for p in params).backward()
        optimizer.step()
        optimizer.zero_grad()
    original = optimizer.state_dict()
    save_tree(original, tmp_path, "optimizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer.json", "optimizer.safetensors"]
    restored = load_tree(tmp_path, "optimizer")

    assert restored["param_groups"] == original["param_groups"]
    assert isinstance(restored["param_groups"][0]["betas"], tuple)
    assert restored["state"].keys() == original["state"].keys()  # int keys survive JSON
    for index, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(restored["state"][index][key], value)
            assert restored["state"][index][key].dtype == value.dtype

    fresh_optimizer = torch.optim.AdamW(
        [{"params": params[:1], "weight_decay": 0.01}, {"params": params[1:], "weight_decay": 0.0}], lr=5.0
    )
    fresh_optimizer.load_state_dict(restored)
    assert fresh_optimizer.param_groups[0]["lr"] == 1e-3


def test_state_trees_keep_types_and_refuse_unknown_objects():
    tree = {"a": (1, 2.5, None), 3: [float("inf"), "x"], "t": torch.arange(3)}
    tensors: dict[str, torch.Tensor] = {}
    back = unflatten(json.loads(json.dumps(flatten(tree, tensors))), tensors)
    assert back["a"] == (1, 2.5, None) and back[3][0] == float("inf") and torch.equal(back["t"], torch.arange(3))
    with pytest.raises(TypeError, match="cannot store"):
        flatten({"f": object()}, {})


def test_rng_state_round_trip_replays_every_generator():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.loads(json.dumps(flatten(state, tensors)))  # as it reads back from disk
    restore_rng_state(unflatten(skeleton, tensors))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


# ---------------------------------------------------------------- config
def test_default_learning_rates_follow_the_method():
    assert default_learning_rate("houlsby") == 1e-3
    assert default_learning_rate("lora") == 5e-4
    assert default_learning_rate("full") == 2e-5
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        default_learning_rate("nope")
    assert TrainingConfig().learning_rate_for("lora") == 5e-4
    assert TrainingConfig(learning_rate=0.1).learning_rate_for("lora") == 0.1


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"epochs": 0}, "epochs"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"patience": 0}, "patience"),
        ({"resume": True}, "output_dir"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
    ],
)
def test_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**bad)


# ---------------------------------------------------------------- the trainer
def test_training_learns_writes_outputs_and_leaves_the_base_bit_identical(model_dir, tmp_path):
    task = toy_task(192, 64)
    model = fresh(model_dir, task=task)
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    result = Trainer(model, "toy", task, quick(tmp_path, epochs=6)).train()

    for key, value in model.base.state_dict().items():
        assert torch.equal(value.cpu(), base_before[key]), key
    assert result.test_metrics["accuracy"] >= 0.7  # chance 0.5 (3 sigma below 0.7 on 64 examples)
    assert result.epochs_run == 6 and result.best_epoch is not None and not result.stopped_early
    trained, base = model.count_parameters("toy")
    assert (result.trainable_params, result.base_params) == (trained, base)
    assert result.trainable_share == pytest.approx(trained / base)
    assert result.train_time_s > 0 and result.peak_memory_bytes > 0
    assert result.memory_measure == ("cuda_max_allocated" if torch.cuda.is_available() else "cpu_rss_growth")
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5, 6]

    saved = TrainingResult.load(tmp_path)
    assert saved.test_metrics == result.test_metrics and saved.trainable_params == trained
    # the model ends holding the best adapter: evaluating it again gives the test metrics
    assert evaluate(model, task.test, "toy", max_length=128) == pytest.approx(result.test_metrics)
    meta = json.loads((tmp_path / "best" / "adapter_config.json").read_text())
    assert meta["task"]["label_names"] == list(LABELS) and meta["training"]["epoch"] == result.best_epoch
    assert set(predict(model, ["good movie", ("awful plot",)], "toy")) <= set(LABELS)


def test_checkpoint_holds_only_safetensors_and_json(model_dir, tmp_path):
    task = toy_task(32, 16)
    Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=1)).train()
    files = [p for p in (tmp_path / "checkpoint").rglob("*") if p.is_file()]
    assert files and {p.suffix for p in files} == {".json", ".safetensors"}
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert state["progress"]["epoch"] == 1 and state["progress"]["global_step"] == 4


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption_gives_the_same_weights_as_an_uninterrupted_run(model_dir, tmp_path):
    task = toy_task(64, 16)
    straight = tmp_path / "straight"
    resumed = tmp_path / "resumed"
    settings = dict(epochs=2, learning_rate=3e-3, warmup_ratio=0.25)  # dropout is on: RNG state matters
    result = Trainer(fresh(model_dir, task=task), "toy", task, quick(straight, **settings)).train()

    def crash(record):
        raise Interrupted(record["epoch"])

    with pytest.raises(Interrupted):
        Trainer(fresh(model_dir, task=task), "toy", task, quick(resumed, **settings), on_epoch_end=crash).train()
    state = json.loads((resumed / "checkpoint" / "trainer_state.json").read_text())
    assert state["progress"]["epoch"] == 1

    # a new process would start from a differently initialised adapter: resume must overwrite it
    model = AdapterModel.from_pretrained(str(model_dir))
    add_task_adapter(model, "toy", "houlsby", task, {"bottleneck_size": 8}, seed=99)
    again = Trainer(model, "toy", task, quick(resumed, resume=True, **settings)).train()

    for folder in ("checkpoint/adapter", "best"):
        expected, got = adapter_tensors(straight / folder), adapter_tensors(resumed / folder)
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), (folder, key)
    assert again.test_metrics == result.test_metrics
    assert [r["train_loss"] for r in again.history] == [r["train_loss"] for r in result.history]
    assert again.epochs_run == 2


def test_a_reparameterised_prefix_is_saved_folded_and_a_finished_run_resumes(model_dir, tmp_path):
    task = toy_task(64, 16)
    options = dict(prefix_length=4, reparam_hidden=16)
    settings = dict(epochs=2, learning_rate=3e-3)
    model = fresh(model_dir, "prefix", task=task, **options)
    training_form = model.count_parameters("toy")[0]
    result = Trainer(model, "toy", task, quick(tmp_path, **settings)).train()

    best = json.loads((tmp_path / "best" / "adapter_config.json").read_text())
    checkpoint = json.loads((tmp_path / "checkpoint" / "adapter" / "adapter_config.json").read_text())
    assert best["config"]["reparameterize"] is False and checkpoint["config"]["reparameterize"] is True
    assert best["training"]["epoch"] == result.best_epoch
    head = 32 * 2 + 2  # linear head: hidden 32 -> 2 labels
    prefix = 2 * 2 * 4 * 32  # layers x (key, value) x l x d
    saved = sum(t.numel() for t in adapter_tensors(tmp_path / "best").values())
    assert result.trainable_params == training_form > result.saved_params == saved == prefix + head

    # the folded file reproduces the trained model
    batch = model.tokenizer(["good film", "bad plot dull"], return_tensors="pt", padding=True)
    loaded = AdapterModel.from_pretrained(str(model_dir))
    loaded.load_adapter(tmp_path / "best")
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch, adapters="toy").logits, model(**batch, adapters="toy").logits)

    # a new process resuming the finished run builds the training form: it must fold to read best/
    again = Trainer(fresh(model_dir, "prefix", task=task, **options), "toy", task, quick(tmp_path, resume=True, **settings)).train()
    assert again.test_metrics == result.test_metrics and again.saved_params == saved


def test_resume_refuses_a_checkpoint_of_another_method(model_dir, tmp_path):
    task = toy_task(32, 16)
    Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=1)).train()
    with pytest.raises(ValueError, match="method config"):
        Trainer(fresh(model_dir, "bitfit", task=task), "toy", task, quick(tmp_path, epochs=2, resume=True)).train()


def test_early_stopping_ends_the_run_when_patience_runs_out(model_dir, tmp_path):
    task = toy_task(32, 16)
    # a learning rate far too small to change any prediction: validation never improves
    result = Trainer(fresh(model_dir, task=task), "toy", task, quick(tmp_path, epochs=6, learning_rate=1e-12, patience=2)).train()
    assert result.stopped_early
    assert result.epochs_run == 3 and result.best_epoch == 1
    assert len(result.history) == 3 and result.history[0]["best"]


def test_trainer_rejects_a_head_that_does_not_fit_the_task(model_dir):
    task = toy_task(8, 4)
    model = AdapterModel.from_pretrained(str(model_dir))
    model.add_adapter("three", "bitfit", HeadConfig(num_labels=3))
    model.add_adapter("swapped", "bitfit", HeadConfig(num_labels=2, label_names=("pos", "neg")))
    model.add_adapter("headless", "bitfit")
    with pytest.raises(ValueError, match="3 outputs"):
        Trainer(model, "three", task)
    with pytest.raises(ValueError, match="order must match"):
        Trainer(model, "swapped", task)
    with pytest.raises(ValueError, match="no prediction head"):
        Trainer(model, "headless", task)
    with pytest.raises(ValueError, match="no adapter named"):
        Trainer(model, "missing", task)


def test_regression_tasks_train_and_report_pearson(model_dir, tmp_path):
    examples = toy_examples(64, 5)
    scored = [Example(e.texts, 2.0 * e.label - 1.0 + 0.1 * i % 3) for i, e in enumerate(examples)]
    task = TaskData("toyreg", "regression", ("text",), (), scored[:40], scored[40:52], scored[52:])
    result = Trainer(fresh(model_dir, "probe", task=task), "toy", task, quick(epochs=2)).train()
    assert set(result.test_metrics) == {"pearson", "mse"} and result.main_metric == "pearson"
    assert result.output_dir is None


# ---------------------------------------------------------------- memory and reports
def test_peak_memory_sees_tensor_allocations_made_by_torch():
    with PeakMemory("cpu") as peak:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB in torch's C++ allocator
        del block
    assert peak.bytes >= 48 * 1024 * 1024


def sample_result(method: str, share: float, score: float) -> TrainingResult:
    return TrainingResult(
        adapter="toy", method=method, model="tiny", task="toy", kind="classification",
        test_metrics={"accuracy": score, "macro_f1": score - 0.01}, validation_metrics={},
        trainable_params=int(share * 1_000_000), base_params=1_000_000, train_time_s=12.3,
        peak_memory_bytes=300 * 1024**2, memory_measure="cpu_rss_growth", epochs_run=1, best_epoch=1,
        stopped_early=False, learning_rate=1e-3,
    )


def test_report_renders_a_table_and_a_log_scale_plot(tmp_path):
    results = [sample_result("houlsby", 0.02, 0.8), sample_result("bitfit", 0.001, 0.75), sample_result("full", 1.0, 0.82)]
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("| method") and len(lines) == 5
    assert "2.000%" in table and "20.0K" in table and "300.0 MiB" in table and "accuracy 0.8000" in table
    plain = format_table(results, "plain")
    assert "|" not in plain
    png = plot_results(results, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_names_runs_of_one_method_apart_and_plots_one_panel_per_task(tmp_path):
    import dataclasses

    from matplotlib.image import imread

    text = dataclasses.replace(sample_result("prompt", 0.001, 0.8), adapter="prompt-text")
    other_task = dataclasses.replace(sample_result("houlsby", 0.02, 0.7), task="other")
    assert "prompt (prompt-text)" in format_table([text])
    one = imread(plot_results([text], tmp_path / "one.png"))
    two = imread(plot_results([text, other_task], tmp_path / "two.png"))
    assert two.shape[1] > 1.5 * one.shape[1] and two.shape[0] == one.shape[0]  # two panels side by side


# ---------------------------------------------------------------- the real model
@pytest.mark.integration
def test_houlsby_on_minilm_beats_the_majority_class_on_rotten_tomatoes(tmp_path):
    import dataclasses

    from adapterkit.data import load_task

    full = load_task("rotten_tomatoes")  # each split is in seeded random order: prefixes are samples
    task = dataclasses.replace(full, train=full.train[:1500], validation=full.validation[:200], test=full.test[:400])
    model = AdapterModel.from_pretrained("minilm")
    add_task_adapter(model, "rt", "houlsby", task)
    config = TrainingConfig(epochs=1, batch_size=32, max_length=64, output_dir=str(tmp_path), progress=False)
    result = Trainer(model, "rt", task, config).train()
    labels = [e.label for e in task.test]
    majority = max(labels.count(c) for c in set(labels)) / len(labels)
    assert result.test_metrics["accuracy"] > majority + 0.1, (result.test_metrics, majority)
