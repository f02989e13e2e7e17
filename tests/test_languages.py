"""Translation and domain language modelling on tiny random decoders: the causal-LM task forms
(loss on target tokens only), generation with adapters (cached = uncached, routed = separate
runs), the Django catalogue reader on a fake ``.mo`` file, perplexity and BLEU/chrF, and the CLI."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
import torch
from test_cli import run_cli
from test_training import one_thread  # noqa: F401 (autouse fixture)
from tiny_models import randomize
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from adapterkit import AdapterModel
from adapterkit.composition import Routed
from adapterkit.data.causal_lm import IGNORE_INDEX, CausalLMCollator, encode_language_model, encode_translation, left_padded, prompt_ids
from adapterkit.data.django_catalogues import read_catalogue, read_pairs, split_of, translation_task
from adapterkit.data.lm_tasks import language_model_task
from adapterkit.data.task import Example, TaskData
from adapterkit.heads import HeadConfig
from adapterkit.inference.perplexity import perplexity, summarize, token_nll
from adapterkit.inference.translation import evaluate_translation, translate, translation_scores
from adapterkit.training import Trainer, TrainingConfig, add_task_adapter

LM = HeadConfig(kind="causal_lm", num_labels=1)
#: methods that act on a decoder in different places: a linear site, a sublayer output, attention keys/values
GENERATION_METHODS = {"lora": {}, "pfeiffer": {}, "prefix": {"prefix_length": 3}}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: one token per UTF-8 byte, plus <s> (0) and </s> (1, also padding)."""
    vocab = {c: i for i, c in enumerate(["<s>", "</s>", *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def tiny_decoder(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=258, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def tiny_model(seed: int = 0) -> AdapterModel:
    return AdapterModel(tiny_decoder(seed), tokenizer=byte_tokenizer())


def with_adapters(methods: dict[str, str]) -> AdapterModel:
    """A tiny decoder holding adapter ``name`` of ``method`` for each item, with random weights
    (adapters start at or near identity, which would hide a missing adapter)."""
    model = tiny_model()
    for seed, (name, method) in enumerate(methods.items()):
        model.add_adapter(name, method, LM, **GENERATION_METHODS[method])
        randomize(model.adapters[name], seed=10 + seed, std=0.3)
    return model.eval()


PAIRS = [("Save", "Speichern"), ("Delete the file", "Datei löschen"), ("Yes", "Ja")]


# ---------------------------------------------------------------- task forms
def test_translation_labels_cover_the_target_and_eos_only_and_padding_is_ignored():
    tokenizer = byte_tokenizer()
    examples = [Example(pair, 0) for pair in PAIRS]
    encoded = encode_translation(tokenizer, examples, ("German",), max_length=64)
    for (source, target), item in zip(PAIRS, encoded.features):
        prompt = prompt_ids(tokenizer, source, "German", 32)
        answer = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert item["input_ids"] == prompt + answer
        assert item["labels"] == [IGNORE_INDEX] * len(prompt) + answer
    batch = CausalLMCollator(tokenizer)([encoded[i] for i in range(len(encoded))])
    padding = batch["attention_mask"] == 0
    assert padding.any() and (batch["labels"][padding] == IGNORE_INDEX).all()


def test_the_model_loss_is_the_target_tokens_cross_entropy_alone():
    """Would fail if the source (prompt) tokens or the padding got loss: the loss the trainer
    optimises equals the mean cross-entropy over the target positions only, which differs from the
    mean over every position."""
    model = tiny_model()
    tokenizer = model.tokenizer
    encoded = encode_translation(tokenizer, [Example(pair, 0) for pair in PAIRS], ("German",), max_length=64)
    batch = CausalLMCollator(tokenizer)([encoded[i] for i in range(len(encoded))])
    with torch.no_grad():
        output = model(**batch)
    logits, labels = output.logits[:, :-1], batch["labels"][:, 1:]
    target = labels != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[target], labels[target])
    torch.testing.assert_close(output.loss, expected)
    every_real_token = batch["attention_mask"][:, 1:].bool()
    with_source = torch.nn.functional.cross_entropy(logits[every_real_token], batch["input_ids"][:, 1:][every_real_token])
    assert not torch.allclose(output.loss, with_source)


def test_translation_truncates_the_source_and_refuses_bad_examples():
    tokenizer = byte_tokenizer()
    long = Example(("x" * 200, "y" * 200), 0)
    (item,) = encode_translation(tokenizer, [long], ("German",), max_length=40).features
    assert len(item["input_ids"]) == 40 and item["labels"][-1] != IGNORE_INDEX
    with pytest.raises(ValueError, match="two texts"):
        encode_translation(tokenizer, [Example(("only source",), 0)], ("German",), 40)
    with pytest.raises(ValueError, match="not an index"):
        encode_translation(tokenizer, [Example(PAIRS[0], 3)], ("German",), 40)
    with pytest.raises(ValueError, match="empty text"):
        encode_translation(tokenizer, [Example(("Save", " "), 0)], ("German",), 40)


def test_language_modelling_labels_every_text_token_after_bos():
    tokenizer = byte_tokenizer()
    (item,) = encode_language_model(tokenizer, [Example(("abc",), 0)], max_length=64).features
    assert item["input_ids"] == [tokenizer.bos_token_id, *tokenizer("abc", add_special_tokens=False)["input_ids"]]
    assert item["labels"] == item["input_ids"]  # the model shifts them: the three text bytes are predicted
    task = TaskData("t", "classification", ("text",), ("a", "b"), [Example(("x",), 1)], [Example(("y",), 0)], [Example(("z",), 1)])
    lm = language_model_task(task, "t_lm")
    assert lm.kind == "language_model" and lm.label_names == () and [e.texts for e in lm.test] == [("z",)]


# ---------------------------------------------------------------- generation
@pytest.mark.parametrize("method", list(GENERATION_METHODS))
def test_cached_and_uncached_generation_agree(method):
    model = with_adapters({"a": method})
    tokenizer = model.tokenizer
    batch = left_padded(tokenizer, [prompt_ids(tokenizer, s, "German", 32) for s, _ in PAIRS])
    options = dict(adapters="a", max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    cached = model.generate(**batch, **options)
    uncached = model.generate(**batch, use_cache=False, **options)
    assert torch.equal(cached, uncached)
    with model.using(None):
        plain = model.generate(**batch, **{**options, "adapters": None})
    assert not torch.equal(cached, plain)  # the adapter really acts


def test_a_batch_routed_to_language_adapters_equals_separate_runs():
    model = with_adapters({"de": "lora", "es": "pfeiffer", "fr": "prefix"})
    tokenizer = model.tokenizer
    rows = ["de", "es", "fr", None, "es"]
    sources = ["Save", "Delete the file", "Yes", "No", "Cancel"]
    batch = left_padded(tokenizer, [prompt_ids(tokenizer, s, "German", 32) for s in sources])
    with torch.no_grad():
        routed = model(**batch, adapters=Routed(rows)).logits
        for r, name in enumerate(rows):
            alone = model(**batch, adapters=name).logits[r]
            torch.testing.assert_close(routed[r], alone, rtol=1e-5, atol=1e-5)
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    for beams in (1, 2):
        generated = model.generate(**batch, adapters=Routed(rows), num_beams=beams, **options)
        for r, name in enumerate(rows):
            assert torch.equal(generated[r], model.generate(**batch, adapters=name, num_beams=beams, **options)[r])
    # and through translate(): one adapter name per source
    languages = ["German"] * len(sources)
    together = translate(model, sources, languages, rows, max_new_tokens=4, batch_size=len(sources))
    for r, name in enumerate(rows):
        assert together[r] == translate(model, sources, languages, name, max_new_tokens=4, batch_size=len(sources))[r]
    with pytest.raises(ValueError, match="one per source"):
        translate(model, sources, languages, rows[:2])


# ---------------------------------------------------------------- Django catalogues
def write_mo(path: Path, messages: dict[str, str]) -> Path:
    """A GNU gettext ``.mo`` file (little-endian, no hash table) holding ``messages``."""
    keys = sorted(messages)
    ids = [k.encode() for k in keys]
    strs = [messages[k].encode() for k in keys]
    start = 7 * 4 + 16 * len(keys)
    offsets, data = [], b""
    for blob in ids + strs:
        offsets.append((len(blob), start + len(data)))
        data += blob + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, len(keys), 7 * 4, 7 * 4 + 8 * len(keys), 0, 0)
    table = b"".join(struct.pack("<2I", *o) for o in offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + table + data)
    return path


FAKE = {
    "": "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n",
    "Hello": "Hallo",
    "Save": "Speichern",
    "%(count)s file\x00%(count)s files": "%(count)s Datei\x00%(count)s Dateien",  # plural: dropped
    "month name\x04May": "Mai",  # context: dropped
    "Two\nlines": "Zwei\nZeilen",  # line breaks: dropped
    "Untranslated": "",  # no translation: dropped
}


def test_the_django_reader_keeps_singular_one_line_entries(tmp_path):
    path = write_mo(tmp_path / "django.mo", FAKE)
    assert read_catalogue(path) == {"Hello": "Hallo", "Save": "Speichern"}
    (tmp_path / "bad.mo").write_bytes(b"not a catalogue")
    with pytest.raises(ValueError, match="bad.mo: not a readable gettext"):
        read_catalogue(tmp_path / "bad.mo")


def test_django_pairs_merge_contrib_catalogues_and_split_by_source_for_every_language(tmp_path):
    write_mo(tmp_path / "conf/locale/de/LC_MESSAGES/django.mo", FAKE)
    write_mo(tmp_path / "contrib/admin/locale/de/LC_MESSAGES/django.mo", {"Hello": "Servus", "Log out": "Abmelden"})
    pairs = read_pairs(tmp_path, "de")
    assert pairs == {"Hello": "Hallo", "Save": "Speichern", "Log out": "Abmelden"}  # the core catalogue wins
    with pytest.raises(ValueError, match="no Django catalogue for language 'xx'"):
        read_pairs(tmp_path, "xx")
    sources = [f"string {i}" for i in range(300)]
    task = translation_task("t", {"de": {s: s.upper() for s in sources}, "es": {s: s.title() for s in sources}}, seed=3)
    assert task.label_names == ("German", "Spanish")
    for split in ("train", "validation", "test"):
        examples = getattr(task, split)
        assert all(split_of(e.texts[0], 3) == split for e in examples)
        by_language = [{e.texts[0] for e in examples if e.label == k} for k in (0, 1)]
        assert by_language[0] == by_language[1]  # the same sources held out for every language
    assert 20 <= len(task.test) // 2 <= 70
    assert split_of("string 1", 3) == split_of("string 1", 3)


# ---------------------------------------------------------------- metrics
def test_perplexity_is_exp_of_the_token_weighted_mean_nll():
    vocab = 4
    uniform = torch.zeros(1, 3, vocab)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])
    total, count = token_nll(uniform, labels)
    assert count == 2 and math.isclose(float(total), 2 * math.log(vocab), rel_tol=1e-6)
    assert math.isclose(summarize(float(total), int(count))["perplexity"], vocab, rel_tol=1e-6)
    # token-weighted: a row of one scored token with NLL 0-ish and a row of three uniform ones
    sure = torch.full((1, 2, vocab), -30.0)
    sure[0, 0, 3] = 30.0
    logits = torch.cat([torch.nn.functional.pad(sure, (0, 0, 0, 2), value=0.0), torch.zeros(1, 4, vocab)])
    labels = torch.tensor([[0, 3, IGNORE_INDEX, IGNORE_INDEX], [0, 1, 2, 3]])
    total, count = token_nll(logits, labels)
    assert count == 4 and math.isclose(float(total) / 4, 3 * math.log(vocab) / 4, rel_tol=1e-5)
    with pytest.raises(ValueError, match="no labelled tokens"):
        summarize(0.0, 0)


def test_perplexity_of_a_model_matches_its_mean_loss_and_adapters_change_it():
    model = with_adapters({"a": "lora"})
    model.set_active("a")  # None still means the plain base, as after training (which activates the adapter)
    examples = [Example((text,), 0) for text in ("hello there", "a much longer text than the first one")]
    base = perplexity(model, examples, "language_model", None, max_length=64, batch_size=1)
    # one example per batch: token-weighted = each batch's mean loss weighted by its token count
    tokens = [len(f["input_ids"]) - 1 for f in encode_language_model(model.tokenizer, examples, 64).features]
    losses = []
    for example in examples:
        item = encode_language_model(model.tokenizer, [example], 64).features[0]
        ids = torch.tensor([item["input_ids"]])
        with torch.no_grad(), model.using(None):
            losses.append(float(model(input_ids=ids, labels=ids).loss))
    expected = sum(l * n for l, n in zip(losses, tokens)) / sum(tokens)
    assert math.isclose(base["nll"], expected, rel_tol=1e-5) and base["tokens"] == sum(tokens)
    assert perplexity(model, examples, "language_model", "a", max_length=64)["nll"] != pytest.approx(base["nll"])
    sources = ["Save", "Delete the file"]
    with model.using(None):
        expected = translate(model, sources, "German", None, max_new_tokens=5)
    assert translate(model, sources, "German", None, max_new_tokens=5) == expected
    assert translate(model, sources, "German", "a", max_new_tokens=5) != expected


def test_bleu_and_chrf_come_from_sacrebleu_and_the_eval_path_scores_generations():
    same = ["Die Datei wurde erfolgreich gelöscht.", "Ja, bitte speichern Sie das Formular."]
    assert translation_scores(same, same) == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    wrong = translation_scores(["völlig anders"], ["Datei löschen"])
    assert wrong["bleu"] < 5 and wrong["chrf"] < 30
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        translation_scores(["a"], ["a", "b"])
    model = with_adapters({"a": "lora"})
    examples = [Example(pair, 0) for pair in PAIRS]
    scores = evaluate_translation(model, examples, ("German",), "a", max_new_tokens=4)
    assert set(scores) == {"bleu", "chrf", "examples"} and scores["examples"] == 3


def test_training_a_translation_adapter_selects_by_validation_perplexity():
    model = tiny_model()
    sources = [f"item {i}" for i in range(40)]
    task = translation_task("toy", {"de": {s: s.replace("item", "Ding") for s in sources}})
    add_task_adapter(model, "de", "lora", task)
    result = Trainer(model, "de", task, TrainingConfig(epochs=2, batch_size=8, learning_rate=1e-2, progress=False, patience=None)).train()
    history = [r["validation"]["perplexity"] for r in result.history]
    assert result.validation_metrics["perplexity"] == min(history)
    assert set(result.test_metrics) == {"nll", "perplexity", "tokens"}
    model.add_adapter("clf", "lora", HeadConfig(num_labels=2))
    with pytest.raises(ValueError, match="classification head, but task 'toy' is translation"):
        Trainer(model, "clf", task)


# ---------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny_decoder_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("decoder") / "tiny llama"
    tiny_decoder().save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def test_cli_trains_evaluates_and_translates_with_a_django_task(tiny_decoder_dir, tmp_path):
    pytest.importorskip("django")
    output = tmp_path / "run"
    code, _, err = run_cli("train", "--model", str(tiny_decoder_dir), "--task", "django_de", "--method", "lora",
                           "--max-examples", "8", "--epochs", "1", "--batch-size", "4", "--max-length", "48",
                           "--output-dir", str(output), "--quiet")
    assert code == 0, err
    code, out, err = run_cli("eval", "--adapter", str(output / "best"), "--task", "django_de", "--max-examples", "4",
                             "--max-new-tokens", "4", "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert {"bleu", "chrf", "perplexity", "nll"} <= set(metrics)
    lines = tmp_path / "in.txt"
    lines.write_text("Save\nDelete the file\n")
    for beams in ("1", "2"):
        code, out, err = run_cli("predict", "--adapter", str(output / "best"), "--input", str(lines),
                                 "--max-new-tokens", "3", "--num-beams", beams)
        assert code == 0, err
        assert len(out.splitlines()) == 2
    code, _, err = run_cli("predict", "--adapter", str(output / "best"), "--input", str(lines), "--language", "Klingon")
    assert code != 0 and "not 'Klingon'" in err


def write_ztext(folder: Path, verses: list[str]) -> None:
    """A SWORD ztext module: one zlib block per testament holding ``verses`` ("" = empty slot)."""
    import zlib

    folder.mkdir(parents=True)
    for testament in ("ot", "nt"):
        text, index = b"", b""
        for verse in verses:
            raw = verse.encode()
            index += struct.pack("<IIH", 0, len(text), len(raw))
            text += raw
        block = zlib.compress(text)
        (folder / f"{testament}.bzs").write_bytes(struct.pack("<3I", 0, len(block), len(text)))
        (folder / f"{testament}.bzv").write_bytes(index)
        (folder / f"{testament}.bzz").write_bytes(block)


def test_the_bible_reader_aligns_verse_slots_and_keeps_the_words(tmp_path):
    from adapterkit.data.bible import load_bible_task, read_ztext

    english = ["", 'In the <w lemma="strong:H7225">beginning</w> God<note type="x">a note</note>.', "And it was so."]
    spanish = ["", '<w lemma="strong:H7225">EN el principio</w> Dios.', ""]
    write_ztext(tmp_path / "engKJV2006eb", english)
    write_ztext(tmp_path / "spaRV1909eb", spanish)
    assert read_ztext(tmp_path / "engKJV2006eb")[:3] == ["", "In the beginning God.", "And it was so."]
    task = load_bible_task("bible_es", root=tmp_path)
    pairs = {e.texts for split in (task.train, task.validation, task.test) for e in split}
    assert pairs == {("In the beginning God.", "EN el principio Dios.")}  # one slot empty in Spanish: dropped
    with pytest.raises(FileNotFoundError, match="apt-get install sword-text-kjv"):
        load_bible_task("bible_es", root=tmp_path / "nowhere")


def test_cli_routes_mixed_language_inputs_to_their_adapters(tiny_decoder_dir, tmp_path):
    pytest.importorskip("django")
    folders = []
    for code in ("de", "es"):
        output = tmp_path / code
        code_, _, err = run_cli("train", "--model", str(tiny_decoder_dir), "--task", f"django_{code}", "--method", "lora",
                                "--max-examples", "4", "--epochs", "1", "--batch-size", "4", "--max-length", "64",
                                "--lr", "0.05", "--output-dir", str(output), "--quiet")
        assert code_ == 0, err
        folders.append(str(output / "best"))
    lines = tmp_path / "mixed.txt"
    lines.write_text("German\tSave\nSpanish\tSave\nGerman\tDelete\n")
    code, out, err = run_cli("predict", "--adapters", ",".join(folders), "--input", str(lines), "--max-new-tokens", "3")
    assert code == 0, err
    routed = out.splitlines()
    for language, folder, rows in (("German", folders[0], [0, 2]), ("Spanish", folders[1], [1])):
        single = tmp_path / f"{language}.txt"
        single.write_text("Save\nSpanish-only\nDelete\n" if language == "German" else "x\nSave\ny\n")
        code, out, err = run_cli("predict", "--adapter", folder, "--input", str(single), "--max-new-tokens", "3")
        assert code == 0, err
        assert [out.splitlines()[r] for r in rows] == [routed[r] for r in rows]
    lines.write_text("French\tSave\n")
    code, _, err = run_cli("predict", "--adapters", ",".join(folders), "--input", str(lines))
    assert code != 0 and "no adapter translates into French" in err
