"""Tiny base models saved as folders and adapter stores of mixed methods, for the serving tests.

``encoder_store(tmp)`` gives a tiny BERT folder (with its tokenizer) and a store of adapters with
seeded random weights: eight single adapters of different methods with classification heads,
a regression adapter, a headless adapter, a prompt adapter, a fusion, and an adapter saved from
another base model. ``decoder_store(tmp)`` gives a tiny Llama and causal-LM adapters.
"""

from __future__ import annotations

from pathlib import Path

import torch
from test_training import VOCAB, build_tiny_model_dir, tiny_tokenizer
from tiny_models import randomize
from transformers import LlamaConfig, LlamaForCausalLM

from adapterkit import AdapterModel, HeadConfig

LABELS = ("neg", "pos", "meh")
MIXED = {  # eight single adapters of different methods, each with a classification head
    "pfeiffer": ("pfeiffer", dict(bottleneck_size=4)),
    "houlsby": ("houlsby", dict(bottleneck_size=4)),
    "lora": ("lora", dict(r=2, targets=["q", "v"])),
    "prefix": ("prefix", dict(prefix_length=3, reparam_hidden=8)),
    "bitfit": ("bitfit", {}),
    "par": ("parallel", dict(bottleneck_size=4)),
    "scaled": ("scaled_parallel", dict(bottleneck_size=4)),
    "mam": ("mam", dict(prefix_length=2, reparam_hidden=8, bottleneck_size=4)),
}
TEXTS = ["good movie", "the plot was dull", "a nice cast and a lovely scene", "awful", "it is fine",
         "the actor was weak but the story was superb", "ugly film", "great"]


def _randomized(model: AdapterModel, name: str, seed: int) -> None:
    randomize(model.adapters[name], seed)
    if name in model.heads:
        randomize(model.heads[name], seed + 1000)


def encoder_store(tmp: Path) -> tuple[Path, Path]:
    """(tiny BERT folder, store folder) with the adapters described in the module docstring."""
    base_dir = build_tiny_model_dir(tmp / "bert")
    store = tmp / "store"
    model = AdapterModel.from_pretrained(str(base_dir))
    head = HeadConfig(num_labels=3, label_names=LABELS, dropout=0.0)
    for seed, (name, (method, options)) in enumerate(MIXED.items()):
        model.add_adapter(name, method, head, **options)
        _randomized(model, name, seed)
        model.save_adapter(name, store / name)
    model.add_adapter("score", "lora", HeadConfig(kind="regression", num_labels=1, dropout=0.0), r=2)
    model.add_adapter("plain", "pfeiffer", None, bottleneck_size=4)
    model.add_adapter("prompt", "prompt", HeadConfig(num_labels=2, label_names=("no", "yes"), dropout=0.0),
                      prompt_length=2, init="random")
    model.add_adapter("fused", "fusion", HeadConfig(num_labels=2, dropout=0.0), adapters=("pfeiffer", "houlsby"))
    for seed, name in enumerate(("score", "plain", "prompt", "fused"), start=20):
        _randomized(model, name, seed)
        model.save_adapter(name, store / name)
    other = AdapterModel.from_pretrained(str(build_other_base(tmp / "other")))
    other.add_adapter("foreign", "pfeiffer", head, bottleneck_size=4)
    other.save_adapter("foreign", store / "foreign")
    return base_dir, store


def build_other_base(directory: Path) -> Path:
    """A tiny BERT of the same architecture with other weights (another seed)."""
    build_tiny_model_dir(directory)
    model = AdapterModel.from_pretrained(str(directory))
    randomize(model.base, 7, std=0.05)
    model.base.save_pretrained(directory)
    return directory


def build_tiny_decoder_dir(directory: Path) -> Path:
    """A tiny Llama whose vocabulary is the toy word tokenizer's, saved with that tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=len(VOCAB), max_position_embeddings=64,
                         bos_token_id=2, eos_token_id=3, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


DECODER_ADAPTERS = {
    "lm_lora": ("lora", dict(r=2, targets=["q", "v"])),
    "lm_prefix": ("prefix", dict(prefix_length=3, reparam_hidden=8)),
    "lm_houlsby": ("houlsby", dict(bottleneck_size=4)),
    "lm_bitfit": ("bitfit", {}),
}


def decoder_store(tmp: Path) -> tuple[Path, Path]:
    """(tiny Llama folder, store) with causal-LM adapters of four methods (strong random weights,
    so each continues a prompt differently)."""
    base_dir = build_tiny_decoder_dir(tmp / "llama")
    store = tmp / "lm-store"
    model = AdapterModel.from_pretrained(str(base_dir))
    for seed, (name, (method, options)) in enumerate(DECODER_ADAPTERS.items()):
        model.add_adapter(name, method, HeadConfig(kind="causal_lm"), **options)
        randomize(model.adapters[name], seed, std=0.5)
        model.save_adapter(name, store / name)
    return base_dir, store


# ----------------------------------------------------------------------------- the library alone
def library_model(base_dir: Path, store: Path, names) -> AdapterModel:
    """A fresh base model with adapters ``names`` loaded from the store (fused adapters first)."""
    model = AdapterModel.from_pretrained(str(base_dir))
    for name in names:
        if name not in model.adapters:
            model.load_adapter(store / name, name=name, activate=False)
    return model.eval()


@torch.no_grad()
def library_scores(model: AdapterModel, setup, inputs) -> list[list[float]]:
    """Per input, what one request computes alone through the library: each answering head's
    softmax probabilities (or regression value), tasks in the setup's order."""
    from adapterkit import setup_from_dict
    from adapterkit.execution import MultiTaskOutput

    first = [i if isinstance(i, str) else i[0] for i in inputs]
    second = None if isinstance(inputs[0], str) else [i[1] for i in inputs]
    batch = model.tokenizer(first, second, padding=True, return_tensors="pt")
    output = model(**batch, adapters=setup_from_dict(setup))
    heads = output.tasks if isinstance(output, MultiTaskOutput) else {setup_from_dict(setup).head_name(): output}
    rows = [[] for _ in inputs]
    for name, out in heads.items():
        config = model.heads[name].config
        values = out.logits.float().unsqueeze(-1) if config.kind == "regression" else torch.softmax(out.logits.float(), -1)
        for row, value in zip(rows, values.tolist()):
            row.extend(value)
    return rows


def served_scores(result) -> list[float]:
    """The same numbers from an engine answer (``ClassResult``, ``ValueResult``, ``TaskResults``)
    or its JSON form."""
    if isinstance(result, dict):
        if "tasks" in result:
            return [v for task in result["tasks"].values() for v in served_scores(task)]
        return [result["value"]] if "value" in result else list(result["scores"].values())
    if hasattr(result, "tasks"):
        return [v for task in result.tasks.values() for v in served_scores(task)]
    return [result.value] if hasattr(result, "value") else list(result.scores.values())


def worst_difference(answers, expected) -> float:
    """The largest difference between served answers and library scores (inputs in order)."""
    assert len(answers) == len(expected)
    return max(abs(g - e) for a, row in zip(answers, expected) for g, e in zip(served_scores(a), row, strict=True))


# ----------------------------------------------------------------------------- a real server on loopback
class LiveServer:
    """uvicorn serving ``app`` in a thread on a free loopback port: ``with LiveServer(app) as url``.
    Leaving the block shuts it down as SIGTERM would (stop accepting, finish requests, lifespan
    shutdown: the engine drains)."""

    def __init__(self, app):
        import socket

        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = None

    def __enter__(self) -> str:
        import threading
        import time

        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < end and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.socket.close()
