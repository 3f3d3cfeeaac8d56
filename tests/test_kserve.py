"""The Open Inference Protocol through the real tritonclient, against memserved."""
import json
import queue

import grpc
import numpy as np
import pytest

tritonclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import InferenceServerClient, InferInput, InferRequestedOutput  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402  (tritonclient's own stubs)
from tritonclient.utils import InferenceServerException  # noqa: E402

from models import ROOT, ort_run  # noqa: E402

EXAMPLE = ROOT / "examples" / "mlp.onnx"
CONFIG = {"max_batch_size": 8, "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
          "dynamic_batching": {"max_queue_delay_microseconds": 500, "preferred_batch_size": [4]},
          "parameters": {"workspace": {"string_value": "shared:kserve"}}}


@pytest.fixture
def triton(daemon, client):
    c = InferenceServerClient(daemon.target)
    yield c
    c.close()


def upload(triton, name="mlp", config=None):
    triton.load_model(name, config=json.dumps(config or {"max_batch_size": 8}),
                      files={"file:1/model.onnx": EXAMPLE.read_bytes()})


def infer(triton, name, x, **kw):
    inp = InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return triton.infer(name, [inp], outputs=[InferRequestedOutput("probs")], **kw)


def test_server_health_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta.name == "memserve" and "model_repository" in meta.extensions and "statistics" in meta.extensions


def test_load_with_config_and_files_then_describe_infer_and_unload(triton, client):
    upload(triton, config=dict(CONFIG, instance_group=[{"count": 1}]))
    assert triton.is_model_ready("mlp")
    meta = triton.get_model_metadata("mlp")
    assert meta.versions == ["1"] and [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 64])]
    cfg = triton.get_model_config("mlp").config
    assert cfg.max_batch_size == 8 and list(cfg.input[0].dims) == [64] and list(cfg.output[0].dims) == [10]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4]
    assert cfg.parameters["workspace"].string_value == "shared:kserve"
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    result = infer(triton, "mlp", x, request_id="req-7")
    assert result.get_response().id == "req-7"
    np.testing.assert_allclose(result.as_numpy("probs"), ort_run(EXAMPLE.read_bytes(), {"x": x})[0], rtol=1e-5)
    assert [m.name for m in client.list_models()] == ["mlp"]  # the native API sees it too
    triton.unload_model("mlp")
    assert not triton.is_model_ready("mlp") and client.device_status().used == 0


def test_instance_group_count_becomes_instances(triton, client):
    upload(triton, config={"max_batch_size": 4, "instance_group": [{"count": 3, "kind": "KIND_CPU"}]})
    model = client.describe("mlp")
    assert len(model.workspaces) == 3
    assert triton.get_model_config("mlp").config.instance_group[0].count == 3


def test_typed_contents_are_answered_typed(daemon, client):
    m = client.load(EXAMPLE, name="typed", max_batch=2)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    req = service_pb2.ModelInferRequest(model_name="typed")
    t = req.inputs.add(name="x", datatype="FP32", shape=[2, 64])
    t.contents.fp32_contents.extend(x.reshape(-1).tolist())
    with grpc.insecure_channel(daemon.target) as ch:
        resp = service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req)
    assert len(resp.raw_output_contents) == 0
    got = np.asarray(resp.outputs[0].contents.fp32_contents, np.float32).reshape(resp.outputs[0].shape)
    np.testing.assert_array_equal(got, client.execute(m, {"x": x})["probs"])


def test_async_and_stream_infer(triton):
    upload(triton)
    x = np.random.default_rng(2).standard_normal((1, 64)).astype(np.float32)
    want = infer(triton, "mlp", x).as_numpy("probs")
    done = queue.Queue()
    inp = InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    triton.async_infer("mlp", [inp], callback=lambda result, error: done.put((result, error)))
    result, error = done.get(timeout=30)
    assert error is None and np.array_equal(result.as_numpy("probs"), want)
    answers = queue.Queue()
    triton.start_stream(callback=lambda result, error: answers.put((result, error)))
    for k in range(5):
        triton.async_stream_infer("mlp", [inp], request_id=f"s{k}")
    got = [answers.get(timeout=30) for _ in range(5)]
    triton.stop_stream()
    assert all(e is None for _, e in got)
    assert sorted(r.get_response().id for r, _ in got) == [f"s{k}" for k in range(5)]
    assert all(np.array_equal(r.as_numpy("probs"), want) for r, _ in got)


def test_statistics_and_repository_index(triton, client):
    upload(triton)
    x = np.ones((2, 64), np.float32)
    for _ in range(3):
        infer(triton, "mlp", x)
    stats = triton.get_inference_statistics("mlp").model_stats[0]
    assert stats.inference_stats.success.count == 3 and stats.inference_count == 6 and stats.execution_count == 3
    # perf_analyzer aborts unless the three compute counts agree (one per request, as Triton counts them).
    s = stats.inference_stats
    assert s.compute_input.count == s.compute_infer.count == s.compute_output.count == 3
    assert s.compute_infer.ns > 0 and s.queue.count == 3
    model = client.describe("mlp")
    assert sorted(u.byte_size for u in stats.memory_usage) == sorted([model.weight_size, model.work_size])
    index = triton.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [("mlp", "1", "READY")]


def test_native_and_v2_see_the_same_models(triton, client):
    m = client.load(EXAMPLE, name="native", max_batch=2)
    x = np.ones((1, 64), np.float32)
    np.testing.assert_array_equal(infer(triton, "native", x).as_numpy("probs"), client.execute(m, {"x": x})["probs"])
    triton.unload_model("native")
    assert client.list_models() == []
    upload(triton, name="v2")
    np.testing.assert_array_equal(client.execute("v2", {"x": x})["probs"], infer(triton, "v2", x).as_numpy("probs"))
    client.unload("v2")
    assert not triton.is_model_ready("v2")


def expect(status, fn):
    with pytest.raises(InferenceServerException) as e:
        fn()
    assert e.value.status() == f"StatusCode.{status}", (e.value.status(), e.value.message())
    return e.value.message()


def test_errors_have_their_status(triton):
    upload(triton)
    x = np.ones((1, 64), np.float32)
    assert "no model" in expect("NOT_FOUND", lambda: infer(triton, "nope", x))
    wrong_type = InferInput("x", [1, 64], "FP64")
    wrong_type.set_data_from_numpy(x.astype(np.float64))
    assert "must be FP32, got FP64" in expect("INVALID_ARGUMENT", lambda: triton.infer("mlp", [wrong_type]))
    assert "shape" in expect("INVALID_ARGUMENT", lambda: infer(triton, "mlp", np.ones((1, 63), np.float32)))
    assert "JSON" in expect("INVALID_ARGUMENT", lambda: triton.load_model(
        "bad", config="{not json", files={"file:1/model.onnx": EXAMPLE.read_bytes()}))
    assert "shared memory" in expect("UNIMPLEMENTED", lambda: triton.get_system_shared_memory_status())
    np.testing.assert_array_equal(infer(triton, "mlp", x).as_numpy("probs").shape, (1, 10))  # still serving


def test_model_repository_loads_by_name(make_daemon, tmp_path):
    (tmp_path / "clf" / "1").mkdir(parents=True)
    (tmp_path / "clf" / "1" / "model.onnx").write_bytes(EXAMPLE.read_bytes())
    (tmp_path / "clf" / "config.pbtxt").write_text('name: "clf"\nmax_batch_size: 4\nbackend: "onnxruntime"\n')
    d = make_daemon("--model-repository", str(tmp_path))
    triton = InferenceServerClient(d.target)
    try:
        # Loaded at start, as every replica behind a Service must serve the same models.
        assert [(m.name, m.state) for m in triton.get_model_repository_index().models] == [("clf", "READY")]
        triton.unload_model("clf")
        assert [(m.name, m.state) for m in triton.get_model_repository_index().models] == [("clf", "UNAVAILABLE")]
        triton.load_model("clf")
        assert triton.is_model_ready("clf") and triton.get_model_config("clf").config.max_batch_size == 4
        assert infer(triton, "clf", np.ones((4, 64), np.float32)).as_numpy("probs").shape == (4, 10)
        assert "has no" in expect("NOT_FOUND", lambda: triton.load_model("missing"))
    finally:
        triton.close()


def test_bytes_are_refused_and_timeout_parameter_drops_waiting_requests(daemon, triton, client):
    upload(triton)
    strings = InferInput("x", [1, 64], "BYTES")
    strings.set_data_from_numpy(np.array([[b"a"] * 64], dtype=np.object_))
    assert "BYTES" in expect("INVALID_ARGUMENT", lambda: triton.infer("mlp", [strings]))
    from models import chain_model
    from concurrent.futures import ThreadPoolExecutor

    slow = client.load(chain_model(width=1024, depth=8), name="slow", max_batch=512)
    big = np.ones((512, 1024), np.float32)
    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(lambda: daemon.client().execute(slow, {"x": big})) for _ in range(4)]
        from conftest import wait_for

        assert wait_for(lambda: any(w.queued >= 2 for w in client.device_status().workspaces))
        inp = InferInput("x", [1, 1024], "FP32")
        inp.set_data_from_numpy(big[:1])
        expect("DEADLINE_EXCEEDED", lambda: triton.infer("slow", [inp], timeout=1000, priority=1))
        for f in busy:
            f.result()
