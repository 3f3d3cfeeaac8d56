"""ONNX's narrow types (bfloat16, float8, float4, int4, int2): stored one element per byte (bfloat16 in two),
moved and cast, never computed with; they travel through the native API and, for bfloat16, the KServe one.
Expected values come from onnx's reference implementation (what the node tests hold)."""
import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from memserve.errors import InvalidArgument, UnsupportedModel
from memserve.model import CompileOptions, compile_model
from memserve_client import MemserveError

from models import graph_model, run_local

F = TensorProto.FLOAT


def cast(to: int, shape=(6,), saturate: int | None = None, opset: int = 21) -> bytes:
    attrs = {"to": to} if saturate is None else {"to": to, "saturate": saturate}
    return graph_model([helper.make_node("Cast", ["x"], ["y"], **attrs)], [("x", F, list(shape))],
                       [("y", to, list(shape))], opset=opset)


def reference(model: bytes, feeds: dict) -> list[np.ndarray]:
    return ReferenceEvaluator(model).run(None, feeds)


X = np.array([0.3, -1.7, 500.0, np.inf, -1e9, np.nan], np.float32)


@pytest.mark.parametrize("to", [TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ,
                                TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ, TensorProto.FLOAT4E2M1,
                                TensorProto.FLOAT8E8M0, TensorProto.INT4, TensorProto.UINT4])
@pytest.mark.parametrize("saturate", [None, 0])
def test_casts_to_narrow_types_match_the_reference(to, saturate):
    model = cast(to, saturate=saturate, opset=25 if to == TensorProto.FLOAT8E8M0 else 21)
    x = X if to not in (TensorProto.INT4, TensorProto.UINT4) else np.array([0.3, -1.7, 5, 7, -8, 15], np.float32)
    got = run_local(model, {"x": x})[0]
    want = reference(model, {"x": x})[0]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))  # bit for bit, NaNs included


def test_float8_saturation_is_what_the_spec_says():
    sat = run_local(cast(TensorProto.FLOAT8E4M3FN), {"x": X})[0].astype(np.float32)
    assert sat[2] == sat[3] == 448 and sat[4] == -448  # out of range and inf: the largest finite value
    raw = run_local(cast(TensorProto.FLOAT8E4M3FN, saturate=0), {"x": X})[0].astype(np.float32)
    assert np.isnan(raw[2]) and np.isnan(raw[3])  # e4m3fn has no inf: without saturation, NaN


def test_bfloat16_round_trips_through_the_daemon_and_counts_two_bytes(client):
    model = graph_model([helper.make_node("Cast", ["x"], ["b"], to=TensorProto.BFLOAT16),
                         helper.make_node("Transpose", ["b"], ["t"]),
                         helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT)],
                        [("x", F, [64, 32])], [("y", F, [32, 64]), ("t", TensorProto.BFLOAT16, [32, 64])])
    info = client.load(model, name="bf16")
    assert info.work_size >= 64 * 32 * 2  # the bfloat16 intermediate, two bytes an element
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    y, t = client.execute("bf16", {"x": x}).values()
    assert t.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(y, x.astype(ml_dtypes.bfloat16).astype(np.float32).T)
    # A narrow tensor sent as an input: the daemon takes its bytes as they are.
    ident = graph_model([helper.make_node("Identity", ["b"], ["c"])], [("b", TensorProto.INT4, [5])],
                        [("c", TensorProto.INT4, [5])])
    client.load(ident, name="i4")
    v = np.array([-8, -1, 0, 3, 7], ml_dtypes.int4)
    np.testing.assert_array_equal(client.execute("i4", {"b": v})["c"], v)
    with pytest.raises(MemserveError, match="INVALID_ARGUMENT|must be int4"):
        client.execute("i4", {"b": np.zeros(5, np.int8)})


@pytest.mark.parametrize("op,to", [("Add", TensorProto.BFLOAT16), ("Relu", TensorProto.FLOAT8E4M3FN),
                                   ("MatMul", TensorProto.INT4)])
def test_arithmetic_on_a_narrow_type_is_refused_at_load_naming_the_node(op, to):
    ins = ["x", "x"] if op != "Relu" else ["x"]
    model = graph_model([helper.make_node(op, ins, ["y"])], [("x", to, [4, 4])], [("y", to, [4, 4])])
    with pytest.raises(UnsupportedModel, match=rf"node '{op}_0' \({op}\) computes with .*Cast it to float32"):
        compile_model(model, CompileOptions())


def test_the_kserve_front_speaks_bf16(daemon, client):
    model = graph_model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                        [("x", TensorProto.BFLOAT16, [4])], [("y", F, [4])])
    client.load(model, name="bfk")
    script = (
        "import json, sys, ml_dtypes, numpy as np, tritonclient.grpc as g\n"
        "c = g.InferenceServerClient(sys.argv[1])\n"
        "md = c.get_model_metadata('bfk', as_json=True)\n"
        "i = g.InferInput('x', [4], 'BF16'); i.set_data_from_numpy(np.array([1.5, -2, 3.25, 1e3], ml_dtypes.bfloat16))\n"
        "r = c.infer('bfk', [i])\n"
        "print(json.dumps([md['inputs'][0]['datatype'], r.as_numpy('y').tolist()]))\n")
    out = subprocess.run([sys.executable, "-c", script, daemon.target], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    datatype, y = json.loads(out.stdout)
    assert datatype == "BF16"
    assert y == [1.5, -2.0, 3.25, 1000.0]


@pytest.mark.parametrize("to,lo,hi", [(TensorProto.INT4, -8, 7), (TensorProto.UINT4, 0, 15),
                                      (TensorProto.INT2, -2, 1), (TensorProto.UINT2, 0, 3)])
def test_blocked_quantization_to_sub_byte_integers_round_trips_like_the_reference(to, lo, hi):
    rng = np.random.default_rng(to)
    x = (rng.standard_normal((3, 10)) * 6).astype(np.float32)
    np_type = helper.tensor_dtype_to_np_dtype(to)
    w = {"s": rng.uniform(0.5, 2, (3, 4)).astype(np.float32), "z": np.full((3, 4), (lo + hi) // 2, np_type)}
    model = graph_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1, block_size=3),
                         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1, block_size=3)],
                        [("x", F, [3, 10])], [("q", to, [3, 10]), ("y", F, [3, 10])], w, opset=21)
    got, want = run_local(model, {"x": x}), reference(model, {"x": x})
    np.testing.assert_array_equal(got[0].astype(np.int8), want[0].astype(np.int8))
    assert got[0].astype(np.int8).min() >= lo and got[0].astype(np.int8).max() <= hi
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


@pytest.mark.parametrize("scale_shape,block", [((3, 3), 3), ((3, 4), -3), ((3, 4, 1), 3)])
def test_blocks_that_do_not_tile_the_axis_are_refused(scale_shape, block):
    model = graph_model([helper.make_node("DequantizeLinear", ["x", "s"], ["y"], axis=1, block_size=block)],
                        [("x", TensorProto.INT8, [3, 10])], [("y", F, [3, 10])],
                        {"s": np.ones(scale_shape, np.float32)}, opset=21)
    with pytest.raises(InvalidArgument, match="block_size"):
        compile_model(model, CompileOptions())


def test_the_rest_front_speaks_bf16_in_binary_and_in_json(daemon, client):
    import tritonclient.http as th
    from rest_client import http, infer_json

    model = graph_model([helper.make_node("Identity", ["x"], ["y"])],
                        [("x", TensorProto.BFLOAT16, [3])], [("y", TensorProto.BFLOAT16, [3])])
    client.load(model, name="bfr")
    x = np.array([1.5, -2, 3.25], ml_dtypes.bfloat16)
    rest = th.InferenceServerClient(daemon.http)
    try:
        i = th.InferInput("x", [3], "BF16")
        i.set_data_from_numpy(x)  # tritonclient sends BF16 only as binary data
        r = rest.infer("bfr", [i])
        assert r.get_output("y")["datatype"] == "BF16"
        np.testing.assert_array_equal(r.as_numpy("y"), x)
    finally:
        rest.close()
    reply = http(daemon.http, "POST", "/v2/models/bfr/infer", infer_json("x", x.astype(np.float32), "BF16"))
    assert reply.status == 200, reply.body
    out = json.loads(reply.body)["outputs"][0]
    assert (out["datatype"], out["data"]) == ("BF16", [1.5, -2.0, 3.25])
