"""The service scaled out on Ray Serve, on this machine: two engine replicas on loopback behind
one ingress, requests routed by Serve's model multiplexing to the replica holding their adapter,
each answer equal to the single-request library run. Runs wherever Ray is installed
(``pip install 'adapterkit[ray]'``; ``make test`` installs it); skipped otherwise."""

from __future__ import annotations

import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serving_fixtures import MIXED, TEXTS, encoder_store, library_model, library_scores, worst_difference

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from adapterkit.server.ray_app import build_app  # noqa: E402
from adapterkit.serve import EngineConfig  # noqa: E402

pytestmark = pytest.mark.ray
TOLERANCE = 1e-5  # see test_serving_engine.py


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    base_dir, store = encoder_store(tmp_path_factory.mktemp("ray"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": src}},
             log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = EngineConfig(max_adapters=2, max_wait_ms=20)
        serve.run(build_app(str(base_dir), str(store), config, replicas=2, cpus_per_replica=0.5, threads=1),
                  name="adapterkit", route_prefix="/")
        yield f"http://127.0.0.1:{port}", base_dir, store
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_route_by_adapter_and_answer_as_the_library(cluster):
    url, base_dir, store = cluster
    names = list(MIXED)[:4]  # two replicas hold two adapters each: room for all four
    reference = library_model(base_dir, store, [*names, "score"])
    plan = [(names[i % 4], TEXTS[i % 8 : i % 8 + 2]) for i in range(24)]
    with httpx.Client(base_url=url, timeout=120) as client:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda p: client.post("/v1/classify", json={"adapter": p[0], "inputs": p[1]}), plan))
        for (setup, inputs), response in zip(plan, responses):
            assert response.status_code == 200, response.text
            assert worst_difference(response.json()["results"], library_scores(reference, setup, inputs)) <= TOLERANCE

        # one request at a time, round after round: Serve sends each adapter to the replica that
        # holds it, so the replicas (two slots each) stop loading; routed at random, half the
        # requests would miss and load (about 10 of these 20). First one settling round: the
        # concurrent burst above may have left an adapter on both replicas or on neither, and
        # replicas report what they hold every 0.1 s (PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S)
        for name in names:
            assert client.post("/v1/classify", json={"adapter": name, "inputs": ["good"]}).status_code == 200
        time.sleep(1.5)
        before = replica_loads(client)
        for _ in range(5):
            for name in names:
                assert client.post("/v1/classify", json={"adapter": name, "inputs": ["good"]}).status_code == 200
        after = replica_loads(client)
        assert len(after) == 2, f"answers came from {len(after)} replicas"
        assert sum(after.values()) - sum(before.values()) <= 4, (before, after)

        parallel = {"parallel": ["lora", "score"]}  # a composition is one multiplexed id
        response = client.post("/v1/classify", json={"adapter": parallel, "inputs": TEXTS[:2]})
        assert worst_difference(response.json()["results"], library_scores(reference, parallel, TEXTS[:2])) <= TOLERANCE
        unknown = client.post("/v1/classify", json={"adapter": "nope", "inputs": ["good"]})
        assert unknown.status_code == 404 and "lora" in unknown.json()["error"]["available"]
        assert {m["id"] for m in client.get("/v1/models").json()["data"]} >= set(MIXED)


def replica_loads(client: httpx.Client) -> dict[str, float]:
    """Adapter loads per replica, from the ingress's /metrics."""
    text = client.get("/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'adapterkit_replica_adapter_loads\{replica="(\w+)"\} (\S+)', text)}
