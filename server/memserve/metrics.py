"""Prometheus metrics, served on their own HTTP port (`--metrics-port`, path /metrics).

Loads are counted as they happen. Requests and executions are counted in each
model's ModelStats (stats.py), the record ModelStatistics reads too, and
become series when Prometheus scrapes, as do sizes and depths (device memory
by kind, per-model bytes, workspaces, queue depths), so they are never stale
and a request never pays for prometheus_client.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .errors import NotFound
from .stats import Histogram as Buckets
from .stats import RequestStats

# The model label of a request that names no loaded model: clients choose those names, and every label
# value is a series Prometheus keeps, so unknown names share this one value instead of one series each.
UNKNOWN_MODEL = ""


class Metrics:
    """Loads are counted here as they happen; requests and executions in each model's ModelStats (stats.py),
    read when Prometheus scrapes."""

    def __init__(self):
        self.prometheus = CollectorRegistry()
        self.registry = None  # the watched Registry: request labels name only its loaded models
        self.unknown = RequestStats()  # requests that named no loaded model
        self.load_seconds = Histogram("memserve_load_duration_seconds", "Time to load a model",
                                      buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120), registry=self.prometheus)
        self.load_failures = Counter("memserve_load_failures", "Refused or failed loads by reason", ["reason"],
                                     registry=self.prometheus)

    def watch(self, registry) -> None:
        """Also report the registry's sizes and depths at each scrape; label requests by its models."""
        self.registry = registry
        self.prometheus.register(_StateCollector(registry, self.unknown))

    def request(self, model: str | int, api: str, status: str, seconds: float) -> None:
        """Count a request under the loaded model it named (by name or id), else under UNKNOWN_MODEL:
        a client cannot create series by naming models that do not exist."""
        self._stats_of(model).request(api, status, seconds)

    def _stats_of(self, ref: str | int) -> RequestStats:
        registry = self.registry
        if registry is None or ref == "":
            return self.unknown
        try:
            return registry.get(ref).stats
        except NotFound:
            pass
        if isinstance(ref, str) and len(ref) <= 19 and ref.isascii() and ref.isdigit():
            try:
                return registry.get(int(ref)).stats
            except NotFound:
                pass
        return self.unknown

    def serve(self, host: str, port: int) -> int:
        server, _ = start_http_server(port, addr=host, registry=self.prometheus)
        return server.server_port


class _StateCollector:
    """Gauges read from the registry at scrape time."""

    def __init__(self, registry, unknown: RequestStats):
        self.registry = registry
        self.unknown = unknown

    def describe(self):
        return []

    def collect(self):
        reg = self.registry
        snap = reg.snapshot()
        yield GaugeMetricFamily("memserve_device_capacity_bytes", "Device memory capacity", value=snap.capacity)
        used = GaugeMetricFamily("memserve_device_used_bytes", "Device memory in use by kind", labels=["kind"])
        for kind, n in snap.used_by_kind.items():
            used.add_metric([kind], n)
        yield used
        yield GaugeMetricFamily("memserve_models_loaded", "Models loaded", value=len(snap.models))
        weights = GaugeMetricFamily("memserve_model_weight_bytes", "Weight bytes of each model", labels=["model"])
        work = GaugeMetricFamily("memserve_model_workspace_bytes", "Workspace bytes each model plans, all instances",
                                 labels=["model"])
        for m in snap.models:
            weights.add_metric([m.name], m.weight_size)
            work.add_metric([m.name], m.work_size * m.instances)
        yield weights
        yield work
        size = GaugeMetricFamily("memserve_workspace_bytes", "Size of each workspace buffer", labels=["workspace"])
        depth = GaugeMetricFamily("memserve_queue_depth", "Requests waiting per workspace lane", labels=["workspace"])
        for ws in snap.workspaces:
            size.add_metric([ws.name], ws.size)
            depth.add_metric([ws.name], ws.queued)
        yield size
        yield depth
        yield from _traffic([(m.name, m.stats) for m in snap.models] + [(UNKNOWN_MODEL, self.unknown)])


def _traffic(sources: list) -> list:
    """Request and execution series from each model's counters (and the unknown-model ones)."""
    requests = CounterMetricFamily("memserve_requests", "Requests by model, API and gRPC status "
                                   "(model=\"\" for requests naming no loaded model)", labels=["model", "api", "status"])
    request_seconds = HistogramMetricFamily("memserve_request_duration_seconds", "End-to-end request time "
                                            "(model=\"\" for requests naming no loaded model)", labels=["model", "api"])
    queue = HistogramMetricFamily("memserve_queue_duration_seconds", "Time a request waited for its lane",
                                  labels=["model"])
    compute = HistogramMetricFamily("memserve_compute_duration_seconds", "Time of one execution", labels=["model"])
    rows = HistogramMetricFamily("memserve_batch_size", "Rows per execution (merged requests count once)",
                                 labels=["model"])
    for name, stats in sources:
        by_status, seconds = stats.snapshot()
        for (api, status), n in sorted(by_status.items()):
            requests.add_metric([name, api, status], n)
        for api, h in sorted(seconds.items()):
            _add(request_seconds, [name, api], h)
        if name != UNKNOWN_MODEL:
            with stats.lock():
                per_model = [h.copy() for h in (stats.queue_seconds, stats.compute_seconds, stats.batch_rows)]
            for family, h in zip((queue, compute, rows), per_model):
                _add(family, [name], h)
    return [requests, request_seconds, queue, compute, rows]


def _add(family: HistogramMetricFamily, labels: list[str], h: Buckets) -> None:
    cumulative, buckets = 0, []
    for bound, n in zip([*h.bounds, float("inf")], h.counts):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    family.add_metric(labels, buckets, h.sum)
