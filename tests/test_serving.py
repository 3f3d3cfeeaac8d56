"""Serving features over real gRPC: instances, auto workspaces, replace, timeouts, full queues."""
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from memserve_client import MemserveError

from conftest import wait_for
from models import ROOT, chain_model, mlp_bytes

EXAMPLE = ROOT / "examples" / "mlp.onnx"


def test_instances_share_one_weight_copy_and_spread_the_load(daemon, client):
    m = client.load(chain_model(width=512, depth=4), name="multi", instances=3, max_batch=256)
    assert m.workspaces == (f"private:{m.id}", f"private:{m.id}.1", f"private:{m.id}.2")
    status = client.device_status()
    assert status.used_by_kind == {"weights": m.weight_size, "workspace": 3 * m.work_size, "io": 0}
    assert [(b.refcount, b.model_ids) for b in status.weight_blocks] == [(1, (m.id,))]
    x = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    want = client.execute(m, {"x": x})["y"]

    def hammer(_):
        with daemon.client() as c:
            return all(np.array_equal(c.execute(m, {"x": x})["y"], want) for _ in range(10))

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(hammer, range(6)))
    spaces = {w.name: w for w in client.device_status().workspaces}
    assert all(spaces[name].executions > 0 for name in m.workspaces)  # every instance served
    assert all(spaces[name].max_concurrent == 1 for name in m.workspaces)
    assert client.unload(m) == m.weight_size + 3 * m.work_size


def test_instances_need_private_workspaces(client):
    with pytest.raises(MemserveError) as e:
        client.load(EXAMPLE, name="x", instances=2, workspace="shared:g")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_auto_joins_the_group_it_grows_least_when_private_does_not_fit(make_daemon):
    from memserve.model import CompileOptions, compile_model

    models = {k: mlp_bytes(sizes=(64, 128, 10), seed=k) for k in (1, 2, 3, 4)}
    plans = {b: compile_model(models[1], CompileOptions(max_batch=b)) for b in (8, 48, 64)}
    weights = plans[8].weight_size
    # Room for big (batch 64) and small (batch 8) in their groups, plus the third
    # model's weights and its private workspace (batch 48) less 1 KiB.
    capacity = 3 * weights + plans[64].work_size + plans[8].work_size + plans[48].work_size - 1024
    d = make_daemon("--device-memory", str(capacity))
    with d.client() as c:
        big = c.load(models[1], name="big", workspace="shared:big", max_batch=64)
        small = c.load(models[2], name="small", workspace="shared:small", max_batch=8)
        m = c.load(models[3], name="auto", workspace="auto", max_batch=48)
        # Its own buffer does not fit; shared:big (batch 64) holds it without growing, shared:small would grow.
        assert m.workspace == "shared:big" and "joined shared:big, which grew by 0 bytes" in m.note
        x = np.ones((48, 64), np.float32)
        assert c.execute(m, {"x": x})["probs"].shape == (48, 10)
        before = c.device_status()
        with pytest.raises(MemserveError) as e:  # fits nowhere: refused, nothing changes
            c.load(models[4], name="none", workspace="auto", max_batch=4096)
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.device_status() == before
        for model in (m, small, big):
            c.unload(model)
        assert c.device_status().used == 0


def test_auto_models_get_their_own_buffer_then_double_up(make_daemon):
    from memserve.model import CompileOptions, compile_model

    model = mlp_bytes(sizes=(64, 256, 10), seed=7)
    plan = compile_model(model, CompileOptions(max_batch=16))
    d = make_daemon("--device-memory", str(3 * plan.weight_size + 2 * plan.work_size + 1024))
    with d.client() as c:
        first = c.load(model, name="a", workspace="auto", max_batch=16)
        second = c.load(mlp_bytes(sizes=(64, 256, 10), seed=8), name="b", workspace="auto", max_batch=16)
        assert (first.workspace, second.workspace) == (f"shared:auto.{first.id}", f"shared:auto.{second.id}")
        assert first.note == second.note == ""
        third = c.load(mlp_bytes(sizes=(64, 256, 10), seed=9), name="c", workspace="auto", max_batch=16)
        assert third.workspace in (first.workspace, second.workspace) and "grew by 0 bytes" in third.note
        x = np.ones((16, 64), np.float32)
        assert all(c.execute(m, {"x": x})["probs"].shape == (16, 10) for m in (first, second, third))


def test_replace_under_load_fails_no_request(daemon, client):
    old = client.load(mlp_bytes(seed=10), name="svc", max_batch=4)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    old_out = client.execute("svc", {"x": x})["probs"]
    stop, errors, seen = threading.Event(), [], []

    def hammer():
        with daemon.client() as c:
            while not stop.is_set():
                try:
                    seen.append(c.execute("svc", {"x": x})["probs"])
                except MemserveError as e:
                    errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(seen) > 20)
    new = client.load(mlp_bytes(seed=11), name="svc", max_batch=4, replace=True)
    assert f"replaces model {old.id}" in new.note
    new_out = client.execute("svc", {"x": x})["probs"]
    count = len(seen)
    assert wait_for(lambda: len(seen) > count + 20)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert not np.array_equal(old_out, new_out)
    assert all(np.array_equal(s, old_out) or np.array_equal(s, new_out) for s in seen)
    assert np.array_equal(seen[-1], new_out)
    assert [m.id for m in client.list_models()] == [new.id]  # the old one unloaded itself
    assert client.device_status().used == new.weight_size + new.work_size


def test_replace_is_needed_to_take_a_name(client):
    client.load(EXAMPLE, name="taken")
    with pytest.raises(MemserveError) as e:
        client.load(EXAMPLE, name="taken")
    assert e.value.code == grpc.StatusCode.ALREADY_EXISTS and "replace=true" in e.value.message


def _busy(daemon, model, x, n):
    pool = ThreadPoolExecutor(n)
    clients = [daemon.client() for _ in range(n)]
    return pool, clients, [pool.submit(c.execute, model, {"x": x}) for c in clients]


def test_request_timeout_drops_it_before_it_runs(daemon, client):
    from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
    from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc
    from memserve_api.tensors import to_proto

    m = client.load(chain_model(width=1024, depth=8), name="slow", max_batch=512)
    big = np.ones((512, 1024), np.float32)
    runs = lambda: client.device_status().workspaces[0].executions  # noqa: E731
    before = runs()
    pool, clients, futures = _busy(daemon, m, big, 4)
    assert wait_for(lambda: client.device_status().workspaces[0].queued >= 2)
    with grpc.insecure_channel(daemon.target) as ch:
        req = pb.ExecuteRequest(model=pb.ModelRef(id=m.id), inputs=[to_proto("x", big[:1])], timeout_us=1000)
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.MemserveStub(ch).Execute(req, timeout=30)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for f in futures:
        f.result()
    pool.shutdown()
    for c in clients:
        c.close()
    assert runs() - before == 4  # the four busy requests ran; the timed-out one never did


def test_full_queue_is_refused_at_once(make_daemon):
    d = make_daemon("--max-queue", "2")
    with d.client() as c:
        m = c.load(chain_model(width=1024, depth=8), name="slow", max_batch=512)
        big = np.ones((512, 1024), np.float32)
        pool, clients, futures = _busy(d, m, big, 8)
        codes = []
        for f in futures:
            try:
                f.result()
                codes.append("OK")
            except MemserveError as e:
                codes.append(e.code.name)
        pool.shutdown()
        for cl in clients:
            cl.close()
        assert "RESOURCE_EXHAUSTED" in codes and codes.count("OK") >= 3
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}


def conv_features(seed: int = 0) -> bytes:
    """Conv -> Relu -> GlobalAveragePool -> Flatten: kernels that compute each sample on its own."""
    from onnx import helper

    from models import F32, graph_model

    w = np.random.default_rng(seed).standard_normal((16, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    return graph_model(nodes, [("x", F32, ["N", 3, 16, 16])], [("y", F32, ["N", 16])], {"w": w})


def test_dynamic_batching_merges_waiting_requests_and_answers_each_exactly(daemon, client):
    model = conv_features()
    plain = client.load(model, name="plain", max_batch=8)
    batched = client.load(model, name="batched", max_batch=8, batching=True, max_queue_delay_us=200_000,
                          preferred_batch_sizes=(8,))
    assert client.describe(batched).workspace != client.describe(plain).workspace
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + k % 2, 3, 16, 16)).astype(np.float32) for k in range(6)]  # 9 rows in all
    want = [client.execute(plain, {"x": x})["y"] for x in xs]
    before = {w.name: w.executions for w in client.device_status().workspaces}[batched.workspace]

    def one(k):
        with daemon.client() as c:
            return c.execute(batched, {"x": xs[k]})["y"]

    with ThreadPoolExecutor(len(xs)) as pool:
        got = list(pool.map(one, range(len(xs))))
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.tobytes() == w.tobytes()  # byte for byte the unbatched answer
    runs = {w.name: w.executions for w in client.device_status().workspaces}[batched.workspace] - before
    assert runs < len(xs)  # requests were merged


def test_dynamic_batching_needs_a_batch_dimension(client):
    with pytest.raises(MemserveError) as e:
        client.load(EXAMPLE, name="b", max_batch=1, batching=True)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "max_batch of 2" in e.value.message


def test_execute_stream_answers_every_request_by_id_errors_included(client):
    m = client.load(EXAMPLE, name="streamed", max_batch=4, instances=2)
    rng = np.random.default_rng(5)
    xs = {f"r{k}": rng.standard_normal((1 + k % 4, 64)).astype(np.float32) for k in range(40)}
    want = {rid: client.execute(m, {"x": x})["probs"] for rid, x in xs.items()}
    requests = [(rid, m, {"x": x}) for rid, x in xs.items()]
    requests.insert(7, ("bad-shape", m, {"x": np.ones((1, 3), np.float32)}))
    requests.insert(20, ("no-model", "missing", {"x": xs["r0"]}))
    answers = dict(client.execute_stream(iter(requests)))
    assert sorted(answers) == sorted(rid for rid, _, _ in requests)
    assert answers["bad-shape"].code == grpc.StatusCode.INVALID_ARGUMENT and answers["bad-shape"].acl_code == 100017
    assert answers["no-model"].code == grpc.StatusCode.NOT_FOUND
    for rid, w in want.items():
        np.testing.assert_array_equal(answers[rid]["probs"], w)


def test_concurrent_admin_calls_on_one_name_get_consistent_answers(daemon, client):
    def race(fn, n=6):
        barrier = threading.Barrier(n)

        def one(k):
            with daemon.client() as c:
                barrier.wait()
                try:
                    return fn(c, k)
                except MemserveError as e:
                    return e.code.name

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, range(n)))

    loads = race(lambda c, k: c.load(mlp_bytes(seed=k), name="contested").id)
    winners = [r for r in loads if isinstance(r, int)]
    assert len(winners) == 1 and sorted(set(loads) - set(winners)) == ["ALREADY_EXISTS"]
    replaced = race(lambda c, k: c.load(mlp_bytes(seed=10 + k), name="contested", replace=True).id)
    assert all(isinstance(r, int) for r in replaced)
    (survivor,) = client.list_models()
    assert survivor.name == "contested" and survivor.id in replaced
    unloads = race(lambda c, k: c.unload(survivor.id))
    assert sum(isinstance(r, int) and r > 0 for r in unloads) == 1
    assert sorted(r for r in unloads if isinstance(r, str)) == ["NOT_FOUND"] * 5
    assert client.list_models() == [] and client.device_status().used == 0
