"""Prometheus metrics, served on their own HTTP port (`--metrics-port`, path /metrics).

Events (requests, executions, loads) are counted as they happen; sizes and
depths (device memory by kind, per-model bytes, workspaces, queue depths) are
read from the registry when Prometheus scrapes, so they are never stale.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from .errors import NotFound

# Request latencies from 100 us to 10 s; batch sizes from 1 to 1024.
SECONDS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# The model label of a request that names no loaded model: clients choose those names, and every label
# value is a series Prometheus keeps, so unknown names share this one value instead of one series each.
UNKNOWN_MODEL = ""


class Metrics:
    def __init__(self):
        self.prometheus = CollectorRegistry()
        self.registry = None  # the watched Registry: request labels name only its loaded models
        self.requests = Counter("memserve_requests", "Requests by model, API and gRPC status "
                                "(model=\"\" for requests naming no loaded model)",
                                ["model", "api", "status"], registry=self.prometheus)
        self.request_seconds = Histogram("memserve_request_duration_seconds", "End-to-end request time "
                                         "(model=\"\" for requests naming no loaded model)",
                                         ["model", "api"], buckets=SECONDS, registry=self.prometheus)
        self.queue_seconds = Histogram("memserve_queue_duration_seconds", "Time a request waited for its lane",
                                       ["model"], buckets=SECONDS, registry=self.prometheus)
        self.compute_seconds = Histogram("memserve_compute_duration_seconds", "Time of one execution",
                                         ["model"], buckets=SECONDS, registry=self.prometheus)
        self.batch_rows = Histogram("memserve_batch_size", "Rows per execution (merged requests count once)",
                                    ["model"], buckets=ROWS, registry=self.prometheus)
        self.load_seconds = Histogram("memserve_load_duration_seconds", "Time to load a model",
                                      buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120), registry=self.prometheus)
        self.load_failures = Counter("memserve_load_failures", "Refused or failed loads by reason", ["reason"],
                                     registry=self.prometheus)

    def watch(self, registry) -> None:
        """Also report the registry's sizes and depths at each scrape; label requests by its models."""
        self.registry = registry
        self.prometheus.register(_StateCollector(registry))

    def request(self, model: str, api: str, status: str, seconds: float) -> None:
        model = self.model_label(model)
        self.requests.labels(model, api, status).inc()
        self.request_seconds.labels(model, api).observe(seconds)

    def model_label(self, model: str) -> str:
        """`model` when a model of that name (or that id, written as a number) is loaded in the watched
        registry, else UNKNOWN_MODEL: a client cannot create series by naming models that do not exist."""
        registry = self.registry
        if not model or registry is None:
            return UNKNOWN_MODEL
        try:
            registry.get(model)
        except NotFound:
            if not (len(model) <= 19 and model.isascii() and model.isdigit()):
                return UNKNOWN_MODEL
            try:
                registry.get(int(model))
            except NotFound:
                return UNKNOWN_MODEL
        return model

    def serve(self, host: str, port: int) -> int:
        server, _ = start_http_server(port, addr=host, registry=self.prometheus)
        return server.server_port


class _StateCollector:
    """Gauges read from the registry at scrape time."""

    def __init__(self, registry):
        self.registry = registry

    def describe(self):
        return []

    def collect(self):
        reg = self.registry
        dev = reg.device
        yield GaugeMetricFamily("memserve_device_capacity_bytes", "Device memory capacity", value=dev.capacity)
        used = GaugeMetricFamily("memserve_device_used_bytes", "Device memory in use by kind", labels=["kind"])
        for kind, n in dev.used_by_kind().items():
            used.add_metric([kind], n)
        yield used
        models = reg.list()
        yield GaugeMetricFamily("memserve_models_loaded", "Models loaded", value=len(models))
        weights = GaugeMetricFamily("memserve_model_weight_bytes", "Weight bytes of each model", labels=["model"])
        work = GaugeMetricFamily("memserve_model_workspace_bytes", "Workspace bytes each model plans, all instances",
                                 labels=["model"])
        for m in models:
            weights.add_metric([m.name], m.plan.weight_size)
            work.add_metric([m.name], m.plan.work_size * len(m.workspaces))
        yield weights
        yield work
        size = GaugeMetricFamily("memserve_workspace_bytes", "Size of each workspace buffer", labels=["workspace"])
        depth = GaugeMetricFamily("memserve_queue_depth", "Requests waiting per workspace lane", labels=["workspace"])
        for ws in reg.pool.workspaces():
            size.add_metric([ws.name], ws.size)
            depth.add_metric([ws.name], reg.scheduler.depth(ws))
        yield size
        yield depth
