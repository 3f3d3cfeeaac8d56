"""RNN, GRU and LSTM (issue 12): torch-exported layers at several sequence lengths within their open maximum,
ONNX-built ones with sequence_lens, layout 1 and every direction, against onnxruntime; hostile shapes."""
import io
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InvalidArgument
from memserve.model import CompileOptions, compile_model

from models import graph_model, ort_run, run_local

F = TensorProto.FLOAT


def torch_rnn(kind: str) -> bytes:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    layer = getattr(torch.nn, kind)(8, 16, num_layers=2, bidirectional=True, batch_first=True).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (torch.randn(2, 7, 8),), buf, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N", 1: "seq"}, "y": {0: "N", 1: "seq"}})
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_torch_layers_run_every_sequence_length_within_the_maximum(kind):
    model = torch_rnn(kind)
    for shape in [(1, 1, 8), (2, 5, 8), (3, 12, 8)]:
        x = np.random.default_rng(shape[1]).standard_normal(shape).astype(np.float32)
        got = run_local(model, {"x": x}, input_shapes={"x": (3, 12, 8)})[0]
        np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def onnx_layer(op, direction, layout, hidden=4, feat=3, seq=5, batch=3, **attrs):
    dirs = 2 if direction == "bidirectional" else 1
    g = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    r = np.random.default_rng(len(op) + dirs + layout)
    w = {"W": r.standard_normal((dirs, g * hidden, feat)).astype(np.float32) * 0.5,
         "R": r.standard_normal((dirs, g * hidden, hidden)).astype(np.float32) * 0.5,
         "B": r.standard_normal((dirs, 2 * g * hidden)).astype(np.float32) * 0.1}
    xs = (batch, seq, feat) if layout else (seq, batch, feat)
    hs = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    ys = (batch, seq, dirs, hidden) if layout else (seq, dirs, batch, hidden)
    inputs = ["x", "W", "R", "B", "lens", "h0"] + (["c0"] if op == "LSTM" else [])
    outputs = ["y", "yh"] + (["yc"] if op == "LSTM" else [])
    node = helper.make_node(op, inputs, outputs, hidden_size=hidden, direction=direction, layout=layout, **attrs)
    graph_inputs = [("x", F, list(xs)), ("lens", TensorProto.INT32, [batch]), ("h0", F, list(hs))]
    if op == "LSTM":
        graph_inputs.append(("c0", F, list(hs)))
    model = graph_model([node], graph_inputs, [(o, F, list(ys if o == "y" else hs)) for o in outputs], w, opset=14)
    feeds = {"x": r.standard_normal(xs).astype(np.float32), "lens": np.array([5, 2, 4][:batch], np.int32),
             "h0": r.standard_normal(hs).astype(np.float32)}
    if op == "LSTM":
        feeds["c0"] = r.standard_normal(hs).astype(np.float32)
    return model, feeds


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_sequence_lens_directions_and_layouts_match_onnxruntime(op, direction, layout):
    extra = {"linear_before_reset": 1} if op == "GRU" and layout else {}
    model, feeds = onnx_layer(op, direction, layout, **extra)
    if layout:  # onnxruntime refuses batch-major recurrent layers: ONNX's reference implementation instead,
        from onnx.reference import ReferenceEvaluator  # which ignores sequence_lens: every sequence full

        feeds["lens"][:] = 5
        want = ReferenceEvaluator(model).run(None, feeds)
    else:
        want = ort_run(model, feeds)
    for got, w in zip(run_local(model, feeds), want):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


def test_clip_and_input_forget():
    model, feeds = onnx_layer("LSTM", "forward", 0, clip=0.5, input_forget=1)
    for got, want in zip(run_local(model, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_sequence_lengths_outside_the_sequence_are_clipped_not_trusted():
    model, feeds = onnx_layer("GRU", "bidirectional", 0)
    feeds["lens"] = np.array([-7, 1 << 30, 0], np.int32)
    y, yh = run_local(model, feeds)
    assert not y[:, :, 0].any() and not y[:, :, 2].any()  # no steps: zeros, the state stays the initial one
    np.testing.assert_array_equal(yh[:, 2], feeds["h0"][:, 2])


@pytest.mark.parametrize("bad", ["W", "R", "B"])
def test_weights_of_the_wrong_shape_are_refused_at_load(bad):
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y"], hidden_size=4)
    w = {"W": np.zeros((1, 16, 3), np.float32), "R": np.zeros((1, 16, 4), np.float32), "B": np.zeros((1, 32), np.float32)}
    w[bad] = np.zeros((1, 5, 5), np.float32)
    model = graph_model([node], [("x", F, [5, 2, 3])], [("y", F, [5, 1, 2, 4])], w, opset=14)
    with pytest.raises(InvalidArgument, match=f"{bad} must have shape"):
        compile_model(model, CompileOptions())
