"""The HTTP service on a real uvicorn server on loopback: its routes and schema, every error case
with its status code, the API key and admin token, the metrics, and draining at shutdown."""

from __future__ import annotations

import base64
import os
import shutil
import struct
import threading
import time

import httpx
import pytest
import torch
from serving_fixtures import TEXTS, LiveServer, encoder_store, library_model, library_scores, worst_difference

from adapterkit import AdapterModel
from adapterkit.server import LocalBackend, create_app
from adapterkit.serve import Engine, EngineConfig

TOLERANCE = 1e-5  # see test_serving_engine.py


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    base_dir, store = encoder_store(tmp)
    shutil.copytree(store / "lora", tmp / "outside")
    os.symlink(tmp / "outside", store / "escape")  # a symlink out of the store
    return base_dir, store


@pytest.fixture(scope="module")
def reference(stores):
    return library_model(*stores, ["lora", "pfeiffer", "score", "plain"])


def serve(stores, api_key=None, admin_token=None, max_body_bytes=1 << 16, **options):
    engine = Engine(AdapterModel.from_pretrained(str(stores[0])), stores[1], EngineConfig(**options))
    return engine, LiveServer(create_app(LocalBackend(engine), api_key, admin_token, max_body_bytes))


@pytest.fixture(scope="module")
def server(stores):
    engine, live = serve(stores, admin_token="admin-secret", max_adapters=8)
    with live as url, httpx.Client(base_url=url, timeout=30) as client:
        client.engine = engine
        yield client


def test_openapi_schema_lists_the_routes(server):
    schema = server.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/embeddings", "/v1/completions", "/v1/models", "/health", "/ready",
            "/admin/adapters/{name}"} <= set(schema["paths"])
    assert "ClassifyBody" in schema["components"]["schemas"]


def test_classify_answers_labels_and_scores_equal_to_the_library(server, reference):
    response = server.post("/v1/classify", json={"adapter": "lora", "inputs": TEXTS[:3]})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [set(r) for r in results] == [{"label", "scores"}] * 3
    assert worst_difference(results, library_scores(reference, "lora", TEXTS[:3])) <= TOLERANCE
    setup = {"parallel": ["pfeiffer", "score"]}
    results = server.post("/v1/classify", json={"adapter": setup, "inputs": [["good", "bad"]]}).json()["results"]
    assert set(results[0]["tasks"]) == {"pfeiffer", "score"} and set(results[0]["tasks"]["score"]) == {"value"}
    assert worst_difference(results, library_scores(reference, setup, [("good", "bad")])) <= TOLERANCE


def test_embeddings_in_the_openai_shape_as_floats_and_base64(server, reference):
    body = server.post("/v1/embeddings", json={"model": "plain", "input": ["good movie", "awful"]}).json()
    assert body["object"] == "list" and body["model"] == "plain" and [d["index"] for d in body["data"]] == [0, 1]
    packed = server.post("/v1/embeddings", json={"model": "plain", "input": "good movie", "encoding_format": "base64"}).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(body["data"][0]["embedding"], abs=1e-6)
    batch = reference.tokenizer(["good movie"], return_tensors="pt")
    with torch.no_grad(), reference.using("plain"):
        hidden = reference.body(**batch).last_hidden_state.mean(1)
    expected = torch.nn.functional.normalize(hidden, dim=-1)[0]
    assert (torch.tensor(body["data"][0]["embedding"]) - expected).abs().max() <= TOLERANCE
    assert body["usage"]["prompt_tokens"] == 4 + 3  # [CLS] good movie [SEP] + [CLS] awful [SEP]


def test_models_health_and_readiness(server):
    models = {m["id"]: m for m in server.get("/v1/models").json()["data"]}
    assert models["lora"]["method"] == "lora" and models["lora"]["labels"] == ["neg", "pos", "meh"]
    assert models["fused"]["method"] == "fusion" and "escape" not in models
    assert server.get("/health").json() == {"status": "ok"}
    assert server.get("/ready").json() == {"ready": True}


def test_admin_routes_load_pin_and_unload_behind_the_token(server):
    assert server.post("/admin/adapters/bitfit").status_code == 401
    assert server.post("/admin/adapters/bitfit", headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": "Bearer admin-secret"}
    loaded = server.post("/admin/adapters/bitfit", params={"pin": "true"}, headers=auth).json()
    assert "bitfit" in loaded["resident"] and loaded["pinned"]
    assert {m["id"]: m for m in server.get("/v1/models").json()["data"]}["bitfit"]["pinned"]
    assert server.delete("/admin/adapters/bitfit", headers=auth).json() == {"unloaded": True}
    assert server.delete("/admin/adapters/bitfit", headers=auth).json() == {"unloaded": False}
    assert server.post("/admin/adapters/nope", headers=auth).status_code == 404


LONG = " ".join(["good"] * 100)  # the tiny BERT reads 64 positions


@pytest.mark.parametrize(
    "path, body, status, kind, param",
    [
        ("/v1/classify", {"adapter": "nope", "inputs": ["good"]}, 404, "unknown_adapter", None),
        ("/v1/classify", {"adapter": {"parallel": ["lora", "nope"]}, "inputs": ["good"]}, 404, "unknown_adapter", None),
        ("/v1/embeddings", {"model": "nope", "input": "good"}, 404, "unknown_adapter", None),
        ("/v1/classify", {"adapter": "../store/lora", "inputs": ["good"]}, 403, "refused_adapter", None),
        ("/v1/classify", {"adapter": "/etc/passwd", "inputs": ["good"]}, 403, "refused_adapter", None),
        ("/v1/classify", {"adapter": "escape", "inputs": ["good"]}, 403, "refused_adapter", None),
        ("/v1/classify", {"adapter": "foreign", "inputs": ["good"]}, 409, "incompatible_adapter", None),
        ("/v1/classify", {"adapter": "lora", "inputs": [3]}, 422, "invalid_request", "inputs[0]"),
        ("/v1/classify", {"adapter": "lora", "inputs": ["good", ["a", "b", "c"]]}, 422, "invalid_request", "inputs[1]"),
        ("/v1/classify", {"adapter": "lora"}, 422, "invalid_request", "inputs"),
        ("/v1/classify", {"adapter": "lora", "inputs": []}, 422, "invalid_request", "inputs"),
        ("/v1/classify", {"adapter": "lora", "inputs": ["good"], "truncate": "maybe"}, 422, "invalid_request", "truncate"),
        ("/v1/classify", {"adapter": "lora", "inputs": ["good"], "colour": 1}, 422, "invalid_request", "colour"),
        ("/v1/classify", {"adapter": 7, "inputs": ["good"]}, 422, "invalid_request", "adapter"),
        ("/v1/classify", {"adapter": {"parallel": "lora"}, "inputs": ["good"]}, 422, "invalid_request", "adapter"),
        ("/v1/classify", {"adapter": "plain", "inputs": ["good"]}, 422, "invalid_request", "adapter"),
        ("/v1/classify", {"adapter": "lora", "inputs": [LONG]}, 422, "invalid_request", "inputs[0]"),
        ("/v1/classify", {"adapter": "lora", "inputs": [""]}, 422, "invalid_request", "inputs[0]"),
        ("/v1/embeddings", {"model": "lora", "input": []}, 422, "invalid_request", "input"),
        ("/v1/embeddings", {"model": "lora", "input": [LONG]}, 422, "invalid_request", "input[0]"),
        ("/v1/completions", {"model": "lora", "prompt": "hi"}, 422, "invalid_request", "model"),
        ("/v1/completions", {"model": "lora", "prompt": "hi", "temperature": 0.7}, 422, "invalid_request", "temperature"),
        ("/v1/completions", {"model": "lora", "prompt": "hi", "stream": True}, 422, "invalid_request", "stream"),
        ("/v1/classify", [1, 2], 422, "invalid_request", "body"),
    ],
)
def test_every_error_has_its_status_and_names_the_field(server, path, body, status, kind, param):
    response = server.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and error["message"]
    if param is not None:
        assert error["param"] == param
    if status == 404:
        assert "lora" in error["available"] and "pfeiffer" in error["available"]


def test_malformed_json_is_a_422_and_long_inputs_can_be_truncated(server, reference):
    response = server.post("/v1/classify", content=b'{"adapter": "lora", "inputs": [', headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"]["param"] == "body"
    response = server.post("/v1/classify", json={"adapter": "lora", "inputs": [LONG], "truncate": True})
    assert response.status_code == 200
    batch = reference.tokenizer([LONG], truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(reference(**batch, adapters="lora").logits, -1).tolist()
    assert worst_difference(response.json()["results"], expected) <= TOLERANCE


def test_payloads_over_the_limit_are_413_with_a_length_or_chunked(server):
    big = {"adapter": "lora", "inputs": ["good " * 20000]}
    assert server.post("/v1/classify", json=big).status_code == 413

    def chunks():
        for _ in range(100):
            yield b" " * 1024

    response = server.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"
    assert server.get("/health").status_code == 200


def test_the_api_key_guards_every_route_but_the_probes_and_admin_routes_are_off_without_a_token(stores):
    engine, live = serve(stores, api_key="key-1")
    with live as url, httpx.Client(base_url=url, timeout=30) as client:
        body = {"adapter": "lora", "inputs": ["good"]}
        for path in ("/v1/classify", "/v1/models", "/metrics"):
            response = client.request("POST" if path == "/v1/classify" else "GET", path, json=body)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert client.post("/v1/classify", json=body, headers={"Authorization": "Bearer key-2"}).status_code == 401
        assert client.post("/v1/classify", json=body, headers={"Authorization": "Bearer key-1"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
        assert client.post("/admin/adapters/lora", headers={"Authorization": "Bearer key-1"}).status_code == 404


def test_a_full_queue_is_429_with_retry_after_and_a_late_request_504(stores):
    engine, live = serve(stores, max_queue=1, max_wait_ms=0, timeout_s=0.5)
    body = {"adapter": "lora", "inputs": ["good"]}
    with live as url, httpx.Client(base_url=url, timeout=30) as client:
        results = {}
        with engine.lock:  # the worker takes the first request, then waits for the model
            first = threading.Thread(target=lambda: results.setdefault("first", client.post("/v1/classify", json=body)))
            first.start()
            _wait_until(lambda: engine.batcher.counts()[1])
            second = threading.Thread(target=lambda: results.setdefault("second", client.post("/v1/classify", json=body)))
            second.start()
            _wait_until(lambda: engine.batcher.depth() == 1)
            full = client.post("/v1/classify", json=body)
            assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
            assert full.json()["error"]["type"] == "queue_full"
            second.join(10)
        first.join(10)
        for late in ("first", "second"):  # both waited past the timeout of 0.5 s (running or queued)
            assert results[late].status_code == 504 and results[late].json()["error"]["type"] == "timeout"
        assert client.post("/v1/classify", json=body).status_code == 200


def test_metrics_count_requests_passes_and_requests_per_adapter(stores):
    engine, live = serve(stores, max_wait_ms=0)
    with live as url, httpx.Client(base_url=url, timeout=30) as client:
        client.post("/v1/classify", json={"adapter": "lora", "inputs": TEXTS[:3]})
        client.post("/v1/classify", json={"adapter": "nope", "inputs": ["good"]})
        with engine.lock:
            worker = threading.Thread(target=lambda: client.post("/v1/classify", json={"adapter": "lora", "inputs": ["a"]}))
            worker.start()
            _wait_until(lambda: engine.batcher.counts()[1])
            waiting = threading.Thread(target=lambda: client.post("/v1/classify", json={"adapter": "pfeiffer", "inputs": ["a"]}))
            waiting.start()
            _wait_until(lambda: engine.batcher.depth() == 1)
            text = client.get("/metrics").text
        worker.join(10)
        waiting.join(10)
    assert 'adapterkit_requests_total{route="/v1/classify",status="200"} 1.0' in text
    assert 'adapterkit_requests_total{route="/v1/classify",status="404"} 1.0' in text
    assert 'adapterkit_request_seconds_count{route="/v1/classify"} 2.0' in text
    assert 'adapterkit_pass_rows_bucket{kind="classify",le="4.0"} 1.0' in text
    assert "adapterkit_queue_depth 1.0" in text
    assert 'adapterkit_adapter_requests_running{adapter="lora"} 1.0' in text
    assert 'adapterkit_adapter_requests_waiting{adapter="pfeiffer"} 1.0' in text


def test_shutdown_drains_the_queued_requests(stores):
    engine, live = serve(stores, max_wait_ms=0, max_batch_size=1)
    results = []
    with live as url, httpx.Client(base_url=url, timeout=30) as client:
        with engine.lock:
            workers = [threading.Thread(target=lambda n=n: results.append(client.post("/v1/classify", json={"adapter": n, "inputs": ["good"]})))
                       for n in ("lora", "pfeiffer", "bitfit", "houlsby")]
            for w in workers:
                w.start()
            _wait_until(lambda: engine.batcher.depth() == 3)
            live.server.should_exit = True  # what SIGTERM does: stop accepting, finish what is in flight
            time.sleep(0.2)
        for w in workers:
            w.join(30)
    assert [r.status_code for r in results] == [200] * 4
    assert not engine.ready


def test_a_closing_engine_is_not_ready_and_answers_503(server, stores):
    engine, live = serve(stores)
    with live as url, httpx.Client(base_url=url, timeout=30) as client:
        engine.close()
        assert client.get("/ready").status_code == 503
        response = client.post("/v1/classify", json={"adapter": "lora", "inputs": ["good"]})
        assert response.status_code == 503 and response.json()["error"]["type"] == "shutting_down"


def _wait_until(condition, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)
