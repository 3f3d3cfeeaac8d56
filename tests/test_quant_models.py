"""int8 models made the way users make them, with onnxruntime.quantization, against onnxruntime (rtol 1e-3):
dynamic quantization of a transformer block (DynamicQuantizeLinear + MatMulInteger), static QDQ quantization
of a CNN (QuantizeLinear / DequantizeLinear around float Convs), and the quantization ops' hostile cases."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InvalidArgument, UnsupportedModel
from memserve.model import CompileOptions, compile_model

from models import graph_model, ort_run, run_local

quantization = pytest.importorskip("onnxruntime.quantization")


def quantized(tmp_path, model: bytes, static_feeds=None, qoperator: bool = False) -> bytes:
    """Dynamic int8 quantization, or static with these calibration feeds (QDQ, or QOperator with
    per-channel weights)."""
    src, dst = tmp_path / "f32.onnx", tmp_path / "int8.onnx"
    src.write_bytes(model)
    if static_feeds is None:
        quantization.quantize_dynamic(str(src), str(dst), weight_type=quantization.QuantType.QInt8)
    else:
        class Reader(quantization.CalibrationDataReader):
            def __init__(self):
                self.it = iter(static_feeds)

            def get_next(self):
                return next(self.it, None)

        fmt = quantization.QuantFormat.QOperator if qoperator else quantization.QuantFormat.QDQ
        quantization.quantize_static(str(src), str(dst), Reader(), quant_format=fmt, per_channel=qoperator,
                                     activation_type=quantization.QuantType.QUInt8,
                                     weight_type=quantization.QuantType.QInt8)
    return dst.read_bytes()


def test_a_dynamically_quantized_transformer_block_matches_onnxruntime(tmp_path):
    from test_open_dims import encoder

    model = quantized(tmp_path, encoder())
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    for shape in [(1, 16, 32), (2, 9, 32)]:
        x = np.random.default_rng(shape[1]).standard_normal(shape).astype(np.float32)
        got = run_local(model, {"x": x}, input_shapes={"x": (2, 16, 32)})[0]
        np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], rtol=1e-3, atol=1e-3)


def test_a_statically_quantized_qdq_cnn_matches_onnxruntime(tmp_path):
    from test_open_dims import conv_net

    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((1, 3, 32, 24)).astype(np.float32)} for _ in range(4)]
    model = quantized(tmp_path, conv_net(), calib)
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(model).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    for shape in [(1, 3, 32, 24), (2, 3, 17, 23)]:
        x = rng.standard_normal(shape).astype(np.float32)
        got = run_local(model, {"x": x}, input_shapes={"x": (2, 3, 32, 24)})[0]
        want = ort_run(model, {"x": x})[0]
        # One quantization step of the output is the tolerance an int8 pipeline allows between engines.
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=float(np.abs(want).max()) / 127)


def one(op, inputs, outputs, weights=None, **attrs):
    node = helper.make_node(op, [n for n, _, _ in inputs] + list(weights or {}), [n for n, _, _ in outputs], **attrs)
    return graph_model([node], inputs, outputs, weights, opset=21)


U8, I8, F = TensorProto.UINT8, TensorProto.INT8, TensorProto.FLOAT


@pytest.mark.parametrize("x", [np.array([-1e30, -1.5, -0.5, 0.5, 1.5, 2.5, 1e30, np.nan], np.float32)])
def test_quantize_saturates_and_rounds_half_to_even(x):
    model = one("QuantizeLinear", [("x", F, [8])], [("y", I8, [8])],
                {"s": np.array(1.0, np.float32), "z": np.array(0, np.int8)})
    got = run_local(model, {"x": x})[0]
    np.testing.assert_array_equal(got, [-128, -2, 0, 0, 2, 2, 127, -128])  # NaN: the lowest, as onnxruntime
    np.testing.assert_array_equal(got, ort_run(model, {"x": x})[0])


def test_per_axis_dequantize_matches_onnxruntime():
    x = np.random.default_rng(0).integers(-128, 128, (2, 3, 4)).astype(np.int8)
    w = {"s": np.array([0.5, 2.0, 0.25], np.float32), "z": np.array([1, -3, 0], np.int8)}
    model = one("DequantizeLinear", [("x", I8, [2, 3, 4])], [("y", F, [2, 3, 4])], w, axis=1)
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], ort_run(model, {"x": x})[0])


def test_dynamic_quantize_of_all_zeros_and_of_one_sign():
    model = one("DynamicQuantizeLinear", [("x", F, [5])], [("y", U8, [5]), ("s", F, []), ("z", U8, [])])
    for x in [np.zeros(5, np.float32), np.arange(1, 6, dtype=np.float32), -np.arange(1, 6, dtype=np.float32)]:
        for g, w in zip(run_local(model, {"x": x}), ort_run(model, {"x": x})):
            np.testing.assert_allclose(g, w, rtol=1e-6)


@pytest.mark.parametrize("k", [7, 300])  # float32 GEMM, float64 GEMM: both exact
def test_matmul_integer_is_exact_at_any_depth(k):
    rng = np.random.default_rng(k)
    a = rng.integers(0, 256, (3, k)).astype(np.uint8)
    b = rng.integers(-128, 128, (k, 5)).astype(np.int8)
    model = one("MatMulInteger", [("a", U8, [3, k]), ("b", I8, [k, 5])], [("y", TensorProto.INT32, [3, 5])],
                {"za": np.array(255, np.uint8), "zb": np.array([-128, 127, 0, 1, -1], np.int8)})
    want = (a.astype(np.int64) - 255) @ (b.astype(np.int64) - np.array([-128, 127, 0, 1, -1]))
    got = run_local(model, {"a": a, "b": b})[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, ort_run(model, {"a": a, "b": b})[0])


@pytest.mark.parametrize("op,inputs,outputs,weights,attrs,match", [
    ("QuantizeLinear", [("x", F, [2, 3])], [("y", U8, [2, 3])],
     {"s": np.ones(4, np.float32), "z": np.zeros(4, np.uint8)}, {"axis": 1}, "4 scales for axis 1 of size 3"),
    ("QuantizeLinear", [("x", F, [2, 3])], [("y", U8, [2, 3])],
     {"s": np.ones(3, np.float32), "z": np.zeros(2, np.uint8)}, {"axis": 1}, "must have one shape"),
    ("DequantizeLinear", [("x", U8, [2, 4])], [("y", F, [2, 4])],
     {"s": np.ones((2, 3), np.float32)}, {"block_size": 2, "axis": 1}, "block_size 2 along axis 1"),
    ("MatMulInteger", [("a", U8, [2, 3]), ("b", U8, [4, 2])], [("y", TensorProto.INT32, [2, 2])], {}, {},
     "inner dimensions differ"),
    ("MatMulInteger", [("a", U8, [2, 3]), ("b", U8, [3, 2])], [("y", TensorProto.INT32, [2, 2])],
     {"za": np.zeros(5, np.uint8)}, {}, "must be a scalar or hold 2 values"),
])
def test_bad_quantization_parameters_are_refused_at_load(op, inputs, outputs, weights, attrs, match):
    with pytest.raises((InvalidArgument, UnsupportedModel), match=match):
        compile_model(one(op, inputs, outputs, weights, **attrs), CompileOptions())


def conv_relu():
    rng = np.random.default_rng(3)
    w = {"w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "b": rng.standard_normal(6).astype(np.float32),
         "w2": rng.standard_normal((4, 6, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["y"])]
    return graph_model(nodes, [("x", TensorProto.FLOAT, [1, 3, 10, 12])], [("y", TensorProto.FLOAT, [1, 4, 5, 12])], w)


def test_a_qoperator_quantized_cnn_runs_qlinearconv_like_onnxruntime(tmp_path):
    import onnx

    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 3, 10, 12)).astype(np.float32)} for _ in range(4)]
    model = quantized(tmp_path, conv_relu(), calib, qoperator=True)
    assert "QLinearConv" in {n.op_type for n in onnx.load_from_string(model).graph.node}
    x = rng.standard_normal((1, 3, 10, 12)).astype(np.float32)
    got, want = run_local(model, {"x": x})[0], ort_run(model, {"x": x})[0]
    # Requantization may round one step differently where onnxruntime uses a fixed-point multiplier.
    step = float(np.abs(want).max()) / 127
    np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.01)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_integer_is_exact(group):
    rng = np.random.default_rng(group)
    x = rng.integers(0, 256, (2, 4, 7, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, (6, 4 // group, 3, 3)).astype(np.int8)
    model = one("ConvInteger", [("x", U8, [2, 4, 7, 6]), ("w", I8, [6, 4 // group, 3, 3])],
                [("y", TensorProto.INT32, [2, 6, 7, 6])], {"xz": np.array(3, np.uint8)}, group=group,
                pads=[1, 1, 1, 1])
    got = run_local(model, {"x": x, "w": w})[0]
    np.testing.assert_array_equal(got, ort_run(model, {"x": x, "w": w})[0])


def test_qlinearconv_with_a_scale_per_channel_of_the_wrong_length_is_refused():
    weights = {"xs": np.array(0.1, np.float32), "xz": np.array(0, np.uint8), "w": np.ones((4, 2, 1, 1), np.int8),
               "ws": np.ones(3, np.float32), "wz": np.zeros(3, np.int8), "ys": np.array(0.2, np.float32),
               "yz": np.array(0, np.uint8)}
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])
    model = graph_model([node], [("x", U8, [1, 2, 3, 3])], [("y", U8, [1, 4, 3, 3])], weights, opset=21)
    with pytest.raises(InvalidArgument, match=r"w_scale \(3,\) must be a scalar or hold one value per output channel"):
        compile_model(model, CompileOptions())
