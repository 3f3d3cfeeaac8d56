"""The Open Inference Protocol over HTTP/REST: tritonclient.http and plain JSON (curl-style) against memserved."""
import base64
import datetime
import ipaddress
import json
import signal
import ssl
import threading
import urllib.request

import numpy as np
import pytest
from onnx import TensorProto, helper

th = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from conftest import wait_for  # noqa: E402
from models import F32, ROOT, graph_model, ort_run  # noqa: E402
from rest_client import binary_request, http, infer_json  # noqa: E402

EXAMPLE = ROOT / "examples" / "mlp.onnx"
I8, BOOL, F16, F64 = TensorProto.INT8, TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.DOUBLE


def typed_model() -> bytes:
    """a INT8 [N,3], b BOOL [N,3], h FP16 [2] -> o1 = where(b, a, -a) INT8 [N,3], o2 = -h FP16 [2]."""
    nodes = [helper.make_node("Neg", ["a"], ["na"]), helper.make_node("Where", ["b", "a", "na"], ["o1"]),
             helper.make_node("Neg", ["h"], ["o2"])]
    return graph_model(nodes, [("a", I8, ["N", 3]), ("b", BOOL, ["N", 3]), ("h", F16, [2])],
                       [("o1", I8, ["N", 3]), ("o2", F16, [2])])


def neg_model() -> bytes:
    return graph_model([helper.make_node("Neg", ["x"], ["y"])], [("x", F32, [4])], [("y", F32, [4])])


@pytest.fixture
def rest(daemon, client):
    c = th.InferenceServerClient(daemon.http)
    yield c
    c.close()


def upload(rest, name="mlp", config=None, data=None):
    rest.load_model(name, config=json.dumps(config or {"max_batch_size": 8}),
                    files={"file:1/model.onnx": data or EXAMPLE.read_bytes()})


def infer(rest, name, x, binary=True, **kw):
    inp = th.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return rest.infer(name, [inp], outputs=[th.InferRequestedOutput("probs", binary_data=binary)], **kw)


def test_health_and_server_metadata(daemon, rest):
    assert rest.is_server_live() and rest.is_server_ready()
    meta = rest.get_server_metadata()
    assert meta["name"] == "memserve" and {"model_repository", "statistics"} <= set(meta["extensions"])
    for path in ("/v2/health/live", "/v2/health/ready"):
        r = http(daemon.http, "GET", path)
        assert (r.status, r.body) == (200, b"")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_load_describe_infer_and_unload_with_tritonclient(rest, client, binary):
    upload(rest, config={"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 500}})
    assert rest.is_model_ready("mlp") and rest.is_model_ready("mlp", "1")
    meta = rest.get_model_metadata("mlp")
    assert meta["versions"] == ["1"] and meta["platform"] == "memserve_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("x", "FP32", [-1, 64])]
    cfg = rest.get_model_config("mlp")
    assert cfg["max_batch_size"] == 8 and cfg["input"][0]["dims"] == [64] and cfg["output"][0]["dims"] == [10]
    assert cfg["input"][0]["data_type"] == "TYPE_FP32"
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    result = infer(rest, "mlp", x, binary=binary, request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    np.testing.assert_allclose(result.as_numpy("probs"), ort_run(EXAMPLE.read_bytes(), {"x": x})[0], rtol=1e-5)
    assert [m.name for m in client.list_models()] == ["mlp"]  # the native API sees it too
    rest.unload_model("mlp")
    assert not rest.is_model_ready("mlp") and client.device_status().used == 0


def test_outputs_are_binary_when_tritonclient_lists_none_and_json_for_plain_requests(daemon, rest):
    upload(rest)
    x = np.ones((2, 64), np.float32)
    inp = th.InferInput("x", [2, 64], "FP32")
    inp.set_data_from_numpy(x)
    r = rest.infer("mlp", [inp])  # no outputs: tritonclient asks binary_data_output
    out = r.get_response()["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 2 * 10 * 4 and r.as_numpy("probs").shape == (2, 10)
    plain = http(daemon.http, "POST", "/v2/models/mlp/infer", infer_json("x", x))
    assert plain.status == 200 and plain.headers["content-type"].startswith("application/json")
    assert "inference-header-content-length" not in plain.headers
    (out,) = plain.json()["outputs"]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]), r.as_numpy("probs"), rtol=1e-6)


def test_plain_json_flat_or_nested_with_parameters(daemon, client):
    m = client.load(EXAMPLE, name="mlp", max_batch=4)
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    want = client.execute(m, {"x": x})["probs"]
    for nested in (False, True):
        body = infer_json("x", x, nested=nested, id="j1", parameters={"priority": 1, "timeout": 10_000_000},
                          outputs=[{"name": "probs"}])
        r = http(daemon.http, "POST", "/v2/models/mlp/versions/1/infer", body)
        assert r.status == 200, r.body
        reply = r.json()
        assert (reply["model_name"], reply["model_version"], reply["id"]) == ("mlp", "1", "j1")
        (out,) = reply["outputs"]
        assert (out["name"], out["datatype"], out["shape"]) == ("probs", "FP32", [2, 10])
        np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(2, 10), want, rtol=1e-6)


def test_binary_data_extension_by_hand_with_typed_inputs_and_fp16(daemon, client):
    client.load(typed_model(), name="typed", max_batch=2)
    a = np.array([[1, -2, 3], [4, 5, -6]], np.int8)
    b = np.array([[True, False, True], [False, True, True]])
    h = np.array([1.5, -2.25], np.float16)
    header = {"inputs": [{"name": "a", "datatype": "INT8", "shape": [2, 3], "data": a.tolist()},
                         {"name": "h", "datatype": "FP16", "shape": [2], "parameters": {"binary_data_size": 4}},
                         {"name": "b", "datatype": "BOOL", "shape": [2, 3], "parameters": {"binary_data_size": 6}}],
              "outputs": [{"name": "o1", "parameters": {"binary_data": False}},
                          {"name": "o2", "parameters": {"binary_data": True}}]}
    body, headers = binary_request(header, h.tobytes(), b.tobytes())
    r = http(daemon.http, "POST", "/v2/models/typed/infer", body, headers)
    assert r.status == 200, r.body
    assert r.headers["content-type"] == "application/octet-stream"
    reply = r.json()
    o1, o2 = reply["outputs"]
    assert o1["data"] == np.where(b, a, -a).reshape(-1).tolist() and o1["datatype"] == "INT8"
    assert o2["parameters"]["binary_data_size"] == 4 and o2["datatype"] == "FP16"
    np.testing.assert_array_equal(np.frombuffer(r.binary(), np.float16), -h)
    # FP16 cannot be JSON, either way (as Triton)
    header["outputs"][1]["parameters"]["binary_data"] = False
    body, headers = binary_request(header, h.tobytes(), b.tobytes())
    r = http(daemon.http, "POST", "/v2/models/typed/infer", body, headers)
    assert r.status == 400 and "FP16" in r.error


def test_nan_and_infinity_travel_as_triton_writes_them(daemon, client):
    client.load(neg_model(), name="neg")
    body = '{"inputs":[{"name":"x","datatype":"FP32","shape":[4],"data":[NaN,Infinity,-Infinity,1.5]}]}'
    r = http(daemon.http, "POST", "/v2/models/neg/infer", body)
    assert r.status == 200, r.body
    assert b'"data":[NaN,-Infinity,Infinity,-1.5]' in r.body
    y = r.json()["outputs"][0]["data"]
    assert np.isnan(y[0]) and y[1:] == [-np.inf, np.inf, -1.5]


def test_statistics_over_rest(daemon, rest):
    upload(rest)
    for _ in range(3):
        infer(rest, "mlp", np.ones((2, 64), np.float32))
    (stats,) = rest.get_inference_statistics("mlp")["model_stats"]
    assert stats["name"] == "mlp" and stats["version"] == "1"
    assert stats["inference_stats"]["success"]["count"] == 3 and stats["inference_count"] == 6
    assert isinstance(stats["inference_stats"]["compute_infer"]["ns"], int)  # numbers, not protobuf's strings
    assert [s["name"] for s in rest.get_inference_statistics()["model_stats"]] == ["mlp"]
    assert rest.get_inference_statistics("mlp", "1")["model_stats"][0]["execution_count"] == 3


def test_a_model_loaded_over_grpc_is_served_over_rest_and_back(daemon, rest, client):
    m = client.load(EXAMPLE, name="native", max_batch=4)
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    np.testing.assert_allclose(infer(rest, "native", x).as_numpy("probs"), client.execute(m, {"x": x})["probs"],
                               rtol=1e-6)
    upload(rest, name="viahttp")
    (loaded,) = [d for d in client.list_models() if d.name == "viahttp"]
    assert client.execute(loaded.id, {"x": x})["probs"].shape == (4, 10)
    client.unload(loaded.id)
    assert not rest.is_model_ready("viahttp")
    index = rest.get_model_repository_index()
    assert [(i["name"], i["state"]) for i in index] == [("native", "READY")]


def test_errors_are_json_with_tritons_statuses(daemon, client):
    client.load(EXAMPLE, name="mlp")
    cases = [("GET", "/v2/models/nope", 404), ("GET", "/v2/models/mlp/versions/2", 404),
             ("GET", "/v2/models/nope/config", 404), ("GET", "/v2/models/nope/stats", 404),
             ("POST", "/v2/models/nope/infer", 404), ("GET", "/v2/models/nope/ready", 400),
             ("GET", "/v2/models/mlp/versions/2/ready", 400), ("POST", "/v2/models/mlp", 405),
             ("GET", "/v2/models/mlp/infer", 405), ("GET", "/v2/nothing/here", 404),
             ("GET", "/v2/systemsharedmemory/status", 501), ("POST", "/v2/repository/models/nope/unload", 404)]
    for method, path, status in cases:
        r = http(daemon.http, method, path, b"{}" if method == "POST" else None)
        assert r.status == status, (method, path, r.status, r.body)
        assert r.headers["content-type"].startswith("application/json") and r.error, (path, r.body)
    assert http(daemon.http, "GET", "/v2/models/mlp/versions/1").json()["name"] == "mlp"


def test_repository_load_takes_base64_files_and_refuses_bad_ones(daemon, client):
    model = base64.b64encode(EXAMPLE.read_bytes()).decode()
    r = http(daemon.http, "POST", "/v2/repository/models/b64/load",
             {"parameters": {"config": json.dumps({"max_batch_size": 2}), "file:1/model.onnx": model}})
    assert r.status == 200, r.body
    assert client.describe("b64").max_batch == 2
    for params in ({"file:1/model.onnx": "not base64!"}, {"config": 7}, {"file:1/model.onnx": 1},
                   {"config": "{not json", "file:1/model.onnx": model},
                   {"file:1/a.onnx": model, "file:1/b.onnx": model}):
        r = http(daemon.http, "POST", "/v2/repository/models/b64/load", {"parameters": params})
        assert r.status == 400 and r.error, (params, r.body)
    assert http(daemon.http, "POST", "/v2/repository/models/b64/load", b"{").status == 400
    r = http(daemon.http, "POST", "/v2/repository/models/b64/load", b"")  # no file, no --model-repository
    assert r.status == 400 and "file:1/model.onnx" in r.error
    assert [m.name for m in client.list_models()] == ["b64"]


def test_admin_token_guards_the_repository_and_optionally_inference(make_daemon, tmp_path):
    token = "rest-s3cret-token"
    (tmp_path / "token").write_text(token + "\n")
    d = make_daemon("--admin-token-file", str(tmp_path / "token"))
    admin, wrong = {"Authorization": f"Bearer {token}"}, {"Authorization": "Bearer nope"}
    body = {"parameters": {"file:1/model.onnx": base64.b64encode(EXAMPLE.read_bytes()).decode()}}
    for headers, why in (({}, "missing authorization header"), (wrong, "does not match")):
        for path in ("/v2/repository/index", "/v2/repository/models/m/load", "/v2/repository/models/m/unload"):
            r = http(d.http, "POST", path, body, headers)
            assert r.status == 401 and why in r.error and r.headers["www-authenticate"] == "Bearer", (path, r.body)
    assert http(d.http, "POST", "/v2/repository/models/m/load", body, admin).status == 200
    x = np.ones((1, 64), np.float32)
    assert http(d.http, "POST", "/v2/models/m/infer", infer_json("x", x)).status == 200  # inference stays open
    assert http(d.http, "GET", "/v2/models/m").status == 200
    assert http(d.http, "POST", "/v2/repository/index", b"", admin).json()[0]["name"] == "m"
    assert http(d.http, "POST", "/v2/repository/models/m/unload", b"", admin).status == 200
    c = th.InferenceServerClient(d.http)
    with pytest.raises(InferenceServerException) as e:
        c.load_model("m", files={"file:1/model.onnx": EXAMPLE.read_bytes()})
    assert e.value.status() == "401"
    c.load_model("m", headers=admin, files={"file:1/model.onnx": EXAMPLE.read_bytes()})
    guarded = make_daemon("--admin-token-file", str(tmp_path / "token"), "--require-token-for-execute")
    assert http(guarded.http, "POST", "/v2/repository/models/m/load", body, admin).status == 200
    assert http(guarded.http, "POST", "/v2/models/m/infer", infer_json("x", x)).status == 401
    assert http(guarded.http, "POST", "/v2/models/m/infer", infer_json("x", x), admin).status == 200
    assert token not in d.stop() + guarded.stop()  # never logged


def test_http_port_minus_one_serves_no_rest(make_daemon):
    d = make_daemon("--http-port", "-1")
    assert d.http is None and d.alive()
    with d.client() as c:
        assert c.list_models() == []


def test_drain_turns_ready_off_and_answers_the_requests_in_flight(make_daemon):
    """SIGTERM: ready answers 400 at once, new requests 503, and the requests already queued get their answers."""
    d = make_daemon("--shutdown-grace", "30")
    with d.client() as c:  # one lane: "slow" holds it 5 s gathering a batch, "other" queues behind it
        c.load(EXAMPLE, name="slow", workspace="shared:g", max_batch=8, max_queue_delay_us=5_000_000,
               preferred_batch_sizes=(8,))
        c.load(EXAMPLE, name="other", workspace="shared:g", max_batch=8)
    x = np.ones((1, 64), np.float32)
    answers, threads = [], []

    def send(model):
        t = threading.Thread(target=lambda: answers.append(
            (model, http(d.http, "POST", f"/v2/models/{model}/infer", infer_json("x", x), timeout=60).status)))
        t.start()
        threads.append(t)
        return t

    send("slow")

    def other_queued() -> bool:  # "other" runs at once if it reaches the lane before "slow": send another
        t = send("other")
        return wait_for(lambda: _queued(d) >= 1 or not t.is_alive(), timeout=30) and _queued(d) >= 1

    assert wait_for(other_queued, timeout=30)
    d.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: _status(d, "GET", "/v2/health/ready") == 400, timeout=10)
    assert _status(d, "GET", "/v2/health/live") == 200
    assert wait_for(lambda: _status(d, "POST", "/v2/models/other/infer", infer_json("x", x)) == 503, timeout=30)
    for t in threads:
        t.join(60)
    assert {status for _, status in answers} == {200} and len(answers) == len(threads), answers
    assert d.proc.wait(60) == 0


def _status(d, method, path, body=None) -> int | None:
    try:
        return http(d.http, method, path, body, timeout=10).status
    except OSError:
        return None


def _queued(d) -> int:
    """Requests waiting in the daemon's queues, from its metrics."""
    with urllib.request.urlopen(f"http://{d.metrics}/metrics", timeout=10) as r:
        text = r.read().decode()
    return int(sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("memserve_queue_depth")))


def test_rest_speaks_tls_with_the_grpc_certificate(make_daemon, tmp_path):
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "memserve")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "c.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    d = make_daemon("--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "c.key"))
    context = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
    with urllib.request.urlopen(f"https://{d.http}/v2/health/ready", context=context, timeout=10) as r:
        assert r.status == 200
    with pytest.raises(OSError):  # plain HTTP gets no answer from a TLS port
        urllib.request.urlopen(f"http://{d.http}/v2/health/ready", timeout=10)
