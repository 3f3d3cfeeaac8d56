"""Mixed load / execute / unload / replace from many clients, bounded in time (slow: CI runs it).

Asserts: every answer equals the isolated reference of the model that gave
it; no workspace ever ran two executions at once (I1); no request started
after its timeout (I6); device memory is zero once everything is unloaded (I3).
"""
import os
import random
import threading
import time

import grpc
import numpy as np
import pytest

from memserve_client import MemserveError
from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc
from memserve_api.tensors import from_proto, to_proto

from models import mlp_bytes, ort_run

SECONDS = float(os.environ.get("MEMSERVE_STRESS_SECONDS", "30"))
ALLOWED = {"NOT_FOUND", "FAILED_PRECONDITION", "DEADLINE_EXCEEDED"}


@pytest.mark.slow
def test_mixed_traffic_keeps_every_invariant(make_daemon):
    d = make_daemon("--device-memory", "256MiB", "--max-queue", "4096")
    models = {seed: mlp_bytes(seed=seed) for seed in range(4)}
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + k % 4, 64)).astype(np.float32) for k in range(8)]
    refs = {}  # each model alone on an idle daemon: what every answer under load must equal, byte for byte
    with d.client() as c:
        for seed, model in models.items():
            m = c.load(model, name=f"ref{seed}", max_batch=4)
            for k, x in enumerate(xs):
                refs[seed, k] = c.execute(m, {"x": x})["probs"]
                np.testing.assert_allclose(refs[seed, k], ort_run(model, {"x": x})[0], rtol=1e-5)
            c.unload(m)
    live: dict[int, int] = {}  # model id -> seed, as the admin threads last saw it
    lock = threading.Lock()
    stop = threading.Event()
    counts = {"ok": 0, "wrong": 0, "late": 0, "overlap": 0, "errors": {}}
    failures: list[str] = []

    def admin(t: int) -> None:
        r = random.Random(t)
        with d.client(timeout=60) as c:
            while not stop.is_set():
                try:
                    action = r.choice(["load", "load", "unload", "replace"])
                    seed = r.randrange(len(models))
                    if action == "load" or not live:
                        ws = r.choice(["private", "shared:a", "shared:b", "auto"])
                        m = c.load(models[seed], name=f"m{t}-{r.randrange(10**9)}", workspace=ws, max_batch=4,
                                   instances=r.choice([1, 1, 2]) if ws in ("private", "auto") else 1)
                        with lock:
                            live[m.id] = seed
                    elif action == "unload":
                        with lock:
                            victim = r.choice(sorted(live))
                            live.pop(victim)
                        c.unload(victim)
                    else:
                        with lock:
                            victim = r.choice(sorted(live))
                        name = c.describe(victim).name
                        m = c.load(models[seed], name=name, max_batch=4, replace=True)
                        with lock:
                            live.pop(victim, None)
                            live[m.id] = seed
                except MemserveError as e:
                    if e.code.name not in ("NOT_FOUND", "ALREADY_EXISTS"):
                        failures.append(f"admin {action}: {e}")
                time.sleep(r.random() * 0.05)

    def execute(t: int) -> None:
        r = random.Random(100 + t)
        with grpc.insecure_channel(d.target) as ch:
            stub = pb_grpc.MemserveStub(ch)
            while not stop.is_set():
                with lock:
                    if not live:
                        continue
                    model_id = r.choice(sorted(live))
                    seed = live[model_id]
                k = r.randrange(len(xs))
                timeout_us = r.choice([0, 20_000, 200_000])
                req = pb.ExecuteRequest(model=pb.ModelRef(id=model_id), inputs=[to_proto("x", xs[k])],
                                        timeout_us=timeout_us, priority=r.randrange(8))
                try:
                    resp = stub.Execute(req, timeout=30)
                except grpc.RpcError as e:
                    name = e.code().name
                    with lock:
                        counts["errors"][name] = counts["errors"].get(name, 0) + 1
                    # A request with a timeout may be shed up front when the queue ahead would make it late.
                    shed = name == "RESOURCE_EXHAUSTED" and timeout_us and "before its deadline" in e.details()
                    if name not in ALLOWED and not shed:
                        failures.append(f"execute: {name}: {e.details()}")
                    continue
                wrong = not np.array_equal(from_proto(resp.outputs[0]), refs[(seed, k)])
                late = bool(timeout_us) and resp.queue_us > timeout_us
                with lock:
                    counts["ok"] += 1
                    counts["wrong"] += wrong
                    counts["late"] += late

    def monitor() -> None:
        with d.client() as c:
            while not stop.is_set():
                if any(w.max_concurrent > 1 for w in c.device_status().workspaces):
                    counts["overlap"] += 1
                time.sleep(0.1)

    threads = [threading.Thread(target=admin, args=(t,)) for t in range(2)]
    threads += [threading.Thread(target=execute, args=(t,)) for t in range(6)]
    threads.append(threading.Thread(target=monitor))
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join(60)
    with d.client() as c:
        for m in c.list_models():
            c.unload(m)
        left = c.device_status().used
    print(f"stress {SECONDS:.0f}s: {counts}, bytes left {left}")
    assert failures == []
    assert counts["ok"] > 100
    assert (counts["wrong"], counts["late"], counts["overlap"], left) == (0, 0, 0, 0)
