"""Invariants I1, I3, I4, I6, I7 under concurrent clients, over real gRPC."""
import random
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from memserve_client import MemserveError

from conftest import wait_for
from onnx import helper

from models import F32, ROOT, chain_model, graph_model, mlp_bytes

EXAMPLE = ROOT / "examples" / "mlp.onnx"


def test_i1_models_sharing_a_workspace_never_overlap_and_get_their_own_outputs(daemon, client):
    a = client.load(mlp_bytes(seed=3), name="a", workspace="shared:hammer", max_batch=4)
    b = client.load(mlp_bytes(sizes=(64, 256, 10), seed=4), name="b", workspace="shared:hammer", max_batch=4)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + i % 4, 64)).astype(np.float32) for i in range(16)]
    isolated = {(m.name, i): client.execute(m, {"x": x})["probs"] for m in (a, b) for i, x in enumerate(xs)}
    before = client.device_status().workspaces[0].executions
    n_threads, per_thread = 8, 60
    wrong = []

    def hammer(t):
        with daemon.client() as c:
            r = random.Random(t)
            for _ in range(per_thread):
                m, i = r.choice((a, b)), r.randrange(len(xs))
                if not np.array_equal(c.execute(m, {"x": xs[i]})["probs"], isolated[(m.name, i)]):
                    wrong.append((m.name, i))

    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(hammer, range(n_threads)))
    (ws,) = client.device_status().workspaces
    assert wrong == []
    assert ws.executions - before == n_threads * per_thread
    assert ws.max_concurrent == 1  # the probe (outside the workspace lock, so it can see overlaps) saw none


def _flood(daemon, model, x, n):
    """Start n concurrent executions; returns their futures once they are queued."""
    results = []
    clients = [daemon.client() for _ in range(n)]
    pool = ThreadPoolExecutor(n)
    futures = [pool.submit(c.execute, model, {"x": x}) for c in clients]
    return pool, clients, futures, results


def test_i7_unload_waits_for_the_running_execution_and_fails_the_queued(daemon, client):
    m = client.load(chain_model(width=1024, depth=8), name="slow", max_batch=512)
    x = np.ones((512, 1024), np.float32)  # tens of ms per request
    pool, clients, futures, _ = _flood(daemon, m, x, 12)
    assert wait_for(lambda: client.device_status().workspaces[0].queued >= 4)
    freed = client.unload(m)
    assert freed == m.weight_size + m.work_size
    ok = failed = 0
    for f in futures:
        try:
            assert f.result().get("y").shape == (512, 1024)
            ok += 1
        except MemserveError as e:
            assert e.code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND), e
            if e.code == grpc.StatusCode.FAILED_PRECONDITION:
                assert "unloaded" in e.message
            failed += 1
    pool.shutdown()
    for c in clients:
        c.close()
    assert ok >= 1 and failed >= 1
    assert client.device_status().used == 0


def test_i6_expired_and_cancelled_requests_are_dropped_before_they_run(daemon, client):
    m = client.load(chain_model(width=1024, depth=8), name="slow2", max_batch=512)
    big, small = np.ones((512, 1024), np.float32), np.ones((1, 1024), np.float32)
    runs = lambda: client.device_status().workspaces[0].executions  # noqa: E731
    before = runs()
    pool, clients, futures, _ = _flood(daemon, m, big, 6)  # keep the lane busy
    assert wait_for(lambda: client.device_status().workspaces[0].queued >= 3)
    with pytest.raises(MemserveError) as e:
        client.execute(m, {"x": small}, timeout=0.02)
    # Expired in the queue, or refused at once when the lane already knows how long its queue takes
    # (scheduler.py, overload sheds early): either way it never runs.
    assert e.value.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
    from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc
    from memserve_api.tensors import to_proto

    with grpc.insecure_channel(daemon.target) as ch:
        call = pb_grpc.MemserveStub(ch).Execute.future(
            pb.ExecuteRequest(model=pb.ModelRef(id=m.id), inputs=[to_proto("x", small)]))
        assert wait_for(lambda: client.device_status().workspaces[0].queued >= 3)
        assert call.cancel()
    for f in futures:
        f.result()
    pool.shutdown()
    for c in clients:
        c.close()
    time.sleep(0.2)
    assert runs() - before == 6  # only the six that were waited for ran


def test_i3_i4_memory_returns_to_zero_after_any_mix(client):
    rng = random.Random(5)
    good = [EXAMPLE.read_bytes(), mlp_bytes(seed=9), mlp_bytes(sizes=(64, 32, 10), seed=1)]
    unknown_op = graph_model([helper.make_node("Det", ["x"], ["y"])], [("x", F32, [2, 2])], [("y", F32, [])])
    bad = [(b"junk", {}), (good[0][:5000], {}), (chain_model(width=8, depth=1)[:-7], {}), (unknown_op, {}),
           (good[1], {"max_batch": 10**7})]  # 5 GB of activations: more than the device has
    names = []
    for step in range(60):
        action = rng.choice(["load", "load", "bad", "exec", "unload"])
        if action == "load":
            name = f"m{step}"
            ws = rng.choice(["private", "shared:a", "shared:b"])
            client.load(rng.choice(good), name=name, workspace=ws, max_batch=rng.randint(1, 8))
            names.append(name)
        elif action == "bad":
            model, opts = rng.choice(bad)
            with pytest.raises(MemserveError):
                client.load(model, name=f"bad{step}", workspace="shared:a", **opts)
        elif action == "exec" and names:
            client.execute(rng.choice(names), {"x": np.ones((1, 64), np.float32)})
        elif action == "unload" and names:
            client.unload(names.pop(rng.randrange(len(names))))
        status = client.device_status()
        assert status.used == sum(w.size for w in status.workspaces) + sum(b.size for b in status.weight_blocks)
    for name in names:
        client.unload(name)
    status = client.device_status()
    assert status.used == 0 and status.workspaces == () and status.weight_blocks == ()
