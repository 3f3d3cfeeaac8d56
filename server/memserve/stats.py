"""Per-model counters: the one record that ModelStatistics and the Prometheus metrics both read.

A request costs a few integer additions here and nothing else: Prometheus
series are built from these counters when it scrapes (metrics.py), so the
request path never touches prometheus_client, whose labelled children and
locked bucket searches cost more than the rest of a small request.
"""
from __future__ import annotations

import threading
import time
from bisect import bisect_left
from dataclasses import dataclass, field

# Request latencies from 100 us to 10 s; batch sizes from 1 to 1024.
SECONDS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


class Histogram:
    """Prometheus histogram buckets: counts[i] holds values <= bounds[i] (and > bounds[i-1]); the last, the rest."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def copy(self) -> Histogram:
        h = Histogram(self.bounds)
        h.counts, h.sum = list(self.counts), self.sum
        return h


class RequestStats:
    """Requests as the protocol front saw them: by API and status, and their end-to-end seconds by API."""

    def __init__(self) -> None:
        self.by_status: dict[tuple[str, str], int] = {}
        self.seconds: dict[str, Histogram] = {}
        self._lock = threading.Lock()

    def request(self, api: str, status: str, seconds: float) -> None:
        with self._lock:
            key = (api, status)
            self.by_status[key] = self.by_status.get(key, 0) + 1
            h = self.seconds.get(api)
            if h is None:
                h = self.seconds[api] = Histogram(SECONDS)
            h.observe(seconds)

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, Histogram]]:
        with self._lock:
            return dict(self.by_status), {api: h.copy() for api, h in self.seconds.items()}


@dataclass
class ModelStats(RequestStats):
    success: Duration = field(default_factory=Duration)  # whole request, queue included
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    # Per request, as Triton counts it: each request of a merged batch is charged the batch's compute time.
    # Inputs are copied in and outputs out inside the execution, so compute_input / compute_output report
    # the same count with no time of their own (perf_analyzer requires the three counts to match).
    compute: Duration = field(default_factory=Duration)
    inference_count: int = 0  # rows answered
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)  # rows per execution -> compute time
    queue_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS))  # per answered request
    compute_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS))  # per execution
    batch_rows: Histogram = field(default_factory=lambda: Histogram(ROWS))  # per execution

    def __post_init__(self) -> None:
        RequestStats.__init__(self)

    def request_done(self, submitted: float, started: float, ok: bool, rows: int) -> None:
        """A request answered (ok) or failed; times are time.perf_counter() values. `rows` is 0 for a
        model without a batch dimension: one inference, as Triton counts it."""
        rows = rows or 1
        now = time.perf_counter()
        with self._lock:
            (self.success if ok else self.fail).add(int((now - submitted) * 1e9))
            if ok:
                self.queue.add(int((started - submitted) * 1e9))
                self.compute.add(int((now - started) * 1e9))
                self.queue_seconds.observe(started - submitted)
                self.inference_count += rows
                self.last_inference_ms = int(time.time() * 1000)

    def served(self, requests: list[tuple[float, float, int]], done: float) -> None:
        """One execution that answered `requests` (submitted, started, rows: perf_counter values; rows
        0 without a batch dimension) at `done`: what executed() and request_done() for each add up
        to, under one lock."""
        total = 0
        started = requests[0][1]
        seconds = done - started
        wall = int(time.time() * 1000)
        success, queue, compute, hist = self.success, self.queue, self.compute, self.queue_seconds
        with self._lock:
            for submitted, begun, rows in requests:
                rows = rows or 1
                total += rows
                success.count += 1
                success.ns += int((done - submitted) * 1e9)
                queue.count += 1
                queue.ns += int((begun - submitted) * 1e9)
                compute.count += 1
                compute.ns += int((done - begun) * 1e9)
                waited = begun - submitted
                hist.counts[bisect_left(hist.bounds, waited)] += 1  # hist.observe(waited), inline
                hist.sum += waited
                self.inference_count += rows
            self.last_inference_ms = wall
            self.execution_count += 1
            batch = self.batches.get(total)
            if batch is None:
                batch = self.batches[total] = Duration()
            batch.count += 1
            batch.ns += int(seconds * 1e9)
            hist = self.compute_seconds  # observe(), inline, for the two histograms
            hist.counts[bisect_left(hist.bounds, seconds)] += 1
            hist.sum += seconds
            hist = self.batch_rows
            hist.counts[bisect_left(hist.bounds, total)] += 1
            hist.sum += total

    def executed(self, rows: int, seconds: float) -> None:
        rows = rows or 1  # no batch dimension: one inference
        ns = int(seconds * 1e9)
        with self._lock:
            self.execution_count += 1
            batch = self.batches.get(rows)
            if batch is None:
                batch = self.batches[rows] = Duration()
            batch.add(ns)
            self.compute_seconds.observe(seconds)
            self.batch_rows.observe(rows)

    def lock(self) -> threading.Lock:
        """Held while reading several counters that must agree (ModelStatistics)."""
        return self._lock
