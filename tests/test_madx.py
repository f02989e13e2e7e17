"""MAD-X: BERT's masking, the tied masked-LM head, and language adapters under task adapters.

Tiny random BERTs and a word-level tokenizer; every composed result is checked against a
computation written out by hand (plain hooks calling the adapters' own site modules).
"""

from __future__ import annotations

import random

import pytest
import torch
from method_table import run, sublayer_hooks
from safetensors.torch import load_file
from test_training import VOCAB, build_tiny_model_dir, quick, tiny_tokenizer
from tiny_models import HIDDEN, randomize, tiny_base, tiny_batch
from tiny_models import VOCAB as TINY_VOCAB

from adapterkit import AdapterModel, HeadConfig
from adapterkit.composition import Stack
from adapterkit.data import Example, TaskData
from adapterkit.data.masking import IGNORE_INDEX, MaskedLMCollator, as_masked_lm, mask_tokens
from adapterkit.data.party_blocs import PARTY_BLOCS
from adapterkit.inference.masked_lm import evaluate_masked_lm
from adapterkit.masked_lm_head import MaskedLMHead
from adapterkit.training import Trainer, task_head

MLM = HeadConfig(kind="masked_lm", dropout=0.0)


# ----------------------------------------------------------------------------- masking
def encoded_batch(rows: int = 400, seed: int = 0) -> list[dict]:
    """Tokenised word sequences of random lengths (so the padded batch has padding)."""
    tokenizer, rng = tiny_tokenizer(), random.Random(seed)
    words = VOCAB[5:]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(rows)]
    return [{k: v for k, v in tokenizer(t).items()} for t in texts]


def test_masking_never_touches_specials_or_padding_and_keeps_bert_proportions():
    tokenizer = tiny_tokenizer()
    items = encoded_batch()
    padded = MaskedLMCollator(tokenizer, seed=3).pad(items)
    batch = MaskedLMCollator(tokenizer, seed=3, dynamic=True)(items)
    original, ids, labels = padded["input_ids"], batch["input_ids"], batch["labels"]
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids)) | (padded["attention_mask"] == 0)
    assert special.any() and (padded["attention_mask"] == 0).any()
    assert torch.equal(ids[special], original[special]), "a special token or padding was changed"
    assert (labels[special] == IGNORE_INDEX).all(), "a special token or padding was chosen"
    chosen = labels != IGNORE_INDEX
    assert torch.equal(labels[chosen], original[chosen])
    assert torch.equal(ids[~chosen], original[~chosen]), "a token that was not chosen was changed"
    maskable = (~special).sum().item()
    assert abs(chosen.sum().item() / maskable - 0.15) < 0.01
    n = chosen.sum().item()
    to_mask = (ids[chosen] == tokenizer.mask_token_id).sum().item() / n
    kept = (ids[chosen] == original[chosen]).sum().item() / n
    assert abs(to_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03  # random: 10% (a random id may equal the original)
    assert torch.equal(MaskedLMCollator(tokenizer, seed=3, dynamic=True)(items)["labels"], labels), "not reproducible"
    per_text = MaskedLMCollator(tokenizer, seed=3)(items)  # evaluation: each text alone
    assert (per_text["labels"][special] == IGNORE_INDEX).all() and torch.equal(per_text["input_ids"][special], original[special])
    assert abs((per_text["labels"] != IGNORE_INDEX).sum().item() / maskable - 0.15) < 0.01
    assert not torch.equal(MaskedLMCollator(tokenizer, seed=4)(items)["labels"], labels)


def test_mask_tokens_refuses_bad_arguments():
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="shape of input_ids"):
        mask_tokens(ids, torch.ones(3, 2, dtype=torch.bool), 4, 10, torch.Generator())
    with pytest.raises(ValueError, match="probability"):
        mask_tokens(ids, torch.ones(2, 3, dtype=torch.bool), 4, 10, torch.Generator(), probability=0.0)


def test_as_masked_lm_keeps_the_splits():
    task = TaskData("t", "classification", ("text",), ("a", "b"), [Example(("x y",), 1)], [Example(("z",), 0)], [Example(("w",), 1)])
    mlm = as_masked_lm(task)
    assert mlm.kind == "masked_lm" and mlm.name == "mlm_t" and mlm.label_names == ()
    assert [e.texts for e in mlm.train + mlm.validation + mlm.test] == [("x y",), ("z",), ("w",)]


def test_party_blocs_name_only_parties_the_corpus_has():
    assert set(PARTY_BLOCS) == {"en", "de", "es", "nl"}
    assert all(set(blocs.values()) == {"left", "right"} for blocs in PARTY_BLOCS.values())


# ----------------------------------------------------------------------------- the head
def mlm_model(seed: int = 0) -> AdapterModel:
    model = AdapterModel(tiny_base("bert", seed=seed))
    model.add_adapter("lang", "pfeiffer", MLM, reduction_factor=4)
    randomize(model.adapters["lang"], seed=11)
    return model


def masked(batch: dict, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids, labels = mask_tokens(batch["input_ids"], batch["attention_mask"].bool(), 4, TINY_VOCAB, generator, probability=0.4)
    return {**batch, "input_ids": ids, "labels": labels}


def test_head_is_tied_to_the_word_embeddings_and_owns_only_its_transform():
    model = mlm_model()
    head = model.heads["lang"]
    assert isinstance(head, MaskedLMHead)
    assert head.decoder_weight is model.base.get_input_embeddings().weight
    saved = model.adapter_state("lang").tensors()
    heads = {k for k in saved if k.startswith("head.")}
    assert heads == {"head.dense.weight", "head.dense.bias", "head.norm.weight", "head.norm.bias", "head.bias"}
    assert all(t.shape != (TINY_VOCAB, HIDDEN) for t in saved.values())


def test_loss_is_read_only_at_masked_positions():
    model = mlm_model().eval()
    batch = masked(tiny_batch(batch=4, seq=9))
    labels = batch["labels"]
    assert (labels != IGNORE_INDEX).any() and (labels == IGNORE_INDEX).any()
    with torch.no_grad():
        out = model(**batch, adapters="lang")
        full = model(**{k: v for k, v in batch.items() if k != "labels"}, adapters="lang").logits  # (B, S, V)
    chosen = labels != IGNORE_INDEX
    assert full.shape == (*labels.shape, TINY_VOCAB)
    assert out.logits.shape == (chosen.sum(), TINY_VOCAB)
    torch.testing.assert_close(out.logits, full[chosen])
    expected = torch.nn.functional.cross_entropy(full[chosen], labels[chosen])
    torch.testing.assert_close(out.loss, expected)
    # another label at an unmasked position changes nothing: it is not read
    other = labels.clone()
    other[~chosen] = IGNORE_INDEX
    with torch.no_grad():
        assert torch.equal(model(**{**batch, "labels": other}, adapters="lang").loss, out.loss)


def test_tie_survives_save_and_load_and_the_base_stays_bit_identical_after_training(tmp_path):
    model = mlm_model()
    base = {k: v.clone() for k, v in model.base.state_dict().items()}
    before = {k: v.clone() for k, v in model.adapter_state("lang").tensors().items()}
    model.train_adapter("lang")
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = masked(tiny_batch(batch=4, seq=9))
    for _ in range(2):
        model(**batch, adapters="lang").loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(v, model.base.state_dict()[k]) for k, v in base.items()), "the base changed"
    after = model.adapter_state("lang").tensors()
    assert all(not torch.equal(before[k], after[k]) for k in ("head.dense.weight", "head.bias", "adapter.layers.0.ffn.down.weight"))
    model.eval()
    model.save_adapter("lang", tmp_path / "lang")
    stored = load_file(str(tmp_path / "lang" / "adapter.safetensors"))
    assert all(t.shape != (TINY_VOCAB, HIDDEN) for t in stored.values()), "the embedding matrix was saved"
    fresh = AdapterModel(tiny_base("bert", seed=0))
    fresh.load_adapter(tmp_path / "lang")
    assert fresh.heads["lang"].decoder_weight is fresh.base.get_input_embeddings().weight
    assert fresh.heads["lang"].decoder_weight is not model.heads["lang"].decoder_weight
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch, adapters="lang").logits, model(**batch, adapters="lang").logits, rtol=0, atol=0)


def test_masked_lm_head_refuses_a_decoder():
    model = AdapterModel(tiny_base("llama"))
    with pytest.raises(ValueError, match="needs a text encoder"):
        model.add_adapter("lang", "pfeiffer", MLM)


# ----------------------------------------------------------------------------- Stack(lang, task)
def stacked_model() -> AdapterModel:
    model = AdapterModel(tiny_base("bert"))
    for k, lang in enumerate(("lang_en", "lang_de")):
        model.add_adapter(lang, "pfeiffer", MLM, reduction_factor=4)
        randomize(model.adapters[lang], seed=20 + k)
    model.add_adapter("task", "pfeiffer", HeadConfig(num_labels=2, dropout=0.0), reduction_factor=4)
    randomize(model.adapters["task"], seed=30)
    randomize(model.heads["task"], seed=31)
    return model.eval()


def hand_composed(model: AdapterModel, batch: dict, lang: str) -> torch.Tensor:
    """Task logits with ``lang``'s adapter applied, then the task adapter's, at every FFN site."""
    def lang_then_task(layer, inputs, out):
        lang_module = model.adapters[lang].layers[str(layer)]["ffn"]
        task_module = model.adapters["task"].layers[str(layer)]["ffn"]
        return run(task_module, inputs, run(lang_module, inputs, out))

    with torch.no_grad(), sublayer_hooks(model, lang_then_task):
        hidden = model.body(**batch).last_hidden_state
        return model.heads["task"](hidden, batch["attention_mask"])


@pytest.mark.parametrize("lang", ["lang_en", "lang_de"])
def test_stack_of_language_and_task_adapter_equals_the_hand_composed_computation(lang):
    model, batch = stacked_model(), tiny_batch(batch=3)
    with torch.no_grad():
        logits = model(**batch, adapters=Stack(lang, "task")).logits
    torch.testing.assert_close(logits, hand_composed(model, batch, lang), rtol=0, atol=1e-6)


def test_swapping_the_language_adapter_changes_only_what_it_should():
    model, batch = stacked_model(), tiny_batch(batch=3)
    base = {k: v.clone() for k, v in model.base.state_dict().items()}
    task = {k: v.clone() for k, v in model.adapter_state("task").tensors().items()}
    with torch.no_grad():
        en = model(**batch, adapters=Stack("lang_en", "task")).logits
        de = model(**batch, adapters=Stack("lang_de", "task")).logits
        alone = model(**batch, adapters="task").logits
    assert not torch.allclose(en, de) and not torch.allclose(en, alone)
    # the pass with lang_de reads nothing of lang_en: give lang_de lang_en's weights and it answers alike
    with torch.no_grad():
        for key, tensor in model.adapter_state("lang_en").tensors().items():
            model.adapter_state("lang_de").tensors()[key].copy_(tensor)
        torch.testing.assert_close(model(**batch, adapters=Stack("lang_de", "task")).logits, en, rtol=0, atol=0)
    assert all(torch.equal(v, model.base.state_dict()[k]) for k, v in base.items())
    assert all(torch.equal(v, model.adapter_state("task").tensors()[k]) for k, v in task.items())


# ----------------------------------------------------------------------------- training
def text_task(count: int = 48) -> TaskData:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(VOCAB[5:]) for _ in range(rng.randint(4, 10))) for _ in range(count)]
    examples = [Example((t,), k % 2) for k, t in enumerate(texts)]
    return TaskData("toy", "classification", ("text",), ("a", "b"), examples[:32], examples[32:40], examples[40:])


def test_trainer_trains_a_language_adapter_then_a_task_adapter_above_it(tmp_path):
    model = AdapterModel.from_pretrained(str(build_tiny_model_dir(tmp_path / "base")))
    base = {k: v.clone() for k, v in model.base.state_dict().items()}
    mlm = as_masked_lm(text_task())
    model.add_adapter("lang", "pfeiffer", task_head(mlm), reduction_factor=4)
    result = Trainer(model, "lang", mlm, quick(tmp_path / "lang", epochs=2, max_length=64)).train()
    assert set(result.test_metrics) == {"masked_accuracy", "loss", "perplexity"}
    again = evaluate_masked_lm(model, mlm.test, "lang", max_length=64, batch_size=3)  # the trainer's batches: 64
    assert again == pytest.approx(result.test_metrics)  # the same masks whatever the batches
    lang = {k: v.clone() for k, v in model.adapter_state("lang").tensors().items()}
    task = text_task()
    model.add_adapter("task", "pfeiffer", task_head(task), reduction_factor=4)
    Trainer(model, "task", task, quick(tmp_path / "task", epochs=1, max_length=64), setup=Stack("lang", "task")).train()
    assert all(torch.equal(v, model.adapter_state("lang").tensors()[k]) for k, v in lang.items()), "the language adapter trained"
    assert all(torch.equal(v, model.base.state_dict()[k]) for k, v in base.items())


# ----------------------------------------------------------------------------- the CLI
def test_cli_trains_language_adapters_a_task_adapter_above_one_and_swaps_them(tmp_path):
    import json

    from test_cli import run_cli, write_csv

    model = str(build_tiny_model_dir(tmp_path / "base"))
    common = ("--model", model, "--method", "pfeiffer", "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--quiet")
    for lang in ("en", "de"):
        code, out, err = run_cli(
            "train", *common, "--task", f"mlm_parlspeech_{lang}", "--max-examples", "16",
            "--name", f"lang_{lang}", "--output-dir", str(tmp_path / f"lang_{lang}"),
        )
        assert code == 0, err
        assert "masked_accuracy" in out
    files = {split: write_csv(tmp_path / f"{split}.csv", 24, seed) for seed, split in enumerate(("train", "validation", "test"))}
    code, out, err = run_cli(
        "train", *common, "--train-file", str(files["train"]), "--validation-file", str(files["validation"]),
        "--test-file", str(files["test"]), "--text-column", "review", "--label-column", "sentiment",
        "--name", "task", "--stack-under", str(tmp_path / "lang_en" / "best"), "--output-dir", str(tmp_path / "task"),
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "task" / "best" / "adapter_config.json").read_text())
    assert meta["stacked_under"] == {"lang_en": str((tmp_path / "lang_en" / "best").resolve())}
    assert "lang_en" not in json.dumps(meta["config"])  # only the task adapter's weights are in the folder
    results = {}
    evaluated = {"recorded": (), "swapped": ("--stack-under", str(tmp_path / "lang_de" / "best")), "alone": ("--alone",)}
    for row, extra in evaluated.items():
        code, out, err = run_cli(
            "eval", "--adapter", str(tmp_path / "task" / "best"), "--test-file", str(files["test"]),
            "--text-column", "review", "--label-column", "sentiment", *extra, "--json",
        )
        assert code == 0, err
        results[row] = json.loads(out)
    recorded = json.loads((tmp_path / "task" / "results.json").read_text())["test_metrics"]
    assert {k: results["recorded"][k] for k in recorded} == pytest.approx(recorded)  # eval reruns the trained Stack(lang_en, task)
    code, out, err = run_cli("eval", "--adapter", str(tmp_path / "lang_de" / "best"), "--task", "mlm_parlspeech_en", "--max-examples", "8")
    assert code == 0, err
    assert "masked_accuracy" in out and "perplexity" in out


def test_evaluation_masks_each_text_alike_whatever_the_batch_and_the_padding_side():
    tokenizer = tiny_tokenizer()
    items = encoded_batch(rows=12, seed=5)
    whole = MaskedLMCollator(tokenizer, seed=1)(items)
    halves = [MaskedLMCollator(tokenizer, seed=1)(part) for part in (items[:5], items[5:])]
    for row in range(12):
        part, index = (halves[0], row) if row < 5 else (halves[1], row - 5)
        n = len(items[row]["input_ids"])
        assert torch.equal(whole["labels"][row, :n], part["labels"][index, :n])
        assert torch.equal(whole["input_ids"][row, :n], part["input_ids"][index, :n])
    tokenizer.padding_side = "left"
    left = MaskedLMCollator(tokenizer, seed=1)(items)
    width = whole["labels"].shape[1]
    for row in range(12):
        n = len(items[row]["input_ids"])
        assert torch.equal(left["labels"][row, width - n :], whole["labels"][row, :n])
