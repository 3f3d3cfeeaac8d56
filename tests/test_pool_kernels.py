"""Pooling (kernels/pool.py): the compiled 2-D and plane kernels against onnxruntime.

Each case runs through the registry (load, execute) and onnxruntime on the
same input; float64 and integer inputs, and 1-D/3-D ones, take the numpy path
and are checked against a direct numpy reference.
"""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InvalidArgument
from memserve.registry import LoadOptions, Registry
from memserve.device import CpuDevice

from models import F32, graph_model, ort_run, run_local

TOL = dict(rtol=1e-5, atol=1e-6)


def pool_model(op, x_shape, elem=F32, **attrs):
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    return graph_model([node], [("x", elem, list(x_shape))], [("y", elem, _any(len(x_shape)))])


CASES = [
    ((1, 16, 32, 32), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((2, 3, 17, 19), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 4, 15, 16), dict(kernel_shape=[3, 2], strides=[1, 3], pads=[0, 1, 2, 0])),  # asymmetric
    ((1, 2, 20, 21), dict(kernel_shape=[3, 3], dilations=[2, 3], pads=[2, 1, 2, 1])),
    ((1, 5, 13, 13), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),  # last window hangs over
    ((1, 3, 9, 9), dict(kernel_shape=[5, 5], auto_pad="SAME_UPPER")),
    ((1, 3, 4, 5), dict(kernel_shape=[4, 5])),  # one window: the whole plane
    ((1, 8, 7, 7), dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])),
]


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("shape,attrs", CASES)
def test_compiled_2d_pooling_matches_onnxruntime(op, shape, attrs):
    if op == "AveragePool" and "dilations" in attrs:
        pytest.skip("AveragePool takes dilations only from opset 19")
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    model = pool_model(op, shape, **attrs)
    np.testing.assert_allclose(run_local(model, {"x": x})[0], ort_run(model, {"x": x})[0], **TOL)


@pytest.mark.parametrize("include_pad", [0, 1])
def test_average_counts_padding_only_when_asked(include_pad):
    shape = (1, 2, 6, 7)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    model = pool_model("AveragePool", shape, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=include_pad)
    ours = run_local(model, {"x": x})[0]
    np.testing.assert_allclose(ours, ort_run(model, {"x": x})[0], **TOL)
    # The corner output averages 4 inputs, over 4 or over the 9 taps the padding completes.
    corner = x[0, 0, :2, :2].sum() / (9 if include_pad else 4)
    assert ours[0, 0, 0, 0] == pytest.approx(corner, rel=1e-5)


def test_maxpool_keeps_nan_and_inf_as_numpy_does():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 1], x[0, 0, 2, 2], x[0, 0, 3, 0] = np.nan, np.inf, -np.inf
    y = run_local(pool_model("MaxPool", x.shape, kernel_shape=[2, 2], strides=[2, 2]), {"x": x})[0]
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 1, 1] == np.inf and y[0, 0, 1, 0] == 0 and y[0, 0, 0, 1] == 0


def test_the_compiled_kernel_runs_on_a_strided_view_of_its_input():
    """A Slice aliasing into a bigger tensor hands the pool a non-contiguous view."""
    x = np.random.default_rng(3).standard_normal((1, 4, 8, 10)).astype(np.float32)
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a"], ["t"]),
             helper.make_node("MaxPool", ["t"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    weights = {"s": np.array([1], np.int64), "e": np.array([9], np.int64), "a": np.array([3], np.int64)}
    model = graph_model(nodes, [("x", F32, [1, 4, 8, 10])], [("y", F32, _any(4))], weights)
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], ort_run(model, {"x": x})[0])


def _numpy_pool(x, k, is_max):
    """Non-overlapping pooling with kernel k on every spatial axis of x (sizes divisible by k)."""
    nd = x.ndim - 2
    shape = x.shape[:2] + sum(((s // k, k) for s in x.shape[2:]), ())
    axes = tuple(3 + 2 * a for a in range(nd))
    v = x.reshape(shape)
    return v.max(axis=axes) if is_max else v.mean(axis=axes, dtype=np.float64).astype(x.dtype)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("shape,elem,dtype", [
    ((1, 3, 8, 6), TensorProto.DOUBLE, np.float64),  # compiled, float64
    ((1, 3, 12), F32, np.float32),  # 1-D: numpy
    ((1, 2, 4, 6, 8), F32, np.float32),  # 3-D: numpy
])
def test_other_dtypes_and_ranks_match_a_direct_reference(op, shape, elem, dtype):
    x = np.random.default_rng(4).standard_normal(shape).astype(dtype)
    nd = len(shape) - 2
    model = pool_model(op, shape, elem, kernel_shape=[2] * nd, strides=[2] * nd)
    np.testing.assert_allclose(run_local(model, {"x": x})[0], _numpy_pool(x, 2, op == "MaxPool"), rtol=1e-5, atol=1e-7)


def test_integer_maxpool_takes_the_numpy_path():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.int32).reshape(2, 3, 4, 4) % 7
    model = pool_model("MaxPool", x.shape, TensorProto.INT32, kernel_shape=[2, 2], strides=[2, 2])
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], _numpy_pool(x, 2, True))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape,dtype,elem", [
    ((2, 32, 16, 16), np.float32, F32), ((1, 8, 224, 224), np.float32, F32), ((1, 5, 7), np.float32, F32),
    ((1, 3, 4, 5, 6), np.float32, F32), ((2, 4, 3, 3), np.float64, TensorProto.DOUBLE),
    ((1, 4, 3, 3), np.int32, TensorProto.INT32),
])
def test_global_pooling_matches_onnxruntime_or_numpy(op, shape, dtype, elem):
    x = (np.random.default_rng(5).standard_normal(shape) * 10).astype(dtype)
    model = graph_model([helper.make_node(op, ["x"], ["y"])], [("x", elem, list(shape))],
                        [("y", elem, _any(len(shape)))])
    ours = run_local(model, {"x": x})[0]
    axes = tuple(range(2, len(shape)))
    if dtype == np.float32:
        np.testing.assert_allclose(ours, ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    elif op == "GlobalMaxPool":
        np.testing.assert_array_equal(ours, x.max(axis=axes, keepdims=True))
    else:
        np.testing.assert_allclose(ours, x.mean(axis=axes, keepdims=True).astype(dtype), rtol=1e-6)


def test_global_average_of_a_large_plane_sums_in_float64():
    """2**24 + 1 ones in float32 summed in float32 stop growing at 2**24; the mean must stay 1."""
    x = np.ones((1, 1, 4097, 4097), np.float32)
    model = graph_model([helper.make_node("GlobalAveragePool", ["x"], ["y"])], [("x", F32, list(x.shape))],
                        [("y", F32, _any(4))])
    assert run_local(model, {"x": x})[0].item() == 1.0


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[2, 2], pads=[5, 0, 0, 0]),  # padding beyond the input
    dict(kernel_shape=[9, 2]),  # kernel larger than the input
    dict(kernel_shape=[2, 2], strides=[0, 1]),
    dict(kernel_shape=[2, 2], dilations=[-1, 1]),
    dict(kernel_shape=[0, 2]),
])
def test_hostile_pool_geometry_is_refused_at_load(attrs):
    reg = Registry(CpuDevice(1 << 24))
    try:
        with pytest.raises(InvalidArgument):
            reg.load(pool_model("MaxPool", (1, 1, 4, 4), **attrs), LoadOptions(name="m"))
        assert reg.device.used() == 0
    finally:
        reg.close()



def _any(rank):
    return [f"d{i}" for i in range(rank)]


@pytest.mark.parametrize("attrs,shape", [
    ({"kernel_shape": [2, 2]}, (2, 3, 6, 7)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, (1, 2, 7, 7)),
    ({"kernel_shape": [2, 3], "dilations": [2, 1], "storage_order": 1}, (1, 2, 7, 6)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, (1, 1, 8, 8)),
    ({"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, (2, 2, 9)),
])
def test_maxpool_indices_match_onnxruntime(attrs, shape):
    """The Indices output: each window's largest input and its flat index into the input (row major, or
    column major with storage_order 1), ties to the first in the window's row-major order."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, shape).astype(np.float32)  # small integers: many ties
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)
    probe = graph_model([node], [("x", F32, list(shape))], [("y", F32, None), ("i", TensorProto.INT64, None)])
    want = ort_run(probe, {"x": x})
    model = graph_model([node], [("x", F32, list(shape))],
                        [("y", F32, list(want[0].shape)), ("i", TensorProto.INT64, list(want[1].shape))])
    got = run_local(model, {"x": x})
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
