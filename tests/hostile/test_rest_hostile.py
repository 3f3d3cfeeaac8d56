"""Hostile HTTP/REST requests: every malformed body or header is a 4xx with a JSON message, checked before
the memory it implies is taken, and the daemon keeps serving (docs/security.md)."""
from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from conftest import wait_for
from models import ROOT, graph_model
from rest_client import binary_request, http

EXAMPLE = ROOT / "examples" / "mlp.onnx"
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
ONE = np.ones((1, 64), np.float32)


def _typed() -> bytes:
    """a INT8 [N,3], b BOOL [N,3], u UINT8 [N,3] -> o1 = where(b, a, -a), o2 = u."""
    nodes = [helper.make_node("Neg", ["a"], ["na"]), helper.make_node("Where", ["b", "a", "na"], ["o1"]),
             helper.make_node("Identity", ["u"], ["o2"])]
    return graph_model(nodes, [("a", TensorProto.INT8, ["N", 3]), ("b", TensorProto.BOOL, ["N", 3]),
                               ("u", TensorProto.UINT8, ["N", 3])],
                       [("o1", TensorProto.INT8, ["N", 3]), ("o2", TensorProto.UINT8, ["N", 3])])


@pytest.fixture
def models(client):
    client.load(EXAMPLE, name="mlp", max_batch=2)
    client.load(_typed(), name="typed", max_batch=2)


def _x(**fields) -> dict:
    """The one input of mlp, [1, 64] FP32, with `fields` replaced."""
    return {"name": "x", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64, **fields}


def _typed_inputs(a=None, b=None, u=None) -> dict:
    return {"inputs": [{"name": "a", "datatype": "INT8", "shape": [1, 3], "data": a or [1, 2, 3]},
                       {"name": "b", "datatype": "BOOL", "shape": [1, 3], "data": b or [True, False, True]},
                       {"name": "u", "datatype": "UINT8", "shape": [1, 3], "data": u or [1, 2, 3]}]}


# (id, model, body) -> 400 with a message; each one a way a JSON request can be malformed
BAD_JSON = [
    ("not-json", "mlp", b"{"),
    ("truncated", "mlp", b'{"inputs": [}'),
    ("invalid-utf8", "mlp", b'{"inputs": "\xff\xfe"}'),
    ("array", "mlp", b"[]"), ("string", "mlp", b'"x"'), ("number", "mlp", b"1"), ("null", "mlp", b"null"),
    ("empty-body", "mlp", b""),
    ("no-inputs", "mlp", {}), ("inputs-object", "mlp", {"inputs": {"x": 1}}),
    ("input-string", "mlp", {"inputs": ["x"]}),
    ("no-name", "mlp", {"inputs": [{"datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}),
    ("no-shape", "mlp", {"inputs": [{"name": "x", "datatype": "FP32", "data": [0.5] * 64}]}),
    ("negative-dim", "mlp", {"inputs": [_x(shape=[-1, 64])]}),
    ("bool-dim", "mlp", {"inputs": [_x(shape=[True, 64])]}),
    ("float-dim", "mlp", {"inputs": [_x(shape=[1.0, 64])]}),
    ("string-dim", "mlp", {"inputs": [_x(shape=["1", 64])]}),
    ("huge-shape", "mlp", {"inputs": [_x(shape=[2**31, 2**31], data=[0.5])]}),
    ("overflowing-shape", "mlp", {"inputs": [_x(shape=[2**62, 4, 0, 2**62], data=[])]}),
    ("rank-100", "mlp", {"inputs": [_x(shape=[1] * 100, data=[0.5])]}),
    ("too-many-rows", "mlp", {"inputs": [_x(shape=[3, 64], data=[0.5] * 192)]}),
    ("unknown-datatype", "mlp", {"inputs": [_x(datatype="FP8")]}),
    ("bytes-datatype", "mlp", {"inputs": [_x(datatype="BYTES", data=["a"] * 64)]}),
    ("wrong-datatype", "mlp", {"inputs": [_x(datatype="FP64")]}),
    ("unknown-input", "mlp", {"inputs": [_x(name="y")]}),
    ("duplicate-input", "mlp", {"inputs": [_x(), _x()]}),
    ("too-few-values", "mlp", {"inputs": [_x(data=[0.5] * 63)]}),
    ("too-many-values", "mlp", {"inputs": [_x(data=[0.5] * 65)]}),
    ("ragged", "mlp", {"inputs": [_x(shape=[2, 64], data=[[0.5] * 64, [0.5] * 63 + [[0.5]]])]}),
    ("ragged-rows", "mlp", {"inputs": [_x(shape=[2, 64], data=[[0.5] * 65, [0.5] * 63])]}),
    ("deeper-than-rank", "mlp", {"inputs": [_x(data=[[[0.5] * 64]])]}),
    ("transposed", "mlp", {"inputs": [_x(shape=[2, 64], data=[[0.5, 0.5]] * 64)]}),
    ("lists-beside-values", "mlp", {"inputs": [_x(data=[[0.5] * 32, *[0.5] * 32])]}),
    ("data-not-list", "mlp", {"inputs": [_x(data=0.5)]}),
    ("string-values", "mlp", {"inputs": [_x(data=["0.5"] * 64)]}),
    ("bool-values", "mlp", {"inputs": [_x(data=[True] * 64)]}),
    ("null-values", "mlp", {"inputs": [_x(data=[None] * 64)]}),
    ("object-values", "mlp", {"inputs": [_x(data=[{}] * 64)]}),
    ("int-beyond-float", "mlp", b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[1' + b"0" * 400
     + b"]}]}"),
    ("inf-token", "mlp", b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":[Inf]}]}'),
    ("deep-nesting", "mlp", b'{"inputs":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("json-bomb", "mlp", b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,64],"data":[' + b"[]," * 200_000
     + b"0]}]}"),
    ("data-and-binary", "mlp", {"inputs": [_x(parameters={"binary_data_size": 256})]}),
    ("neither-data-nor-binary", "mlp", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64]}]}),
    ("shared-memory", "mlp", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                                          "parameters": {"shared_memory_region": "r"}}]}),
    ("fp16-json", "mlp", {"inputs": [_x(datatype="FP16")]}),
    ("int8-out-of-range", "typed", _typed_inputs(a=[1000, 0, 0])),
    ("uint8-negative", "typed", _typed_inputs(u=[-1, 0, 0])),
    ("float-in-int", "typed", _typed_inputs(a=[1.5, 0, 0])),
    ("whole-float-in-int", "typed", _typed_inputs(a=[1.0, 0, 0])),
    ("nan-in-int", "typed", b'{"inputs":[{"name":"a","datatype":"INT8","shape":[1,1],"data":[NaN]}]}'),
    ("int-in-bool", "typed", _typed_inputs(b=[1, 0, 1])),
    ("int-beyond-int64", "typed", _typed_inputs(a=[2**70, 0, 0])),
    ("unknown-output", "mlp", {"inputs": [_x()], "outputs": [{"name": "nope"}]}),
    ("outputs-object", "mlp", {"inputs": [_x()], "outputs": {"name": "probs"}}),
    ("output-no-name", "mlp", {"inputs": [_x()], "outputs": [{"parameters": {}}]}),
    ("binary-data-string", "mlp", {"inputs": [_x()], "outputs": [{"name": "probs",
                                                                  "parameters": {"binary_data": "yes"}}]}),
    ("classification", "mlp", {"inputs": [_x()], "outputs": [{"name": "probs",
                                                              "parameters": {"classification": 3}}]}),
    ("priority-negative", "mlp", {"inputs": [_x()], "parameters": {"priority": -1}}),
    ("priority-string", "mlp", {"inputs": [_x()], "parameters": {"priority": "high"}}),
    ("priority-bool", "mlp", {"inputs": [_x()], "parameters": {"priority": True}}),
    ("priority-2^64", "mlp", {"inputs": [_x()], "parameters": {"priority": 2**64}}),
    ("timeout-two-days", "mlp", {"inputs": [_x()], "parameters": {"timeout": 2 * 86_400_000_000}}),
    ("timeout-float", "mlp", {"inputs": [_x()], "parameters": {"timeout": 1.5}}),
    ("binary-output-string", "mlp", {"inputs": [_x()], "parameters": {"binary_data_output": "true"}}),
    ("triton-parameter", "mlp", {"inputs": [_x()], "parameters": {"triton_enable_empty_final_response": True}}),
    ("custom-parameter-object", "mlp", {"inputs": [_x()], "parameters": {"mine": {"a": 1}}}),
    ("parameters-list", "mlp", {"inputs": [_x()], "parameters": [1]}),
    ("id-number", "mlp", {"inputs": [_x()], "id": 7}),
]


@pytest.mark.parametrize("model, body", [(m, b) for _, m, b in BAD_JSON], ids=[i for i, _, _ in BAD_JSON])
def test_a_malformed_json_request_is_400_with_a_message(daemon, models, model, body):
    r = http(daemon.http, "POST", f"/v2/models/{model}/infer", body)
    assert r.status == 400, r.body[:500]
    assert r.headers["content-type"].startswith("application/json")
    message = r.error
    assert message and "internal" not in message.lower(), message
    assert http(daemon.http, "POST", "/v2/models/mlp/infer", {"inputs": [_x()]}).status == 200


GOOD_BINARY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 256}}]}


def _binary(header=GOOD_BINARY, data=ONE.tobytes(), length=None):
    body, headers = binary_request(header, data)
    if length is not None:
        headers["Inference-Header-Content-Length"] = length
    return body, headers


BAD_BINARY = [  # (id, body, headers) -> 400
    ("header-negative", *_binary(length="-1")),
    ("header-not-a-number", *_binary(length="abc")),
    ("header-float", *_binary(length="1e3")),
    ("header-beyond-body", *_binary(length="99999")),
    ("header-zero", *_binary(length="0")),
    ("header-huge", *_binary(length="9" * 40)),
    ("header-cuts-json", *_binary(length="10")),
    ("binary-too-large", *_binary(data=ONE.tobytes()[:-4])),
    ("binary-too-small", *_binary(data=ONE.tobytes() + b"\0" * 4)),
    ("binary-without-header", json.dumps(GOOD_BINARY).encode() + ONE.tobytes(), {}),
    ("binary-size-negative", *_binary(header={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                                                          "parameters": {"binary_data_size": -256}}]})),
    ("binary-size-string", *_binary(header={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                                                        "parameters": {"binary_data_size": "256"}}]})),
    ("binary-size-vs-shape", *_binary(header={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 32],
                                                          "parameters": {"binary_data_size": 256}}]})),
    ("binary-huge-shape", *_binary(header={"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**31, 2**31],
                                                       "parameters": {"binary_data_size": 256}}]})),
]


@pytest.mark.parametrize("body, headers", [(b, h) for _, b, h in BAD_BINARY], ids=[i for i, _, _ in BAD_BINARY])
def test_a_malformed_binary_request_is_400_with_a_message(daemon, models, body, headers):
    r = http(daemon.http, "POST", "/v2/models/mlp/infer", body, headers)
    assert r.status == 400, r.body[:500]
    assert r.error and "internal" not in r.error.lower(), r.error
    body, headers = _binary()
    assert http(daemon.http, "POST", "/v2/models/mlp/infer", body, headers).status == 200


def test_two_header_length_values_are_refused(daemon, models):
    body, headers = _binary()
    host, port = daemon.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        length = headers["Inference-Header-Content-Length"]
        s.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Inference-Header-Content-Length: %s\r\nInference-Header-Content-Length: %s\r\n"
                  b"Content-Length: %d\r\n\r\n" % (length.encode(), length.encode(), len(body)) + body)
        reply = b"".join(iter(lambda: s.recv(65536), b""))
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]


def test_unknown_models_and_versions_are_404_before_the_body_is_read(daemon, models):
    for path in ("/v2/models/nope/infer", "/v2/models/mlp/versions/7/infer", "/v2/models/" + "n" * 300 + "/infer"):
        r = http(daemon.http, "POST", path, {"inputs": [_x()]})
        assert r.status == 404 and r.error, (path, r.body)


def test_a_body_over_the_message_size_is_413_and_a_gzip_bomb_too(make_daemon):
    d = make_daemon("--max-message-size", "1MiB", "--device-memory", "256MiB")
    with d.client() as c:
        c.load(EXAMPLE, name="mlp", max_batch=2)
    big = b'{"inputs":[' + b" " * (2 << 20) + b"]}"
    r = http(d.http, "POST", "/v2/models/mlp/infer", big)
    assert r.status == 413 and "--max-message-size" in r.error, r.body
    bomb = gzip.compress(b" " * (64 << 20), compresslevel=9)  # 64 MiB of spaces in ~64 KiB
    r = http(d.http, "POST", "/v2/models/mlp/infer", bomb, {"Content-Encoding": "gzip"})
    assert r.status == 413, r.body
    assert _rss(d.proc.pid) < 1 << 30
    small = gzip.compress(json.dumps({"inputs": [_x()]}).encode())  # compressed requests work, as Triton's
    assert http(d.http, "POST", "/v2/models/mlp/infer", small, {"Content-Encoding": "gzip"}).status == 200


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_requests_past_the_workers_are_refused_503_not_queued(make_daemon):
    d = make_daemon("--workers", "2")
    with d.client() as c:  # each request holds its lane 5 s gathering a batch
        c.load(EXAMPLE, name="slow", max_batch=8, instances=2, max_queue_delay_us=5_000_000,
               preferred_batch_sizes=(8,))
        c.load(EXAMPLE, name="fast", max_batch=2)
    statuses = []

    def hold():  # a probe below may take the second slot first: then this one is refused, and tries again
        while (status := http(d.http, "POST", "/v2/models/slow/infer", {"inputs": [_x()]}, timeout=60).status) == 503:
            pass
        statuses.append(status)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()

    def refused() -> bool:
        return http(d.http, "POST", "/v2/models/fast/infer", {"inputs": [_x()]}).status == 503

    assert wait_for(refused, timeout=30)
    r = http(d.http, "POST", "/v2/models/fast/infer", {"inputs": [_x()]})
    assert r.status in (200, 503) and (r.status == 200 or "in flight" in r.error)
    for t in threads:
        t.join(60)
    assert statuses == [200, 200]
    assert http(d.http, "POST", "/v2/models/fast/infer", {"inputs": [_x()]}).status == 200
    assert http(d.http, "GET", "/v2/health/ready").status == 200  # health takes no slot


def test_second_daemon_on_the_same_http_port_fails_and_the_first_keeps_serving(make_daemon):
    d = make_daemon()
    port = int(d.http.rsplit(":", 1)[1])
    second = subprocess.run([sys.executable, "-m", "memserve", "--port", "0", "--metrics-port", "0",
                             "--http-port", str(port)], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert second.returncode == 2, second
    assert "listening on" not in second.stdout and "Traceback" not in second.stderr, second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert str(port) in line and "--http-port" in line and "in use" in line, line
    for _ in range(10):  # every new connection reaches the first daemon
        assert http(d.http, "GET", "/v2/health/ready").status == 200
    assert d.alive()


# -- fuzz: random bodies and headers on the infer endpoint ----------------------------------------------

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                      st.text(max_size=8))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                             st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                          max_leaves=40)
DIMS = st.lists(st.one_of(st.integers(-2, 70), st.sampled_from([2**31, 2**62, True, 1.5, "1"])), max_size=4)


@st.composite
def infer_bodies(draw):
    """A request that is nearly right: a valid one with fields replaced, dropped or added at random."""
    rows = draw(st.integers(0, 3))
    tensor = {"name": draw(st.sampled_from(["x", "y", "", "a"])),
              "datatype": draw(st.sampled_from(["FP32", "FP64", "INT8", "BOOL", "FP16", "BYTES", "fp32"])),
              "shape": draw(st.one_of(st.just([rows, 64]), DIMS))}
    kind = draw(st.sampled_from(["flat", "nested", "binary", "junk", "none"]))
    values = draw(st.sampled_from([0.5, 1, -3, True, None, "s", float("nan")]))
    binary = b""
    if kind == "flat":
        tensor["data"] = [values] * (rows * 64 + draw(st.integers(-1, 1)))
    elif kind == "nested":
        tensor["data"] = [[values] * draw(st.sampled_from([64, 63, 1]))] * rows
    elif kind == "binary":
        size = draw(st.one_of(st.just(rows * 256), st.integers(-1, 600)))
        tensor["parameters"] = {"binary_data_size": size}
        binary = b"\0" * draw(st.one_of(st.just(max(size, 0)), st.integers(0, 600)))
    elif kind == "junk":
        tensor["data"] = draw(JSON_VALUE)
    request = {"inputs": draw(st.one_of(st.just([tensor]), st.just([tensor, tensor]), JSON_VALUE))}
    for key in draw(st.lists(st.sampled_from(["id", "parameters", "outputs", "extra"]), max_size=3, unique=True)):
        request[key] = draw(st.one_of(JSON_VALUE, st.just([{"name": "probs", "parameters": {"binary_data": True}}]),
                                      st.just({"priority": 2, "timeout": 1000, "binary_data_output": True})))
    text = json.dumps(request).encode()
    header = None
    if binary or draw(st.booleans()):
        header = draw(st.one_of(st.just(str(len(text))), st.sampled_from(["-1", "0", "abc", "99999999", ""]),
                                st.integers(0, len(text) + len(binary) + 2).map(str)))
    if draw(st.integers(0, 9)) == 0:  # now and then, bytes that are not JSON at all
        text = draw(st.binary(max_size=64))
    return text + binary, ({"Inference-Header-Content-Length": header} if header is not None else {})


@settings(max_examples=max(1, int(300 * SCALE)), deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
@given(request=infer_bodies())
def test_fuzzed_infer_bodies_get_a_json_answer_and_the_daemon_stays_up(daemon, models, request):
    body, headers = request
    r = http(daemon.http, "POST", "/v2/models/mlp/infer", body, headers)
    assert r.status == 200 or 400 <= r.status < 500, (r.status, r.body[:300], body[:300], headers)
    reply = r.json()
    assert isinstance(reply, dict) and (r.status == 200) == ("error" not in reply), reply
    assert daemon.alive()


def test_no_hostile_request_was_an_internal_error(daemon):
    """Run last in this module: nothing above made the daemon log an internal error or a traceback."""
    log = daemon.log()
    assert "internal error in HTTP" not in log and "internal error in infer" not in log, log[-3000:]
