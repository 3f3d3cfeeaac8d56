"""Overload sheds early: 64 clients with deadlines on a slow model, a fast model on another lane (issue 9,
item 9). Counts, not timings: timing figures are in bench/overload.py."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import grpc
import numpy as np

from memserve.scheduler import PROBE_INTERVAL
from memserve_client import MemserveError
from models import chain_model

CLIENTS, DEADLINE, SECONDS = 64, 0.2, 4


def test_a_flood_with_deadlines_is_shed_and_never_starves_another_lane(make_daemon):
    d = make_daemon("--device-memory", "512MiB")
    with d.client(timeout=60) as admin:
        slow = admin.load(chain_model(width=1024, depth=4), name="slow", max_batch=64)
        fast = admin.load(chain_model(width=16, depth=1), name="fast", max_batch=1)
        x_slow, x_fast = np.ones((64, 1024), np.float32), np.ones((1, 16), np.float32)
        admin.execute(slow, {"x": x_slow})  # one execution gives the lane its estimate
        before = {w.name: w.executions for w in admin.device_status().workspaces}
        slow_ws = next(w.name for w in admin.device_status().workspaces if slow.id in w.model_ids)

    outcomes: list[grpc.StatusCode] = []
    lock = threading.Lock()
    stop = time.monotonic() + SECONDS

    def flood() -> None:
        with d.client() as c:
            while time.monotonic() < stop:
                try:
                    c.execute(slow, {"x": x_slow}, timeout=DEADLINE)
                    code = grpc.StatusCode.OK
                except MemserveError as exc:
                    code = exc.code
                with lock:
                    outcomes.append(code)

    fast_ok = 0
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(CLIENTS):
            pool.submit(flood)
        with d.client(timeout=30) as c:
            while time.monotonic() < stop:
                assert c.execute(fast, {"x": x_fast})["y"].shape == (1, 16)  # no deadline: must complete
                fast_ok += 1
    assert fast_ok > 0

    with d.client() as c:
        executed = {w.name: w.executions for w in c.device_status().workspaces}[slow_ws] - before[slow_ws]
    ok = outcomes.count(grpc.StatusCode.OK)
    shed = outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             grpc.StatusCode.DEADLINE_EXCEEDED}, set(outcomes)
    assert shed > 0  # refused up front, not left to expire in the queue
    # Expired work never runs: nearly every execution answered its client in time, but for the probes an
    # idle lane runs to refresh its estimate. (Without early shedding almost none did: the lane ran
    # requests whose callers had already given up.)
    wasted = executed - ok
    assert wasted <= 0.25 * executed + SECONDS / PROBE_INTERVAL + 2, (executed, ok, shed, len(outcomes))
