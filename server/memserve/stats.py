"""Per-model counters: what the Open Inference Protocol's ModelStatistics and metrics report."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns


@dataclass
class ModelStats:
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request_done(self, submitted: float, started: float, ok: bool, rows: int) -> None:
        """A request answered (ok) or failed; times are time.perf_counter() values."""
        now = time.perf_counter()
        with self._lock:
            (self.success if ok else self.fail).add(int((now - submitted) * 1e9))
            if ok:
                self.queue.add(int((started - submitted) * 1e9))
                self.compute.add(int((now - started) * 1e9))
                self.inference_count += rows
                self.last_inference_ms = int(time.time() * 1000)

    def executed(self, rows: int, compute_ns: int) -> None:
        with self._lock:
            self.execution_count += 1
            self.batches.setdefault(rows, Duration()).add(compute_ns)
