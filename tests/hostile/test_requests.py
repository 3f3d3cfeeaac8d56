"""Malformed requests on both APIs and their streams: INVALID_ARGUMENT, an answer per request, a daemon
that keeps serving (issue 9, items 1 and 10)."""
from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import helper

from tritonclient.grpc import service_pb2 as kpb  # Triton's own v2 stubs: memserve's share their proto package
from tritonclient.grpc import service_pb2_grpc as kpb_grpc
from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc
from models import F32, ROOT, graph_model

EXAMPLE = ROOT / "examples" / "mlp.onnx"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _v2(name, shape, datatype="FP32", raw=None, **contents):
    r = kpb.ModelInferRequest(model_name="mlp", id=name)
    t = r.inputs.add(name="x", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(t.contents, field).extend(values)
    if raw is not None:
        r.raw_input_contents.append(raw)
    return r


# Every way a KServe v2 tensor can be malformed; each used to kill the stream reader or answer INTERNAL.
BAD_V2 = [
    _v2("negative-dims", [-1, -1], raw=b"\0" * 4),
    _v2("int8-out-of-range", [1], "INT8", int_contents=[1000]),
    _v2("uint8-negative", [1], "UINT8", uint_contents=[2**32 - 1]),
    _v2("huge-dims", [2**40, 2**40], raw=b"\0" * 4),
    _v2("overflowing-product", [2**62, 4, 0, 2**62], raw=b""),
    _v2("rank-100", [1] * 100, raw=b"\0" * 4),
    _v2("wrong-byte-count", [1, 64], raw=b"\0" * 3),
    _v2("wrong-value-count", [1, 64], fp32_contents=[1.0]),
    _v2("unknown-datatype", [1, 64], "FP8", raw=b"\0" * 64),
    _v2("fp16-typed", [1], "FP16"),
    _v2("wrong-dtype", [1, 64], "FP64", raw=b"\0" * 512),
]


def _native(rid, shape, dtype=pb.FLOAT32, data=b""):
    return pb.ExecuteRequest(id=rid, model=pb.ModelRef(name="mlp"),
                             inputs=[pb.Tensor(name="x", dtype=dtype, shape=shape, data=data)])


BAD_NATIVE = [
    _native("huge-dims", [2**40, 2**40], data=b"\0" * 4),
    _native("overflowing-product", [2**62, 4, 0, 2**62]),
    _native("rank-100", [1] * 100, data=b"\0" * 4),
    _native("unknown-dtype", [1, 64], dtype=999, data=b"\0" * 256),
    _native("wrong-byte-count", [1, 64], data=b"\0" * 3),
    pb.ExecuteRequest(id="twice", model=pb.ModelRef(name="mlp"),
                      inputs=[pb.Tensor(name="x", dtype=pb.FLOAT32, shape=[1, 64], data=b"\0" * 256)] * 2),
    pb.ExecuteRequest(id="priority-9", model=pb.ModelRef(name="mlp"), priority=9,
                      inputs=[pb.Tensor(name="x", dtype=pb.FLOAT32, shape=[1, 64], data=b"\0" * 256)]),
    pb.ExecuteRequest(id="timeout-2^64", model=pb.ModelRef(name="mlp"), timeout_us=2**64 - 1,
                      inputs=[pb.Tensor(name="x", dtype=pb.FLOAT32, shape=[1, 64], data=b"\0" * 256)]),
]
GOOD_NATIVE = _native("good", [1, 64], data=np.ones((1, 64), np.float32).tobytes())
GOOD_V2 = _v2("good", [1, 64], raw=np.ones((1, 64), np.float32).tobytes())


@pytest.fixture
def mlp(client):
    return client.load(EXAMPLE, name="mlp", max_batch=2)


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING


def _model_infer(ch, request):
    return kpb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=10)


def _execute(ch, request):
    return pb_grpc.MemserveStub(ch).Execute(request, timeout=10)


@pytest.mark.parametrize("call, request_", [(_model_infer, r) for r in BAD_V2] + [(_execute, r) for r in BAD_NATIVE],
                         ids=[f"v2-{r.id}" for r in BAD_V2] + [f"native-{r.id}" for r in BAD_NATIVE])
def test_a_malformed_request_is_invalid_argument_on_either_api(daemon, mlp, call, request_):
    with grpc.insecure_channel(daemon.target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            call(ch, request_)
    assert e.value.code() == INVALID, e.value.details()


def test_v2_stream_answers_every_malformed_request_with_its_id_and_keeps_reading(daemon, mlp):
    requests = [GOOD_V2, *BAD_V2, GOOD_V2]
    with grpc.insecure_channel(daemon.target) as ch:
        answers = list(kpb_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(iter(requests), timeout=30))
    assert sorted(a.infer_response.id for a in answers) == sorted(r.id for r in requests)
    for a in answers:
        assert bool(a.error_message) == (a.infer_response.id != "good"), a
        assert "internal" not in a.error_message.lower(), a.error_message


def test_native_stream_answers_every_malformed_request_with_its_id(daemon, mlp):
    requests = [GOOD_NATIVE, *BAD_NATIVE, GOOD_NATIVE]
    with grpc.insecure_channel(daemon.target) as ch:
        answers = list(pb_grpc.MemserveStub(ch).ExecuteStream(iter(requests), timeout=30))
    assert sorted(a.id for a in answers) == sorted(r.id for r in requests)
    for a in answers:
        assert a.HasField("error") == (a.id != "good"), a
        if a.HasField("error"):
            assert a.error.code == INVALID.value[0], a.error


def test_64_streams_of_malformed_requests_leave_the_daemon_serving(daemon, mlp):
    """The reproduction of item 1: 64 such streams used to hold every gRPC worker forever."""
    errors = []

    def stream():
        try:
            with grpc.insecure_channel(daemon.target) as ch:
                answers = list(kpb_grpc.GRPCInferenceServiceStub(ch).ModelStreamInfer(iter(BAD_V2[:2]), timeout=30))
            errors.extend(a for a in answers if not a.error_message)
        except grpc.RpcError as exc:  # past the open-stream limit: refused at once, not stuck
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                errors.append(exc)

    threads = [threading.Thread(target=stream) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert _serving(daemon.target)
    with grpc.insecure_channel(daemon.target) as ch:
        assert kpb_grpc.GRPCInferenceServiceStub(ch).ServerLive(kpb.ServerLiveRequest(), timeout=5).live


def test_open_streams_are_bounded_and_unary_calls_still_get_workers(make_daemon):
    d = make_daemon("--workers", "4")  # at most 2 open streams
    gate = threading.Event()
    probe = _native("probe", [1], data=b"")  # no such model: answered at once with an error

    def held_open():
        yield probe
        gate.wait(30)

    with grpc.insecure_channel(d.target) as ch:
        stub = pb_grpc.MemserveStub(ch)
        held = [stub.ExecuteStream(held_open(), timeout=30) for _ in range(2)]
        assert [next(call).id for call in held] == ["probe", "probe"]  # both streams are open on the daemon
        refused = stub.ExecuteStream(held_open(), timeout=30)
        with pytest.raises(grpc.RpcError) as e:
            next(refused)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--workers" in e.value.details()
        assert _serving(d.target)  # two workers stay free for unary calls
        gate.set()
        for call in held:
            assert list(call) == []
    with grpc.insecure_channel(d.target) as ch:  # the slots came back
        assert next(pb_grpc.MemserveStub(ch).ExecuteStream(iter([probe]), timeout=30)).id == "probe"


def test_a_stream_whose_client_reads_nothing_stops_reading_instead_of_buffering(daemon, client):
    """Answers owed are bounded: once they back up, the reader waits, and gRPC flow control pushes back
    on the sender instead of the daemon buffering every request and answer."""
    model = graph_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, [1, 16384])], [("y", F32, [1, 16384])])
    client.load(model, name="echo")
    request = pb.ExecuteRequest(id="r", model=pb.ModelRef(name="echo"), inputs=[
        pb.Tensor(name="x", dtype=pb.FLOAT32, shape=[1, 16384], data=b"\0" * 65536)])
    sent = []

    def requests():
        for k in range(3000):  # 192 MiB each way
            sent.append(k)
            yield request

    with grpc.insecure_channel(daemon.target) as ch:
        call = pb_grpc.MemserveStub(ch).ExecuteStream(requests(), timeout=60)
        assert next(call).id == "r"  # read one answer, then none
        threading.Event().wait(3)
        assert len(sent) < 1500  # the daemon stopped reading long before the end
        call.cancel()
    assert _serving(daemon.target)


def test_scalar_inputs_round_trip(daemon, client):
    """A 0-d input reaches the model as a 0-d array on both APIs."""
    model = graph_model([helper.make_node("Mul", ["s", "s"], ["y"])], [("s", F32, [])], [("y", F32, [])])
    m = client.load(model, name="scalar")
    assert m.inputs[0].shape == ()
    y = client.execute(m, {"s": np.float32(3.0)})["y"]
    assert y.shape == () and y == 9.0
    r = kpb.ModelInferRequest(model_name="scalar")
    r.inputs.add(name="s", datatype="FP32", shape=[])
    r.raw_input_contents.append(np.float32(4.0).tobytes())
    with grpc.insecure_channel(daemon.target) as ch:
        out = kpb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(r, timeout=10)
    assert list(out.outputs[0].shape) == [] and np.frombuffer(out.raw_output_contents[0], np.float32)[0] == 16.0


def test_a_kernel_failing_on_request_data_is_invalid_argument(client):
    """Gather with an index from the request out of range: the request's fault, not INTERNAL."""
    model = graph_model([helper.make_node("Gather", ["data", "i"], ["y"], name="pick")],
                        [("data", F32, [4]), ("i", 7, [1])], [("y", F32, [1])])
    m = client.load(model, name="gather")
    from memserve_client import MemserveError

    with pytest.raises(MemserveError) as e:
        client.execute(m, {"data": np.ones(4, np.float32), "i": np.array([99], np.int64)})
    assert e.value.code == INVALID and "'pick'" in e.value.message
    assert client.execute(m, {"data": np.arange(4, dtype=np.float32), "i": np.array([2], np.int64)})["y"][0] == 2


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))


def test_typed_contents_are_checked_against_the_model_before_they_are_decoded(daemon, mlp):
    """A ModelInfer of 8M one-byte varints swelled ~30x while numpy decoded them through Python objects,
    before the dtype was even checked; three such calls at once crashed the daemon."""
    r = kpb.ModelInferRequest(model_name="mlp", id="swell")
    t = r.inputs.add(name="x", datatype="INT64", shape=[8_000_000])
    t.contents.int64_contents.extend(np.zeros(8_000_000, np.int64))
    before = _peak_rss(daemon.proc.pid)
    with grpc.insecure_channel(daemon.target) as ch:
        stub = kpb_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(r, timeout=60)
        assert e.value.code() == INVALID and "must be FP32" in e.value.details()
        t.datatype = "FP32"
        t.contents.ClearField("int64_contents")
        t.contents.fp32_contents.extend(np.zeros(8_000_000, np.float32))
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(r, timeout=60)
        assert e.value.code() == INVALID and "at most 128" in e.value.details()  # [2, 64] at max_batch 2
    assert _peak_rss(daemon.proc.pid) - before < 200 << 20  # protobuf's own copy, not numpy's objects


def test_a_status_message_never_outgrows_its_header(daemon):
    """Errors repeat the names a client sends; a 100,000-character one used to turn NOT_FOUND into
    RESOURCE_EXHAUSTED (gRPC's 16 KiB header limit)."""
    with grpc.insecure_channel(daemon.target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            kpb_grpc.GRPCInferenceServiceStub(ch).ModelMetadata(
                kpb.ModelMetadataRequest(name="n" * 100_000, version="v" * 100_000), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and len(e.value.details()) <= 2048
