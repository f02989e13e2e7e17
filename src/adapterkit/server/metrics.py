"""Prometheus metrics of the server, in a registry of its own (two apps in one process do not
clash).

* ``adapterkit_requests_total{route, status}`` and ``adapterkit_request_seconds{route}`` (a
  latency histogram, seconds from the first byte read to the response);
* ``adapterkit_pass_rows{kind}``, ``adapterkit_pass_adapters{kind}`` and
  ``adapterkit_pass_seconds{kind}``: per forward pass of the engine, its input rows (the batch
  size), its distinct adapters and its time;
* gauges read when scraped: ``adapterkit_queue_depth``, ``adapterkit_resident_adapters``, and
  ``adapterkit_adapter_requests_running{adapter}`` / ``..._waiting{adapter}`` (what vLLM exports
  for adapter-affinity routing); on the Ray ingress, ``adapterkit_replica_adapter_loads{replica}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..serve.engine import PassEvent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    """Args:
        counts: returns the engine's live counts (``Engine.counts``): ``queue_depth``,
            ``resident``, ``waiting`` and ``running`` per adapter.
    """

    def __init__(self, counts: Callable[[], dict[str, Any]]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("adapterkit_requests", "HTTP requests answered", ["route", "status"], registry=self.registry)
        self.latency = Histogram("adapterkit_request_seconds", "HTTP request latency", ["route"], buckets=_SECONDS,
                                 registry=self.registry)
        self.pass_rows = Histogram("adapterkit_pass_rows", "input rows per forward pass (batch size)", ["kind"],
                                   buckets=_ROWS, registry=self.registry)
        self.pass_adapters = Histogram("adapterkit_pass_adapters", "distinct adapters per forward pass", ["kind"],
                                       buckets=_ROWS, registry=self.registry)
        self.pass_seconds = Histogram("adapterkit_pass_seconds", "time of one forward pass", ["kind"], buckets=_SECONDS,
                                      registry=self.registry)
        self.registry.register(_EngineGauges(counts))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_pass(self, event: PassEvent) -> None:
        """An engine observer (``Engine(observers=[...])``)."""
        self.pass_rows.labels(event.kind).observe(event.rows)
        self.pass_adapters.labels(event.kind).observe(event.adapters)
        self.pass_seconds.labels(event.kind).observe(event.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineGauges:
    def __init__(self, counts: Callable[[], dict[str, Any]]):
        self.counts = counts

    def describe(self) -> list:
        return []

    def collect(self):
        counts = self.counts()
        yield GaugeMetricFamily("adapterkit_queue_depth", "requests waiting in the queue", value=counts.get("queue_depth", 0))
        if "resident" in counts:  # not known to the Ray ingress: each replica has its own
            yield GaugeMetricFamily("adapterkit_resident_adapters", "adapters loaded on the model", value=counts["resident"])
        for state in ("running", "waiting"):
            family = GaugeMetricFamily(f"adapterkit_adapter_requests_{state}", f"requests {state} per adapter", labels=["adapter"])
            for adapter, count in sorted(counts.get(state, {}).items()):
                family.add_metric([adapter], count)
            yield family
        if "replica_loads" in counts:  # the Ray ingress: adapter loads (cache misses) per replica
            family = GaugeMetricFamily("adapterkit_replica_adapter_loads", "adapters each replica has loaded", labels=["replica"])
            for replica, loads in sorted(counts["replica_loads"].items()):
                family.add_metric([replica], loads)
            yield family
