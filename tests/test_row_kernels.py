"""Softmax, LogSoftmax and LayerNormalization on the compiled row kernels (kernels/reduce.py) against
onnxruntime: shapes, axes, dtypes, and values that overflow a naive exp."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.kernels import lookup, reduce

from models import F32, graph_model, ort_run, run_local

F64 = TensorProto.DOUBLE


def test_the_row_ops_declare_their_compiled_kernels():
    assert lookup("", "Softmax").compiled == (reduce.softmax_rows,)
    assert lookup("", "LayerNormalization").compiled == (reduce.layer_norm_rows,)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis,opset", [((1, 4, 16, 16), -1, 13), ((3, 1), -1, 13), ((2, 5, 7), 1, 13),
                                              ((2, 5, 7), 1, 11), ((6, 1000), -1, 13), ((2, 3, 4), 0, 11)])
@pytest.mark.parametrize("elem", [F32, F64])
def test_softmax_matches_onnxruntime(op, shape, axis, opset, elem):
    dt = np.float32 if elem == F32 else np.float64
    model = graph_model([helper.make_node(op, ["x"], ["y"], axis=axis)], [("x", elem, list(shape))],
                        [("y", elem, list(shape))], opset=opset)
    x = (np.random.default_rng(len(shape)).standard_normal(shape) * 30).astype(dt)
    x.reshape(-1)[0] = 1000  # exp(1000) overflows: only a max-shifted softmax stays finite
    ours = run_local(model, {"x": x})[0]
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,axis", [((1, 16, 64), -1), ((2, 3, 4, 5), 2), ((5, 1), -1), ((4, 300), 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("outputs", [1, 3])
def test_layer_norm_matches_onnxruntime(shape, axis, bias, outputs):
    r = np.random.default_rng(sum(shape))
    norm = shape[axis:]
    weights = {"s": r.standard_normal(norm).astype(np.float32)}
    if bias:
        weights["b"] = r.standard_normal(norm).astype(np.float32)
    names = ["y", "mean", "inv"][:outputs]
    first = axis % len(shape)
    stat = [d if k < first else 1 for k, d in enumerate(shape)]
    model = graph_model([helper.make_node("LayerNormalization", ["x", "s"] + (["b"] if bias else []), names,
                                          axis=axis, epsilon=1e-3)],
                        [("x", F32, list(shape))],
                        [("y", F32, list(shape))] + [(n, F32, stat) for n in names[1:]], weights)
    x = (r.standard_normal(shape) * 5 + 3).astype(np.float32)
    for ours, theirs in zip(run_local(model, {"x": x}), ort_run(model, {"x": x})):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_layer_norm_with_a_broadcast_scale_takes_the_numpy_path():
    model = graph_model([helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=-2)],
                        [("x", F32, [2, 3, 4])], [("y", F32, [2, 3, 4])], {"s": np.full((1, 4), 2, np.float32)})
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(run_local(model, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_read_only_and_unaligned_rows():
    model = graph_model([helper.make_node("Softmax", ["x"], ["y"])], [("x", F32, [2, 3])], [("y", F32, [2, 3])])
    x = np.frombuffer(bytes(3) + np.arange(6, dtype=np.float32).tobytes(), np.float32, count=6, offset=3)
    x = x.reshape(2, 3)
    assert not x.flags.writeable and not x.flags.aligned
    np.testing.assert_allclose(run_local(model, {"x": x})[0], ort_run(model, {"x": np.array(x)})[0], rtol=1e-6)
