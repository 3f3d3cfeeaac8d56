"""GatherElements, GatherND, ScatterElements, ScatterND, TopK, OneHot, CumSum, DepthToSpace and SpaceToDepth
against onnxruntime at several shapes and dtypes, and the hostile cases: indices out of range on a request,
parameters outside their bounds at load. (The ONNX node tests of each run in tests/conformance.)"""
import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from memserve.device import CpuDevice
from memserve.errors import InvalidArgument, UnsupportedModel
from memserve.model import CompileOptions, compile_model
from memserve.registry import LoadOptions, Registry

from models import ort_run, run_local

T = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
     np.dtype(np.int64): TensorProto.INT64, np.dtype(np.int32): TensorProto.INT32}


def one_node(op, feeds, outputs=1, weights=None, opset=18, **attrs):
    """A model of one node whose inputs are `feeds` (graph inputs) then `weights` (initializers)."""
    names = list(feeds) + list(weights or {})
    outs = [f"y{k}" for k in range(outputs)]
    node = helper.make_node(op, names, outs, **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(k, T[v.dtype], list(v.shape)) for k, v in feeds.items()],
                          [helper.make_empty_tensor_value_info(o) for o in outs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in (weights or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    try:
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(m, strict_mode=True).graph.value_info}
    except onnx.shape_inference.InferenceError:  # a hostile node onnx refuses too: the loader must refuse it
        inferred = {}
    first = next(iter(feeds.values()))
    for o in m.graph.output:  # the outputs' types and shapes, as onnx infers them
        o.CopyFrom(inferred.get(o.name) or helper.make_tensor_value_info(o.name, T[first.dtype], [1]))
    return m.SerializeToString()


def check(op, feeds, outputs=1, weights=None, **attrs):
    model = one_node(op, feeds, outputs, weights, **attrs)
    got = run_local(model, feeds, input_shapes={k: v.shape for k, v in feeds.items()})
    want = ort_run(model, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-6)


rng = np.random.default_rng(0)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
@pytest.mark.parametrize("shape,axis", [((5,), 0), ((4, 6), 1), ((4, 6), -2), ((2, 3, 5), 2)])
def test_gather_and_scatter_elements(dtype, shape, axis):
    data = (rng.standard_normal(shape) * 10).astype(dtype)
    idx_shape = tuple(max(1, d - 1) for d in shape)
    idx = rng.integers(-shape[axis], shape[axis], idx_shape).astype(np.int64)
    check("GatherElements", {"data": data, "idx": idx}, axis=axis)
    # Distinct targets per line, so that the scatter is defined without a reduction.
    flat = np.moveaxis(np.argsort(rng.random(np.moveaxis(data, axis, -1).shape), axis=-1), -1, axis)
    sl = tuple(slice(0, n) for n in idx_shape)
    check("ScatterElements", {"data": data, "idx": flat[sl].astype(np.int64), "upd": data[sl] + 1}, axis=axis)
    for reduction in ("add", "mul", "max", "min"):
        check("ScatterElements", {"data": data, "idx": idx, "upd": data[sl] * 2}, axis=axis, reduction=reduction)


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_gather_nd_and_scatter_nd(batch_dims):
    data = rng.standard_normal((3, 4, 5)).astype(np.float32)
    idx = np.stack([rng.integers(0, 4, (3, 2)), rng.integers(-5, 5, (3, 2))], -1).astype(np.int64)
    if batch_dims == 0:
        idx = np.stack([rng.integers(0, 3, (3, 2)), rng.integers(-4, 4, (3, 2))], -1).astype(np.int64)
    check("GatherND", {"data": data, "idx": idx}, batch_dims=batch_dims)
    one = np.array([[0], [2]], np.int64)  # whole slices
    check("ScatterND", {"data": data, "idx": one, "upd": np.ones((2, 4, 5), np.float32)})
    check("ScatterND", {"data": data, "idx": np.array([[1, 1], [1, 1]], np.int64), "upd": np.ones((2, 5), np.float32)},
          reduction="add")


@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_topk_breaks_ties_by_lower_index(largest, dtype):
    x = rng.integers(0, 4, (3, 9)).astype(dtype)  # many ties
    for axis, k in [(-1, 4), (0, 2), (1, 9), (1, 0)]:
        check("TopK", {"x": x}, outputs=2, weights={"k": np.array([k], np.int64)}, axis=axis, largest=largest)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_onehot(axis):
    idx = np.array([[0, 3, -1], [9, -9, 2]], np.int64)  # 9 and -9 are out of range: all `off`
    check("OneHot", {"idx": idx}, weights={"depth": np.array(5, np.int64), "values": np.array([2, 7], np.float32)},
          axis=axis)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_cumsum(exclusive, reverse, dtype):
    x = (rng.standard_normal((3, 4)) * 5).astype(dtype)
    for axis in (0, 1, -1):
        check("CumSum", {"x": x}, weights={"axis": np.array(axis, np.int64)}, exclusive=exclusive, reverse=reverse)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_and_back(mode):
    x = rng.standard_normal((2, 8, 3, 5)).astype(np.float32)
    check("DepthToSpace", {"x": x}, blocksize=2, mode=mode)
    check("SpaceToDepth", {"x": rng.standard_normal((2, 3, 6, 4)).astype(np.float32)}, blocksize=2)


@pytest.mark.parametrize("op,feeds,attrs", [
    ("GatherElements", {"data": np.zeros((3, 3), np.float32), "idx": np.array([[3, 0, 0]], np.int64)}, {}),
    ("GatherElements", {"data": np.zeros((3, 3), np.float32), "idx": np.array([[-4, 0, 0]], np.int64)}, {}),
    ("ScatterElements", {"data": np.zeros((3, 3), np.float32), "idx": np.array([[1 << 40, 0, 0]], np.int64),
                         "upd": np.zeros((1, 3), np.float32)}, {}),
    ("GatherND", {"data": np.zeros((3, 3), np.float32), "idx": np.array([[0, 3]], np.int64)}, {}),
    ("ScatterND", {"data": np.zeros((3, 3), np.float32), "idx": np.array([[-4]], np.int64),
                   "upd": np.zeros((1, 3), np.float32)}, {}),
])
def test_an_index_out_of_range_fails_the_request_not_the_daemon(op, feeds, attrs):
    reg = Registry(CpuDevice(1 << 26))
    try:
        reg.load(one_node(op, feeds, **attrs), LoadOptions(name="m", input_shapes={k: v.shape for k, v in feeds.items()}))
        with pytest.raises(InvalidArgument, match=rf"node .* \({op}\).*index out of range"):
            reg.execute("m", feeds)
        good = {k: np.zeros_like(v) for k, v in feeds.items()}
        reg.execute("m", good)  # still serving
    finally:
        reg.close()
    assert reg.device.used() == 0


@pytest.mark.parametrize("op,feeds,weights,attrs,match", [
    ("TopK", {"x": np.zeros((2, 3), np.float32)}, {"k": np.array([4], np.int64)}, {}, "k 4 is outside 0..3"),
    ("TopK", {"x": np.zeros((2, 3), np.float32)}, {"k": np.array([-1], np.int64)}, {}, "k -1 is outside"),
    ("OneHot", {"i": np.zeros(2, np.int64)}, {"d": np.array(1 << 40, np.int64), "v": np.array([0, 1], np.float32)},
     {}, "depth must be one value from 1 to"),
    ("OneHot", {"i": np.zeros(2, np.int64)}, {"d": np.array(0, np.int64), "v": np.array([0, 1], np.float32)},
     {}, "depth must be one value"),
    ("DepthToSpace", {"x": np.zeros((1, 3, 2, 2), np.float32)}, {}, {"blocksize": 2}, "not a multiple"),
    ("SpaceToDepth", {"x": np.zeros((1, 3, 3, 2), np.float32)}, {}, {"blocksize": 0}, "blocksize >= 1"),
    ("CumSum", {"x": np.zeros((2, 3), np.float32)}, {"a": np.array(2, np.int64)}, {}, "axis 2 out of range"),
    ("GatherND", {"d": np.zeros((2, 3), np.float32), "i": np.zeros((2, 3), np.int64)}, {}, {},
     "last dimension 3 must be 1 to 2"),
])
def test_parameters_outside_their_bounds_are_refused_at_load(op, feeds, weights, attrs, match):
    with pytest.raises((InvalidArgument, UnsupportedModel), match=match):
        compile_model(one_node(op, feeds, 2 if op == "TopK" else 1, weights=weights, **attrs),
                      CompileOptions(input_shapes={k: v.shape for k, v in feeds.items()}))
