"""A real server on loopback under load: concurrent clients over adapters of mixed methods get
exactly what single-request library runs give, eviction and reload change nothing, a few hundred
malformed or random requests get no 5xx and leave the server answering correctly, and the
``adapterkit serve`` command serves and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serving_fixtures import (
    DECODER_ADAPTERS,
    MIXED,
    TEXTS,
    LiveServer,
    decoder_store,
    encoder_store,
    library_model,
    library_scores,
    worst_difference,
)

from adapterkit import AdapterModel
from adapterkit.server import LocalBackend, create_app
from adapterkit.serve import Engine, EngineConfig

TOLERANCE = 1e-5  # see test_serving_engine.py
PARALLEL = {"parallel": ["pfeiffer", "lora", "score"]}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return encoder_store(tmp_path_factory.mktemp("load"))


@pytest.fixture(scope="module")
def reference(stores):
    return library_model(*stores, [*MIXED, "score"])


def serving(stores, **options):
    events = []
    engine = Engine(AdapterModel.from_pretrained(str(stores[0])), stores[1], EngineConfig(**options), observers=[events.append])
    return engine, events, LiveServer(create_app(LocalBackend(engine), max_body_bytes=1 << 16))


def test_16_concurrent_clients_over_8_methods_and_a_parallel_equal_single_library_runs(stores, reference):
    engine, events, live = serving(stores, max_batch_size=64, max_wait_ms=20)
    plan = [(list(MIXED)[i % 8] if i % 5 else PARALLEL, [TEXTS[i % 8], TEXTS[(3 * i + 1) % 8]][: 1 + i % 2]) for i in range(96)]
    with live as url, httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=16)) as client:
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda p: client.post("/v1/classify", json={"adapter": p[0], "inputs": p[1]}), plan))
    assert [r.status_code for r in responses] == [200] * len(plan)
    for (setup, inputs), response in zip(plan, responses):
        assert worst_difference(response.json()["results"], library_scores(reference, setup, inputs)) <= TOLERANCE
    passes = [e for e in events if e.kind == "classify"]
    assert max(e.adapters for e in passes) >= 4 and len(passes) < len(plan), "the requests were not mixed in batches"


def test_completions_of_mixed_adapters_over_http_equal_single_generate(tmp_path):
    base_dir, store = decoder_store(tmp_path)
    reference = library_model(base_dir, store, DECODER_ADAPTERS)
    engine = Engine(AdapterModel.from_pretrained(str(base_dir)), store, EngineConfig(max_wait_ms=50))
    names, prompts = list(DECODER_ADAPTERS), ["good movie", "the plot was", "a nice cast", "it"]
    with LiveServer(create_app(LocalBackend(engine))) as url, httpx.Client(base_url=url, timeout=60) as client:
        with ThreadPoolExecutor(8) as pool:
            bodies = [{"model": names[i % 4], "prompt": prompts[i % 4], "max_tokens": 4} for i in range(8)]
            responses = list(pool.map(lambda b: client.post("/v1/completions", json=b), bodies))
    for body, response in zip(bodies, responses):
        choice = response.json()["choices"][0]
        batch = reference.tokenizer(body["prompt"], return_tensors="pt", return_token_type_ids=False)
        out = reference.generate(**batch, adapters=body["model"], max_new_tokens=4, do_sample=False, pad_token_id=0)
        ids = out[0, batch["input_ids"].shape[1]:].tolist()
        ids = ids[: ids.index(3)] if 3 in ids else ids
        assert choice["text"] == reference.tokenizer.decode(ids, skip_special_tokens=True)
        assert choice["finish_reason"] == ("stop" if len(ids) < 4 else "length")
        assert response.json()["usage"]["completion_tokens"] == len(ids)


def test_eviction_and_reload_give_identical_outputs(stores):
    engine, _, live = serving(stores, max_adapters=3, max_wait_ms=0)
    names = list(MIXED)
    with live as url, httpx.Client(base_url=url, timeout=60) as client:
        first = {n: client.post("/v1/classify", json={"adapter": n, "inputs": TEXTS[:3]}).json() for n in names}
        again = {n: client.post("/v1/classify", json={"adapter": n, "inputs": TEXTS[:3]}).json() for n in reversed(names)}
        resident = [m["id"] for m in client.get("/v1/models").json()["data"] if m["resident"]]
    assert again == first
    assert engine.registry.loads >= 2 * len(names) - 3 and len(resident) == 3


# ----------------------------------------------------------------------------- fuzzing
def random_json(rng: random.Random, depth: int = 0):
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return rng.choice([None, True, False])
    if choice == 1:
        return rng.choice([0, -1, 3, 2**70, 1.5, float("nan") if rng.random() < 0.1 else 1e308])
    if choice in (2, 3, 4, 5):
        return random_text(rng)
    if choice in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_text(rng: random.Random) -> str:
    pieces = ["good", "lora", "../", "/etc/passwd", "parallel", "\x00", "é", "\u202e", "🙂", " ", "[", "{", "\\", "fused",
              "escape", "prompt", "%2e%2e", "nope", "score", "a" * 300]
    return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6)))


FIELDS = {"/v1/classify": ("adapter", "inputs"), "/v1/embeddings": ("model", "input"), "/v1/completions": ("model", "prompt")}


def random_request(rng: random.Random) -> dict:
    """A request of one of three sorts: raw bytes (JSON or not) to any path, another method, or
    a JSON body for a service route whose fields are each valid, malformed, or missing."""
    path = rng.choice([*FIELDS, *FIELDS, *FIELDS, "/v1/models", "/admin/adapters/lora", "/nowhere"])
    sort = rng.randrange(8)
    if sort == 0:
        content = rng.choice([b"", b"{", b'{"adapter": "lora", "inputs": ["good"]', bytes(rng.randrange(256) for _ in range(40)),
                              json.dumps(random_json(rng)).encode()])
        return {"method": "POST", "url": path, "content": content, "headers": {"content-type": "application/json"}}
    if sort == 1:
        return {"method": rng.choice(["GET", "PUT", "DELETE", "PATCH"]), "url": path}
    setup = rng.choice(["lora", "pfeiffer", "prompt", "fused", "score", "plain", "bitfit", "foreign", "escape", "nope",
                        "../lora", random_text(rng), random_json(rng), {"parallel": ["lora", random_text(rng)]},
                        {"parallel": ["lora", "score"]}, {"stack": ["lora", "bitfit"]},
                        {"fuse": ["pfeiffer", "houlsby"], "fusion": "fused"}, {"routed": ["lora", None]},
                        {"adapter_drop": "lora", "first": rng.randrange(-2, 5)}, {"parallel": ["lora", "prefix"]}, ["lora", "lora"]])
    inputs = rng.choice([["good movie"], TEXTS[: rng.randrange(1, 8)], [random_text(rng)], [[random_text(rng), random_text(rng)]],
                         random_json(rng), [], ["good " * rng.randrange(1, 120)], [random_text(rng) for _ in range(rng.randrange(1, 5))]])
    setup_field, inputs_field = FIELDS.get(path, ("adapter", "inputs"))
    body = {k: v for k, v in {setup_field: setup, inputs_field: inputs}.items() if rng.random() < 0.9}
    for _ in range(rng.randrange(3)):
        body[rng.choice(["truncate", "max_tokens", "temperature", "n", "stream", "encoding_format", random_text(rng)])] = random_json(rng)
    # json.dumps writes NaN and Infinity, which strict JSON has not: the server must cope with them too
    return {"method": "POST", "url": path, "content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def test_a_bounded_fuzz_run_gets_no_5xx_and_the_server_still_answers_correctly(stores, reference):
    engine, _, live = serving(stores, max_adapters=6, max_wait_ms=2)
    rng = random.Random(1234)
    requests = [random_request(rng) for _ in range(400)]
    with live as url, httpx.Client(base_url=url, timeout=60) as client:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda r: client.request(**r).status_code, requests))
        answer = client.post("/v1/classify", json={"adapter": PARALLEL, "inputs": TEXTS[:2]})
    counted = {s: statuses.count(s) for s in sorted(set(statuses))}
    assert all(s < 500 for s in statuses), counted
    print(counted)
    assert {200, 403, 404, 405, 409, 422} <= set(counted), counted  # the run reached the answers and many error paths
    assert worst_difference(answer.json()["results"], library_scores(reference, PARALLEL, TEXTS[:2])) <= TOLERANCE


# ----------------------------------------------------------------------------- the command
def test_adapterkit_serve_serves_the_store_and_drains_on_sigterm(stores, reference):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "adapterkit", "serve", "--model", str(stores[0]), "--store", str(stores[1]),
               "--port", str(port), "--max-adapters", "4", "--pin", "lora", "--api-key", "k"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, end = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < end, "adapterkit serve did not start"
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        headers = {"Authorization": "Bearer k"}
        response = httpx.post(f"{url}/v1/classify", json={"adapter": "score", "inputs": TEXTS[:2]}, headers=headers)
        assert worst_difference(response.json()["results"], library_scores(reference, "score", TEXTS[:2])) <= TOLERANCE
        models = {m["id"]: m for m in httpx.get(f"{url}/v1/models", headers=headers).json()["data"]}
        assert models["lora"]["pinned"] and models["lora"]["resident"]
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says what ended it
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output and "Finished server process" in output, output
