"""Causal-LM fine-tuning from the command line on a tiny random Llama: instruction and text files
(loss on the response only), ``adapterkit generate``, and ``convert --to merged`` (a plain
transformers folder giving the adapter's logits)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from test_cli import run_cli
from test_languages import byte_tokenizer, tiny_decoder
from test_training import one_thread  # noqa: F401 (autouse fixture)
from tiny_models import randomize
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapterkit import AdapterModel
from adapterkit.data.causal_lm import IGNORE_INDEX, CausalLMCollator, encode_for
from adapterkit.data.lm_files import load_lm_files
from adapterkit.data.prompts import CHAT_TEMPLATE, SIMPLE, instruction_prompt_ids
from adapterkit.heads import HeadConfig
from adapterkit.inference.generating import respond
from adapterkit.inference.perplexity import perplexity

LM = HeadConfig(kind="causal_lm", num_labels=1)
CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


def one_error(err: str, command: str) -> bool:
    """Whether stderr ends in one error line of ``command`` and holds no traceback (progress bars
    of model loading may come before it)."""
    lines = err.strip().splitlines()
    return "Traceback" not in err and lines[-1].startswith(f"adapterkit {command}: error:") and err.count("error:") == 1


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def instruction_rows(count: int) -> list[dict]:
    return [{"instruction": f"Repeat {i}", "response": f"ok {i}"} for i in range(count)]


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("causal") / "tiny llama"
    tiny_decoder().save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def trained(decoder_dir, tmp_path_factory) -> Path:
    """An instruction adapter trained once through the CLI; its run folder."""
    root = tmp_path_factory.mktemp("instruct")
    train = write_jsonl(root / "chat.jsonl", instruction_rows(20))
    output = root / "run"
    code, _, err = run_cli("train", "--model", str(decoder_dir), "--train-file", str(train), "--method", "lora",
                           "--epochs", "1", "--batch-size", "4", "--lr", "0.05", "--max-length", "48",
                           "--output-dir", str(output), "--quiet")
    assert code == 0, err
    return output


# ---------------------------------------------------------------- data
def test_instruction_labels_cover_the_response_and_eos_only(tmp_path):
    rows = [{"instruction": "Translate", "input": "Hallo", "response": "Hello"}, *instruction_rows(19)]
    task = load_lm_files(write_jsonl(tmp_path / "chat.jsonl", rows), seed=0)
    assert task.kind == "instruction" and task.prompt_format == SIMPLE
    assert len(task.validation) == len(task.test) == 2 and len(task.train) == 16
    tokenizer = byte_tokenizer()
    (example,) = [e for e in task.train + task.validation + task.test if e.texts[1] == "Hello"]
    assert example.texts[0] == "Translate\n\nHallo"  # the input joined after a blank line
    (item,) = encode_for("instruction", tokenizer, [example], (), 128, SIMPLE).features
    prompt = [tokenizer.bos_token_id, *tokenizer("### Instruction:\nTranslate\n\nHallo\n\n### Response:\n", add_special_tokens=False)["input_ids"]]
    answer = [*tokenizer("Hello", add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    assert item["input_ids"] == prompt + answer
    assert item["labels"] == [IGNORE_INDEX] * len(prompt) + answer


def test_the_model_loss_is_the_response_tokens_cross_entropy_alone(tmp_path):
    """Would fail if the prompt or the padding got loss: the model's loss equals the mean
    cross-entropy over the response positions only, not over every real token."""
    task = load_lm_files(write_jsonl(tmp_path / "chat.jsonl", instruction_rows(20)))
    model = AdapterModel(tiny_decoder(), tokenizer=byte_tokenizer())
    encoded = encode_for(task.kind, model.tokenizer, task.train[:4], (), 64, task.prompt_format)
    batch = CausalLMCollator(model.tokenizer)([encoded[i] for i in range(4)])
    with torch.no_grad():
        output = model(**batch)
    logits, labels = output.logits[:, :-1], batch["labels"][:, 1:]
    response = labels != IGNORE_INDEX
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(logits[response], labels[response]))
    real = batch["attention_mask"][:, 1:].bool()
    assert not torch.allclose(output.loss, torch.nn.functional.cross_entropy(logits[real], batch["input_ids"][:, 1:][real]))
    assert response.sum() < real.sum()


def test_prompt_completion_rows_and_the_chat_template(tmp_path):
    rows = [{"prompt": f"Say {i}", "completion": f"{i}"} for i in range(20)]
    task = load_lm_files(write_jsonl(tmp_path / "pc.jsonl", rows), prompt_format=CHAT_TEMPLATE)
    assert task.kind == "instruction" and task.prompt_format == CHAT_TEMPLATE
    tokenizer = byte_tokenizer()
    with pytest.raises(ValueError, match="has no chat template; drop --chat-template"):
        encode_for("instruction", tokenizer, task.train, (), 64, CHAT_TEMPLATE)
    tokenizer.chat_template = CHAT
    (item,) = encode_for("instruction", tokenizer, task.train[:1], (), 64, CHAT_TEMPLATE).features
    prompt = [i for i, label in zip(item["input_ids"], item["labels"]) if label == IGNORE_INDEX]
    assert tokenizer.decode(prompt) == f"<|user|>{task.train[0].texts[0]}\n<|assistant|>"
    assert instruction_prompt_ids(tokenizer, "x" * 50, CHAT_TEMPLATE, 5) == tokenizer("<|user|>xxxxx\n<|assistant|>", add_special_tokens=False)["input_ids"]


def test_text_rows_are_language_modelling_with_every_token_labelled(tmp_path):
    task = load_lm_files(write_jsonl(tmp_path / "notes.jsonl", [{"text": f"line number {i}"} for i in range(20)]))
    assert task.kind == "language_model" and task.prompt_format is None
    (item,) = encode_for(task.kind, byte_tokenizer(), task.train[:1], (), 64, task.prompt_format).features
    assert item["labels"] == item["input_ids"]


@pytest.mark.parametrize("rows, kind, message", [
    ([{"instruction": "a", "completion": "b"}], None, r"columns \['completion', 'instruction'\] are not causal-LM data; the accepted columns are instruction \+ response"),
    ([{"instruction": "a", "response": "b", "system": "c"}], None, "not causal-LM data"),
    ([{"instruction": "a", "response": "b"}, {"text": "c"}], None, r"line 2: columns \['text'\] \(text\), but line 1 is instruction/response"),
    ([{"text": "a"}], "instruction", "the accepted columns are instruction/response or prompt/completion"),
    ([{"instruction": "a", "response": " "}], None, "empty text in column 'response'"),
    ([], None, "is empty"),
    ([{"text": "a"}, {"text": "b"}], None, "too few examples"),
])
def test_bad_files_are_refused_naming_the_fix(tmp_path, rows, kind, message):
    with pytest.raises(ValueError, match=message):
        load_lm_files(write_jsonl(tmp_path / "bad.jsonl", rows), kind=kind)


def test_the_cli_refuses_bad_files_in_one_line(decoder_dir, tmp_path):
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "a", "response": "b"}] * 20)
    for extra in ((), ("--kind", "instruction")):
        code, out, err = run_cli("train", "--model", str(decoder_dir), "--train-file", str(mixed), "--method", "lora", *extra)
        assert code == 2 and out == "" and one_error(err, "train")
        assert "columns ['prompt', 'response'] are not causal-LM data; the accepted columns are" in err
        assert "prompt + completion" in err or "prompt/completion" in err
    (tmp_path / "empty.jsonl").write_text("\n")
    code, _, err = run_cli("train", "--model", str(decoder_dir), "--train-file", str(tmp_path / "empty.jsonl"),
                           "--method", "lora", "--kind", "text")
    assert code == 2 and "is empty" in err and one_error(err, "train")
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": f"t {i}"} for i in range(20)])
    code, _, err = run_cli("train", "--model", str(decoder_dir), "--train-file", str(texts), "--method", "lora", "--chat-template")
    assert code == 2 and "--chat-template writes instruction prompts" in err
    code, _, err = run_cli("train", "--model", str(decoder_dir), "--train-file", str(texts), "--method", "lora", "--kind", "text",
                           "--text-column", "text")
    assert code == 2 and "causal-LM files have fixed columns" in err


# ---------------------------------------------------------------- train and generate
def test_training_on_instruction_rows_reports_perplexity_and_records_the_prompt_format(trained):
    results = json.loads((trained / "results.json").read_text())
    assert results["kind"] == "instruction" and {"nll", "perplexity", "tokens"} <= set(results["test_metrics"])
    assert "perplexity" in results["history"][0]["validation"]
    meta = json.loads((trained / "best" / "adapter_config.json").read_text())
    assert meta["task"]["kind"] == "instruction" and meta["task"]["prompt_format"] == "simple"


def test_eval_reports_the_response_perplexity_of_a_test_file(trained, decoder_dir, tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "Repeat 5", "completion": "ok 5"}, {"prompt": "Repeat 6", "completion": "ok 6"}])
    code, out, err = run_cli("eval", "--adapter", str(trained / "best"), "--test-file", str(test), "--json")
    assert code == 0, err
    model = AdapterModel.from_pretrained(str(decoder_dir))
    name = model.load_adapter(trained / "best")
    examples = load_lm_files(test, test, test).test
    expected = perplexity(model, examples, "instruction", name, max_length=48, prompt_format=SIMPLE)
    assert json.loads(out) == pytest.approx(expected)
    assert expected["tokens"] == 2 * (len("ok 5") + 1)  # the response bytes and EOS, twice: the prompts score nothing


def greedy(model: AdapterModel, adapter: str | None, prompt: str, new: int) -> str:
    """The response by hand: the simple prompt written out, greedy decoding, the new tokens decoded."""
    tokenizer = model.tokenizer
    text = f"### Instruction:\n{prompt}\n\n### Response:\n"
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
    with model.using(adapter):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapters=adapter, max_new_tokens=new,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_generate_prints_the_response_in_the_trained_prompt_format(trained, decoder_dir, tmp_path, monkeypatch):
    best = trained / "best"
    code, out, err = run_cli("generate", "--adapter", str(best), "--prompt", "Repeat 3", "--max-new-tokens", "6")
    assert code == 0, err
    model = AdapterModel.from_pretrained(str(decoder_dir))
    name = model.load_adapter(best)
    expected = greedy(model, name, "Repeat 3", 6)
    assert out == expected + "\n"
    base = greedy(model, None, "Repeat 3", 6)
    assert base != expected  # the adapter changes the answer
    code, out, err = run_cli("generate", "--model", str(decoder_dir), "--prompt", "Repeat 3", "--max-new-tokens", "6")
    assert code == 0, err
    assert out == base + "\n"
    # several prompts: from a JSON Lines file, or stdin lines, one response per line
    prompts = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Repeat 3"}, {"instruction": "Repeat", "input": "7", "response": "x"}])
    code, out, err = run_cli("generate", "--adapter", str(best), "--input", str(prompts), "--max-new-tokens", "6")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == expected.replace("\n", "\\n") and len(lines) == 2
    assert lines[1] == respond(model, ["Repeat\n\n7"], name, SIMPLE, max_length=48, max_new_tokens=6)[0].replace("\n", "\\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("Repeat 3\n\nRepeat 4\n"))
    code, out, err = run_cli("generate", "--adapter", str(best), "--max-new-tokens", "6")
    assert code == 0 and out.splitlines()[0] == lines[0] and len(out.splitlines()) == 2


def test_generate_samples_with_a_seed_and_refuses_bad_requests(trained, decoder_dir, tmp_path):
    best = str(trained / "best")
    sample = ("generate", "--adapter", best, "--prompt", "Repeat 1", "--max-new-tokens", "8", "--temperature", "5")
    runs = [run_cli(*sample, "--seed", seed) for seed in ("1", "1", "2", "3")]
    assert all(code == 0 for code, _, _ in runs)
    assert runs[0][1] == runs[1][1]  # the same seed, the same sample
    assert len({out for _, out, _ in runs}) > 1  # a hot temperature over a random model: other seeds differ
    code, out, err = run_cli("generate", "--adapter", best, "--prompt", "Repeat 1", "--num-beams", "2", "--max-new-tokens", "4")
    assert code == 0, err
    for argv, message in (
        (("--adapter", best, "--prompt", "x", "--temperature", "0"), "--temperature must be > 0"),
        (("--prompt", "x"), "name a causal-LM adapter with --adapter DIR, or a base model with --model"),
        (("--adapter", best, "--prompt", " "), "--prompt 1: empty text"),
        (("--adapter", best, "--input", str(write_jsonl(tmp_path / "q.jsonl", [{"question": "x"}]))), "not a prompt"),
        (("--adapter", best, "--input", str(tmp_path / "missing.txt")), "file not found"),
        (("--adapter", str(saved_adapter(decoder_dir, tmp_path / "clf", "lora", HeadConfig(num_labels=2))), "--prompt", "x"),
         "is not a causal-LM adapter trained on instruction or text files (its head: classification)"),
    ):
        code, out, err = run_cli("generate", *argv)
        assert code == 2 and out == "" and message in err and one_error(err, "generate"), err


def test_a_text_adapter_trains_on_given_splits_and_generate_continues_the_text(decoder_dir, tmp_path):
    splits = {split: write_jsonl(tmp_path / f"{split}.jsonl", [{"text": f"{split} line {i}"} for i in range(n)])
              for split, n in (("notes", 12), ("held", 3), ("final", 2))}
    output = tmp_path / "run"
    code, _, err = run_cli("train", "--model", str(decoder_dir), "--train-file", str(splits["notes"]), "--validation-file",
                           str(splits["held"]), "--test-file", str(splits["final"]), "--method", "lora", "--epochs", "1",
                           "--batch-size", "4", "--max-length", "32", "--output-dir", str(output), "--quiet")
    assert code == 0, err
    results = json.loads((output / "results.json").read_text())
    assert results["kind"] == "language_model" and results["test_metrics"]["tokens"] == 2 * len("final line 0")
    code, out, err = run_cli("generate", "--adapter", str(output / "best"), "--prompt", "notes line", "--max-new-tokens", "5")
    assert code == 0, err
    model = AdapterModel.from_pretrained(str(decoder_dir))
    name = model.load_adapter(output / "best")
    ids = torch.tensor([[model.tokenizer.bos_token_id, *model.tokenizer("notes line", add_special_tokens=False)["input_ids"]]])
    with model.using(name):
        new = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), adapters=name, max_new_tokens=5, do_sample=False,
                             eos_token_id=model.tokenizer.eos_token_id, pad_token_id=model.tokenizer.pad_token_id)[0, ids.shape[1]:]
    assert out == model.tokenizer.decode(new, skip_special_tokens=True).strip() + "\n"


def test_predict_answers_instruction_prompts_one_line_each(trained, decoder_dir, tmp_path):
    lines = tmp_path / "in.txt"
    lines.write_text("Repeat 3\nRepeat 4\n")
    code, out, err = run_cli("predict", "--adapter", str(trained / "best"), "--input", str(lines), "--max-new-tokens", "6")
    assert code == 0, err
    model = AdapterModel.from_pretrained(str(decoder_dir))
    name = model.load_adapter(trained / "best")
    expected = respond(model, ["Repeat 3", "Repeat 4"], name, SIMPLE, max_length=48, max_new_tokens=6)
    assert out.splitlines() == [" ".join(r.split("\n")) for r in expected]


# ---------------------------------------------------------------- merged export
def saved_adapter(decoder_dir: Path, folder: Path, method: str, head: HeadConfig | None = LM, **options) -> Path:
    """An adapter with random weights (they start at identity, which would hide a missing merge), saved."""
    model = AdapterModel.from_pretrained(str(decoder_dir))
    model.add_adapter("a", method, head, **options)
    randomize(model.adapters["a"], seed=3, std=0.3)
    model.save_adapter("a", folder)
    return folder


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_a_merged_export_loads_with_plain_transformers_and_gives_the_adapter_logits(decoder_dir, tmp_path, method):
    folder = saved_adapter(decoder_dir, tmp_path / "adapter", method)
    out = tmp_path / "merged"
    code, stdout, err = run_cli("convert", str(folder), str(out), "--to", "merged")
    assert code == 0, err
    assert "merged" in stdout
    model = AdapterModel.from_pretrained(str(decoder_dir))
    name = model.load_adapter(folder)
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["### Instruction:\nhello", "a"], return_tensors="pt", padding=True)
    with torch.no_grad():
        adapted = model(**batch, adapters=name).logits
        merged = plain(**batch).logits
        with model.using(None):
            base = model(**batch, adapters=None).logits
    mask = batch["attention_mask"].bool()
    assert (adapted[mask] - merged[mask]).abs().max() < 1e-5
    assert (adapted[mask] - base[mask]).abs().max() > 1e-3  # the adapter changes the outputs
    assert not any("lora" in key or "ia3" in key for key in plain.state_dict())
    assert plain.config.adapterkit_merged == {"adapter": "a", "method": method, "prompt_format": None}


def test_merged_export_refuses_what_a_plain_folder_cannot_hold(decoder_dir, tmp_path):
    bottleneck = saved_adapter(decoder_dir, tmp_path / "bottleneck", "pfeiffer")
    code, out, err = run_cli("convert", str(bottleneck), str(tmp_path / "out"), "--to", "merged")
    assert code == 2 and out == "" and one_error(err, "convert")
    assert "is a pfeiffer adapter, which cannot be merged" in err and "lora" in err and "ia3" in err
    classifier = saved_adapter(decoder_dir, tmp_path / "classifier", "lora", HeadConfig(num_labels=2, pooling="last"))
    code, out, err = run_cli("convert", str(classifier), str(tmp_path / "out"), "--to", "merged")
    assert code == 2 and "has a classification head, which a plain transformers folder cannot hold" in err
    assert not (tmp_path / "out").exists()


def test_a_merged_instruction_adapter_answers_as_the_adapter_does(trained, tmp_path):
    out = tmp_path / "merged"
    code, _, err = run_cli("convert", str(trained / "best"), str(out), "--to", "merged")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["adapterkit_merged"]["prompt_format"] == "simple"
    ask = ("--prompt", "Repeat 2", "--max-new-tokens", "6")
    code, adapted, err = run_cli("generate", "--adapter", str(trained / "best"), *ask)
    assert code == 0, err
    code, merged, err = run_cli("generate", "--model", str(out), *ask)  # the simple format by default
    assert code == 0, err
    assert merged == adapted
