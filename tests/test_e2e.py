"""End to end over real gRPC: memserved as a subprocess, driven by the client."""
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from onnx import helper

from memserve_client import MemserveError

from models import F32, ROOT, chain_model, graph_model, mlp_bytes, ort_run, sklearn_mlp, with_external_data

EXAMPLE = ROOT / "examples" / "mlp.onnx"


def test_load_execute_unload_matches_onnxruntime(client):
    m = client.load(EXAMPLE, name="mlp", max_batch=8)
    assert m.name == "mlp" and m.id > 0 and m.max_batch == 8
    assert (m.work_size, m.work_lower_bound, m.weight_size) == (8192, 8192, 104512)
    assert [(s.name, s.dtype.name, s.shape) for s in m.inputs] == [("x", "float32", (-1, 64))]
    assert [(s.name, s.shape) for s in m.outputs] == [("probs", (-1, 10))]
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    y = client.execute(m, {"x": x})["probs"]
    np.testing.assert_allclose(y, ort_run(EXAMPLE.read_bytes(), {"x": x})[0], rtol=1e-5, atol=1e-7)
    by_name = client.execute("mlp", {"x": x[:1]})["probs"]
    by_id = client.execute(m.id, {"x": x[:1]})["probs"]
    np.testing.assert_array_equal(by_name, by_id)
    status = client.device_status()
    assert status.used_by_kind == {"weights": 104512, "workspace": 8192, "io": 0}
    assert [(w.name, w.size, w.model_ids) for w in status.workspaces] == [(f"private:{m.id}", 8192, (m.id,))]
    assert client.describe("mlp") == client.list_models()[0]
    assert client.unload("mlp") == 104512 + 8192
    assert client.device_status().used == 0
    with pytest.raises(MemserveError) as e:
        client.execute(m, {"x": x})
    assert e.value.code == grpc.StatusCode.NOT_FOUND and e.value.acl_code == 100011


def test_real_exporter_model_matches_onnxruntime(client):
    model, X = sklearn_mlp()
    m = client.load(model, name="sk", max_batch=16)
    got = client.execute(m, {"X": X})["variable"]
    np.testing.assert_allclose(got, ort_run(model, {"X": X})[0], rtol=1e-5, atol=1e-6)
    assert m.work_size <= m.work_lower_bound * 1.02


def test_query_size_allocates_nothing(client):
    s = client.query_size(EXAMPLE, max_batch=4)
    assert (s.work_size, s.weight_size, s.work_lower_bound) == (4096, 104512, 4096)
    assert client.device_status().used == 0 and client.list_models() == []


def test_same_weights_are_stored_once(client):
    a = client.load(EXAMPLE, name="a")
    b = client.load(EXAMPLE, name="b", max_batch=4)
    assert not a.weights_shared and b.weights_shared
    s = client.device_status()
    assert [(blk.refcount, set(blk.model_ids)) for blk in s.weight_blocks] == [(2, {a.id, b.id})]
    assert s.used_by_kind["weights"] == a.weight_size
    client.unload(a)
    assert client.device_status().used_by_kind["weights"] == a.weight_size  # b still holds it
    assert client.unload(b) == b.weight_size + b.work_size


def test_shared_group_buffer_is_as_large_as_its_largest_member(client):
    small = client.load(EXAMPLE, name="small", workspace="shared:g", max_batch=1)
    big = client.load(mlp_bytes(seed=2), name="big", workspace="shared:g", max_batch=16)
    ws = client.device_status().workspaces
    assert [(w.name, w.size, set(w.model_ids)) for w in ws] == [("shared:g", big.work_size, {small.id, big.id})]
    x = np.ones((1, 64), np.float32)
    assert client.execute(small, {"x": x})["probs"].shape == (1, 10)
    assert client.unload(big) == big.weight_size + big.work_size - small.work_size  # shrinks to the small one
    assert client.device_status().workspaces[0].size == small.work_size
    assert client.execute(small, {"x": x})["probs"].shape == (1, 10)


def test_large_model_streams_in_chunks(client):
    model = chain_model(width=1024, depth=6)  # 24 MiB, over gRPC's 4 MiB default message size
    m = client.load(model, name="big", max_batch=2)
    assert m.weight_size == 6 * 1024 * 1024 * 4
    x = np.random.default_rng(0).standard_normal((2, 1024)).astype(np.float32)
    np.testing.assert_allclose(client.execute(m, {"x": x})["y"], ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def _expect(fn, code, acl=None, match=""):
    with pytest.raises(MemserveError) as e:
        fn()
    assert e.value.code == code, e.value
    if acl:
        assert e.value.acl_code == acl, e.value
    assert match in e.value.message, e.value.message
    return e.value


def test_every_bad_input_gets_its_status_and_the_daemon_keeps_serving(client):
    m = client.load(EXAMPLE, name="ok", max_batch=2)
    x = np.ones((1, 64), np.float32)
    ref = client.execute(m, {"x": x})["probs"]
    unknown_op = graph_model([helper.make_node("Det", ["x"], ["y"], name="det")], [("x", F32, [2, 2])],
                             [("y", F32, [])])
    INV, = [grpc.StatusCode.INVALID_ARGUMENT]
    cases = [
        (lambda: client.load(b"not a model at all", name="g"), INV, 100013, "not an ONNX"),
        (lambda: client.load(mlp_bytes()[:3000], name="t"), INV, 100013, ""),
        (lambda: client.load(unknown_op, name="u"), INV, 100024, "'det' (Det)"),
        (lambda: client.load(with_external_data(mlp_bytes()), name="e"), INV, 100024, "external"),
        (lambda: client.load(EXAMPLE, name="w", workspace="bogus"), INV, 100000, "shared:<group>"),
        (lambda: client.load(EXAMPLE, name="ok"), grpc.StatusCode.ALREADY_EXISTS, None, "'ok'"),
        (lambda: client.execute("nope", {"x": x}), grpc.StatusCode.NOT_FOUND, 100011, "'nope'"),
        (lambda: client.unload(999), grpc.StatusCode.NOT_FOUND, 100011, "id 999"),
        (lambda: client.execute(m, {"y": x}), INV, 100017, "missing ['x']"),
        (lambda: client.execute(m, {"x": x.astype(np.float64)}), INV, 100017, "float32"),
        (lambda: client.execute(m, {"x": np.ones((1, 65), np.float32)}), INV, 100017, "shape"),
        (lambda: client.execute(m, {"x": np.ones((3, 64), np.float32)}), INV, 100017, "batch 3"),
    ]
    for fn, code, acl, match in cases:
        _expect(fn, code, acl, match)
        np.testing.assert_array_equal(client.execute(m, {"x": x})["probs"], ref)
    assert [mm.name for mm in client.list_models()] == ["ok"]


def test_malformed_messages_on_the_raw_stub(daemon, client):
    from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
    from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc

    with grpc.insecure_channel(daemon.target) as ch:
        stub = pb_grpc.MemserveStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Execute(pb.ExecuteRequest(inputs=[]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "by id or by name" in e.value.details()
        m = client.load(EXAMPLE, name="raw")
        bad = pb.Tensor(name="x", dtype=pb.FLOAT32, shape=[1, 64], data=b"\x00" * 10)
        with pytest.raises(grpc.RpcError) as e:
            stub.Execute(pb.ExecuteRequest(model=pb.ModelRef(id=m.id), inputs=[bad]))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "carries 10 bytes" in e.value.details()
        twice = [pb.LoadRequest(options=pb.LoadOptions(name="a")), pb.LoadRequest(options=pb.LoadOptions(name="b"))]
        with pytest.raises(grpc.RpcError) as e:
            stub.Load(iter(twice))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "once" in e.value.details()


def test_interrupted_upload_leaves_nothing(daemon, client):
    from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
    from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc

    data = mlp_bytes()

    def broken():
        yield pb.LoadRequest(options=pb.LoadOptions(name="half"))
        yield pb.LoadRequest(chunk=data[:40000])
        raise ConnectionError("client died mid-upload")

    with grpc.insecure_channel(daemon.target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.MemserveStub(ch).Load(broken())
        assert e.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN)
    assert client.list_models() == [] and client.device_status().used == 0
    assert client.load(data, name="half").name == "half"  # the name was not left behind


def test_limits(make_daemon):
    d = make_daemon("--device-memory", "200KiB", "--max-model-size", "1MiB", "--max-message-size", "1MiB",
                    "--max-load-memory", "64MiB")
    with d.client() as c:
        e = _expect(lambda: c.load(chain_model(width=256, depth=1), name="x"), grpc.StatusCode.RESOURCE_EXHAUSTED,
                    200000, "needs")
        assert "free" in e.message
        _expect(lambda: c.load(chain_model(width=1024, depth=1), name="y"), grpc.StatusCode.RESOURCE_EXHAUSTED,
                None, "--max-model-size")
        m = c.load(EXAMPLE, name="fits")
        huge = np.zeros((1, 300_000), np.float32)  # 1.2 MB message
        _expect(lambda: c.execute(m, {"x": huge}), grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert c.execute(m, {"x": np.ones((1, 64), np.float32)})["probs"].shape == (1, 10)
        assert c.list_models()[0].name == "fits"
        c.unload(m)
        assert c.device_status().used == 0


def test_health_and_reflection(daemon):
    with grpc.insecure_channel(daemon.target) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for service in ("", "memserve.v1.Memserve"):
            assert h.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
        r = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"memserve.v1.Memserve", "grpc.health.v1.Health"} <= names


def test_threads_flag_limits_blas_threads():
    import subprocess
    import sys

    code = ("from memserve.config import from_args; from memserve.server import Daemon; "
            "from threadpoolctl import threadpool_info; Daemon(from_args(['--port', '0', '--threads', '1'])); "
            "print(sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[1]", out.stderr


def test_blas_stays_single_threaded_and_threads_sizes_the_kernel_team():
    """BLAS always runs on one thread (all-core BLAS calls collapse next to a busy neighbour,
    bench/busy.py); --threads N gives the kernel team N - 1 helpers, --threads 0 one per usable core."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, sys, threading; from threadpoolctl import threadpool_info; "
            "from memserve.config import from_args; from memserve.server import Daemon; "
            "Daemon(from_args(['--port', '0', *sys.argv[1:]])); "
            "blas = sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}); "
            "helpers = [t for t in threading.enumerate() if t.name.startswith('kernel-helper')]; "
            "print(json.dumps([blas, len(helpers)]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMSERVE_")}

    def threads(*args: str) -> tuple[list[int], int]:
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        return tuple(json.loads(out.stdout.strip().splitlines()[-1]))

    assert threads() == ([1], 0)
    assert threads("--threads", "3") == ([1], 2)
    assert threads("--threads", "0") == ([1], len(os.sched_getaffinity(0)) - 1)
