"""The serving engine without HTTP: mixed micro-batches equal single-request library runs, the
registry's LRU eviction, pinning, preload and refusals, and the queue's limits, timeouts and drain.

Tolerance: a row of a mixed batch meets more padding and gathered weights than alone; masked
positions add exact zeros, but products of other shapes round differently. Measured here on the
tiny models: probabilities within 1e-6, so the tests allow ``TOLERANCE = 1e-5``; greedy
completions give the same tokens.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from serving_fixtures import (
    DECODER_ADAPTERS,
    MIXED,
    TEXTS,
    decoder_store,
    encoder_store,
    library_model,
    library_scores,
    served_scores,
)

from adapterkit import AdapterModel, HeadConfig
from adapterkit.serve import (
    CapacityError,
    Engine,
    EngineConfig,
    IncompatibleAdapter,
    InputTooLong,
    InvalidRequest,
    QueueFull,
    RefusedAdapter,
    RequestTimeout,
    ShuttingDown,
    UnknownAdapter,
)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return encoder_store(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def reference(stores):
    base_dir, store = stores
    return library_model(base_dir, store, [*MIXED, "score", "plain", "prompt", "fused"])


def make_engine(stores, **options) -> Engine:
    base_dir, store = stores
    events = []
    engine = Engine(AdapterModel.from_pretrained(str(base_dir)), store, EngineConfig(**options), observers=[events.append])
    engine.events = events
    return engine


REQUESTS = [  # (setup in its JSON form, inputs): eight methods, a Parallel, a stack, a fusion, a prompt, a regression
    *((name, [TEXTS[i], TEXTS[(i + 3) % 8]]) for i, name in enumerate(MIXED)),
    ({"parallel": ["pfeiffer", "lora", "score"]}, TEXTS[:3]),
    (["lora", "houlsby"], TEXTS[2:4]),
    ("fused", TEXTS[4:6]),
    ("prompt", TEXTS[5:6]),
    ("score", [["good movie", "a dull plot"], ["the cast", "superb"]]),
]


def test_concurrent_mixed_requests_equal_single_library_runs(stores, reference):
    engine = make_engine(stores, max_batch_size=64, max_wait_ms=50)
    try:
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(engine.classify, setup, inputs) for setup, inputs in REQUESTS * 2]
            answers = [f.result() for f in futures]
    finally:
        engine.close()
    worst = 0.0
    for (setup, inputs), answer in zip(REQUESTS * 2, answers):
        expected = library_scores(reference, setup, inputs)
        got = [served_scores(result) for result in answer]
        assert len(got) == len(expected)
        worst = max(worst, max(abs(g - e) for row_g, row_e in zip(got, expected) for g, e in zip(row_g, row_e, strict=True)))
    print(f"worst difference {worst:.2e}")
    assert worst <= TOLERANCE, worst
    mixed = [e for e in engine.events if e.kind == "classify" and e.adapters > 1]
    assert mixed, "no pass mixed adapters: the requests did not batch"


def test_labels_are_the_heads_names_and_the_best_label_is_the_argmax(stores):
    engine = make_engine(stores)
    try:
        (result,) = engine.classify("lora", TEXTS[:1])
        (value,) = engine.classify("score", TEXTS[:1])
    finally:
        engine.close()
    assert list(result.scores) == ["neg", "pos", "meh"]
    assert result.label == max(result.scores, key=result.scores.get)
    assert abs(sum(result.scores.values()) - 1.0) < 1e-6
    assert isinstance(value.value, float)


def test_embeddings_equal_the_pooled_hidden_states_of_the_library(stores, reference):
    engine = make_engine(stores, max_batch_size=64, max_wait_ms=50)
    names = ["plain", "pfeiffer", "lora", "prefix"]
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda n: engine.embed(n, TEXTS[:3]), names))
    finally:
        engine.close()
    batch = reference.tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    for name, answer in zip(names, answers):
        with torch.no_grad(), reference.using(name):
            hidden = reference.body(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        got = torch.tensor([e.vector for e in answer])
        assert (got - expected).abs().max() <= TOLERANCE
        assert [e.tokens for e in answer] == batch["attention_mask"].sum(1).tolist()


def test_completions_with_mixed_adapters_in_one_decoding_batch_equal_single_generate(tmp_path):
    base_dir, store = decoder_store(tmp_path)
    reference = library_model(base_dir, store, DECODER_ADAPTERS)
    events = []
    engine = Engine(AdapterModel.from_pretrained(str(base_dir)), store, EngineConfig(max_batch_size=16, max_wait_ms=100),
                    observers=[events.append])
    prompts = ["good movie", "the plot was dull and", "a nice", "it"]
    names = list(DECODER_ADAPTERS)
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: engine.complete(names[i % 4], [prompts[i % 4]], max_tokens=3 + i), range(8)))
    finally:
        engine.close()
    assert any(e.kind == "complete" and e.adapters > 1 for e in events)
    for i, (answer,) in enumerate(answers):
        batch = reference.tokenizer(prompts[i % 4], return_tensors="pt", return_token_type_ids=False)
        out = reference.generate(**batch, adapters=names[i % 4], max_new_tokens=3 + i, do_sample=False, pad_token_id=0)
        expected = out[0, batch["input_ids"].shape[1]:].tolist()
        if 3 in expected:  # the end-of-sequence id of the tiny Llama
            expected = expected[: expected.index(3)]
        assert answer.token_ids == expected, (names[i % 4], answer, expected)
        assert answer.prompt_tokens == batch["input_ids"].shape[1]


# ----------------------------------------------------------------------------- the registry
def test_lru_eviction_pinning_and_reload_give_identical_outputs(stores):
    engine = make_engine(stores, max_adapters=3, pin=("lora",), max_batch_size=1)
    try:
        first = engine.classify("pfeiffer", TEXTS[:2])
        engine.classify("houlsby", TEXTS[:1])
        assert engine.registry.resident() == ["lora", "pfeiffer", "houlsby"]
        engine.classify("bitfit", TEXTS[:1])  # evicts pfeiffer, the least recently used unpinned
        assert engine.registry.resident() == ["lora", "houlsby", "bitfit"]
        assert "pfeiffer" not in engine.model.adapters
        assert engine.classify("pfeiffer", TEXTS[:2]) == first  # reloaded: bit for bit
        assert "lora" in engine.registry.resident()
        engine.classify({"parallel": ["pfeiffer", "bitfit"]}, TEXTS[:1])
        assert engine.registry.resident() == ["lora", "pfeiffer", "bitfit"]
        with pytest.raises(CapacityError, match="max-adapters"):
            engine.classify({"parallel": ["pfeiffer", "houlsby", "bitfit"]}, TEXTS[:1])
    finally:
        engine.close()


def test_preload_and_the_fusion_brings_its_adapters(stores):
    engine = make_engine(stores, preload=("fused",))
    try:
        assert engine.registry.resident() == ["pfeiffer", "houlsby", "fused"]
        listing = {m["name"]: m for m in engine.models()}
        assert listing["fused"]["resident"] and not listing["lora"]["resident"]
        assert listing["lora"] == {"name": "lora", "method": "lora", "head": "classification",
                                   "labels": ["neg", "pos", "meh"], "resident": False, "pinned": False}
    finally:
        engine.close()


@pytest.mark.parametrize("name", ["../store/lora", "/etc", "lora/../lora", "..", "", "a b", 3])
def test_names_that_leave_the_store_are_refused(stores, name):
    engine = make_engine(stores)
    try:
        with pytest.raises(RefusedAdapter, match="refused"):
            engine.classify(name, TEXTS[:1]) if isinstance(name, str) and name else engine.registry.folder(name)
    finally:
        engine.close()


def test_a_symlink_out_of_the_store_is_refused_and_one_inside_is_served(stores, tmp_path):
    base_dir, store = stores
    outside = tmp_path / "elsewhere"
    (store / "lora").rename(outside)
    try:
        os.symlink(outside, store / "lora")
        os.symlink(store / "pfeiffer", store / "alias")
        engine = make_engine(stores)
        try:
            with pytest.raises(RefusedAdapter, match="outside the store"):
                engine.classify("lora", TEXTS[:1])
            assert "lora" not in engine.registry.available()
            assert engine.classify("alias", TEXTS[:1])[0].label
        finally:
            engine.close()
    finally:
        os.unlink(store / "lora")
        os.unlink(store / "alias")
        outside.rename(store / "lora")


def test_an_adapter_of_another_base_model_is_refused_at_load(stores):
    engine = make_engine(stores)
    try:
        with pytest.raises(IncompatibleAdapter, match="same architecture, different weights"):
            engine.classify("foreign", TEXTS[:1])
        assert "foreign" not in engine.model.adapters
        assert engine.classify("lora", TEXTS[:1])  # the engine still serves
    finally:
        engine.close()


def test_unknown_adapters_list_what_the_store_holds(stores):
    engine = make_engine(stores)
    try:
        with pytest.raises(UnknownAdapter) as error:
            engine.classify({"parallel": ["lora", "nope"]}, TEXTS[:1])
        assert error.value.name == "nope" and "lora" in error.value.available and "fused" in error.value.available
    finally:
        engine.close()


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda e: e.classify("plain", TEXTS[:1]), "adapter"),  # no head
        (lambda e: e.classify({"routed": ["lora", "bitfit"]}, TEXTS[:2]), "adapter"),
        (lambda e: e.classify({"parallel": ["lora", "prompt"]}, TEXTS[:1]), "adapter"),  # a prompt in Parallel
        (lambda e: e.classify({"stack": 3}, TEXTS[:1]), "adapter"),
        (lambda e: e.classify("lora", []), "inputs"),
        (lambda e: e.classify("lora", ["good", ["a", "b"]]), "inputs"),
        (lambda e: e.classify("lora", ["  "]), "inputs[0]"),
        (lambda e: e.embed({"parallel": ["lora", "bitfit"]}, TEXTS[:1]), "adapter"),
        (lambda e: e.complete("lora", ["hi"]), "adapter"),  # an encoder
    ],
)
def test_requests_that_cannot_run_name_their_field(stores, call, field):
    engine = make_engine(stores)
    try:
        with pytest.raises(InvalidRequest) as error:
            call(engine)
        assert error.value.field == field
    finally:
        engine.close()


def test_long_inputs_are_refused_or_truncated_as_the_request_says(stores, reference):
    engine = make_engine(stores)
    long = " ".join(["good"] * 100)  # the tiny BERT reads 64 positions
    try:
        with pytest.raises(InputTooLong) as error:
            engine.classify("lora", ["fine", long])
        assert error.value.field == "inputs[1]" and "64 tokens" in str(error.value)
        (result,) = engine.classify("lora", [long], truncate=True)
        (prompt_result,) = engine.classify("prompt", [long], truncate=True)  # its prompt takes 2 positions
    finally:
        engine.close()
    batch = reference.tokenizer([long], truncation=True, max_length=64, return_tensors="pt")
    expected = torch.softmax(reference(**batch, adapters="lora").logits[0], -1).tolist()
    assert max(abs(a - b) for a, b in zip(served_scores(result), expected)) <= TOLERANCE
    assert prompt_result.label in ("no", "yes")


# ----------------------------------------------------------------------------- the queue
def test_a_full_queue_refuses_with_a_retry_estimate_and_a_late_request_times_out(stores):
    engine = make_engine(stores, max_queue=2, max_wait_ms=0)
    try:
        with engine.lock:  # the worker takes the first request and waits for the model
            first = engine.submit(_request("lora"))
            _wait_until(lambda: engine.batcher.depth() == 0)
            late = engine.submit(_request("bitfit"), timeout=0.05)
            engine.submit(_request("pfeiffer"))
            with pytest.raises(QueueFull) as error:
                engine.submit(_request("houlsby"))
            assert error.value.retry_after >= 1
            time.sleep(0.1)
        assert first.result(10)[0].label
        with pytest.raises(RequestTimeout):
            late.result(10)
    finally:
        engine.close()


def test_close_drains_the_queue_and_refuses_new_requests(stores):
    engine = make_engine(stores, max_wait_ms=0, max_batch_size=1)
    with engine.lock:
        futures = [engine.submit(_request(name)) for name in MIXED]
        closer = threading.Thread(target=engine.close)
        closer.start()
        _wait_until(lambda: engine.batcher.closing)
        with pytest.raises(ShuttingDown):
            engine.submit(_request("lora"))
    closer.join(30)
    assert all(f.result(0)[0].label for f in futures)
    assert not engine.ready


def _request(name):
    from adapterkit.serve import ClassifyRequest
    from adapterkit.serve.engine import as_request_setup

    return ClassifyRequest(as_request_setup(name), (TEXTS[0],))


def _wait_until(condition, seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_without_mixing_each_adapter_of_a_batch_gets_its_own_pass_with_the_same_answers(stores, reference):
    engine = make_engine(stores, max_batch_size=64, max_wait_ms=100, mix_adapters=False)
    names = list(MIXED)[:4]
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: engine.classify(names[i % 4], TEXTS[i:i + 1]), range(8)))
    finally:
        engine.close()
    assert all(e.adapters == 1 for e in engine.events) and any(e.requests > 1 for e in engine.events)
    for i, answer in enumerate(answers):
        expected = library_scores(reference, names[i % 4], TEXTS[i:i + 1])
        assert max(abs(a - b) for a, b in zip(served_scores(answer[0]), expected[0])) <= TOLERANCE


@pytest.mark.integration
def test_real_smollm2_completions_of_mixed_adapters_in_one_batch_equal_single_generate(tmp_path):
    """SmolLM2-135M (grouped-query attention) with LoRA, prefix and BitFit adapters: one
    decoding batch mixing them gives each prompt the tokens ``generate`` gives it alone."""
    from adapterkit.bundled_models import resolve_model_path
    from tiny_models import randomize

    folder = resolve_model_path("smollm2-135m")
    model = AdapterModel.from_pretrained(folder)
    store = tmp_path / "store"
    adapters = {"lora": ("lora", dict(r=4)), "prefix": ("prefix", dict(prefix_length=8, reparameterize=False)),
                "bitfit": ("bitfit", {})}
    for seed, (name, (method, options)) in enumerate(adapters.items()):
        model.add_adapter(name, method, HeadConfig(kind="causal_lm"), **options)
        randomize(model.adapters[name], seed, std=0.02)
        model.save_adapter(name, store / name)
    model.eval()
    events = []
    engine = Engine(AdapterModel.from_pretrained(folder), store, EngineConfig(max_wait_ms=200), observers=[events.append])
    prompts = ["The capital of France is", "One, two, three,", "def add(a, b):"]
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda i: engine.complete(list(adapters)[i], [prompts[i]], max_tokens=8), range(3)))
    finally:
        engine.close()
    assert any(e.adapters > 1 for e in events)
    for i, (answer,) in enumerate(answers):
        batch = model.tokenizer(prompts[i], return_tensors="pt")
        out = model.generate(**batch, adapters=list(adapters)[i], max_new_tokens=8, do_sample=False,
                             pad_token_id=model.tokenizer.pad_token_id)
        expected = out[0, batch["input_ids"].shape[1]:].tolist()
        eos = model.base.generation_config.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos])
        cut = next((k for k, t in enumerate(expected) if t in stops), len(expected))
        assert answer.token_ids == expected[:cut], (list(adapters)[i], answer.text)


def test_a_blocking_call_past_its_timeout_raises_and_gives_up_its_place_in_the_queue(stores):
    engine = make_engine(stores, max_wait_ms=0, max_queue=1)
    try:
        with engine.lock:
            first = engine.submit(_request("lora"))  # taken by the worker, which waits for the model
            _wait_until(lambda: engine.batcher.depth() == 0)
            with pytest.raises(RequestTimeout):
                engine.classify("bitfit", TEXTS[:1], timeout=0.05)
            assert engine.batcher.depth() == 1  # still queued, but cancelled: it takes no place
            later = engine.submit(_request("pfeiffer"))
        assert first.result(10) and later.result(10)[0].label
    finally:
        engine.close()
