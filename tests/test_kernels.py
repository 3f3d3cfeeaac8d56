"""Each op of this release against onnxruntime on the same model and inputs."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from models import F32, graph_model, ort_run, run_local

F64, I64 = TensorProto.DOUBLE, TensorProto.INT64
rng = np.random.default_rng(7)


def rand(shape, dtype=np.float32):
    if np.dtype(dtype).kind == "i":
        return rng.integers(-20, 20, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def check(nodes, inputs, outputs, feeds, weights=None, opset=17, rtol=1e-5, **opts):
    model = graph_model(nodes, inputs, outputs, weights, opset=opset)
    got = run_local(model, feeds, **opts)
    want = ort_run(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("elem,dtype", [(F32, np.float32), (F64, np.float64), (I64, np.int64)])
def test_binary_broadcast(op, elem, dtype):
    b = rand((1, 5), dtype)
    if op == "Div":
        b[b == 0] = 3
    check([helper.make_node(op, ["a", "b"], ["y"])], [("a", elem, [4, 3, 5]), ("b", elem, [1, 5])],
          [("y", elem, [4, 3, 5])], {"a": rand((4, 3, 5), dtype), "b": b})


def test_binary_with_weight_operand():
    check([helper.make_node("Mul", ["a", "w"], ["y"])], [("a", F32, ["N", 3])], [("y", F32, ["N", 3])],
          {"a": rand((2, 3))}, weights={"w": rand((3,))}, max_batch=2)


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh"])
def test_activations(op):
    check([helper.make_node(op, ["x"], ["y"])], [("x", F32, [3, 7])], [("y", F32, [3, 7])], {"x": rand((3, 7)) * 4})


@pytest.mark.parametrize("opset,axis,shape", [(11, 1, (2, 3, 4)), (11, -1, (2, 3, 4)), (13, 1, (2, 3, 4)),
                                              (17, -1, (5, 6)), (13, 0, (3, 4))])
def test_softmax(opset, axis, shape):
    check([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], [("x", F32, list(shape))],
          [("y", F32, list(shape))], {"x": rand(shape) * 3}, opset=opset)


@pytest.mark.parametrize("ta,tb,alpha,beta,cshape", [(0, 0, 1.0, 1.0, (4,)), (1, 0, 0.5, 2.0, (3, 4)),
                                                    (0, 1, 1.0, 0.25, (1, 4)), (1, 1, 2.0, 1.0, None)])
def test_gemm(ta, tb, alpha, beta, cshape):
    a_shape = (5, 3) if ta else (3, 5)
    b_shape = (4, 5) if tb else (5, 4)
    ins = ["a", "b"] + (["c"] if cshape else [])
    weights = {"b": rand(b_shape)} | ({"c": rand(cshape)} if cshape else {})
    check([helper.make_node("Gemm", ins, ["y"], transA=ta, transB=tb, alpha=alpha, beta=beta)],
          [("a", F32, list(a_shape))], [("y", F32, [3, 4])], {"a": rand(a_shape)}, weights)


def test_gemm_with_runtime_c_and_beta():
    check([helper.make_node("Gemm", ["a", "b", "c"], ["y"], beta=0.5)],
          [("a", F32, [3, 5]), ("b", F32, [5, 4]), ("c", F32, [3, 4])], [("y", F32, [3, 4])],
          {"a": rand((3, 5)), "b": rand((5, 4)), "c": rand((3, 4))})


@pytest.mark.parametrize("a,b", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)),
                                 ((1, 3, 4), (6, 4, 2)), ((4,), (4, 5)), ((3, 4), (4,))])
def test_matmul(a, b):
    out = np.matmul(np.zeros(a), np.zeros(b)).shape
    check([helper.make_node("MatMul", ["a", "b"], ["y"])], [("a", F32, list(a)), ("b", F32, list(b))],
          [("y", F32, list(out))], {"a": rand(a), "b": rand(b)})


def test_reshape_flatten_identity_cast_constant():
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=helper.make_tensor("s", I64, [2], [0, -1])),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Cast", ["r"], ["c"], to=TensorProto.DOUBLE),
        helper.make_node("Identity", ["c"], ["i"]),
        helper.make_node("Constant", [], ["k"], value_float=2.0),
        helper.make_node("Cast", ["k"], ["k64"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["i", "k64"], ["m"]),
        helper.make_node("Flatten", ["x"], ["f"], axis=2),
    ]
    check(nodes, [("x", F32, [2, 3, 4])], [("m", F64, [2, 12]), ("f", F32, [6, 4])], {"x": rand((2, 3, 4))})


def test_cast_float_to_int64_truncates():
    check([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)], [("x", F32, [6])], [("y", I64, [6])],
          {"x": np.array([-2.7, -0.5, 0, 0.5, 1.9, 3], np.float32)})


def test_smaller_batches_run_on_views_of_the_max_batch_plan():
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Softmax", ["h"], ["y"])]
    model = graph_model(nodes, [("x", F32, ["N", 8])], [("y", F32, ["N", 4])], {"w": rand((8, 4)), "b": rand((4,))})
    for n in (1, 3, 5):
        x = rand((n, 8))
        np.testing.assert_allclose(run_local(model, {"x": x}, max_batch=5)[0], ort_run(model, {"x": x})[0],
                                   rtol=1e-5)


@pytest.mark.parametrize("attrs", [dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2], pads=[2, 1, 0, 1], dilations=[2, 1]),
                                   dict(group=4, pads=[1, 1, 1, 1])])
def test_conv_on_large_images_uses_bounded_tiles(attrs):
    from memserve.kernels.conv import TILE_BYTES
    from memserve.model import CompileOptions, compile_model

    w = rand((8, 16 // attrs.get("group", 1), 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], **attrs)]
    model = graph_model(nodes, [("x", F32, ["N", 16, 150, 130])], [("y", F32, ["N", 8, "h", "w"])], {"w": w})
    x = rand((2, 16, 150, 130))
    got = run_local(model, {"x": x}, max_batch=2)[0]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
    plan = compile_model(model, CompileOptions(max_batch=2))
    assert plan.work_size <= TILE_BYTES  # the whole-image im2col buffer would be 11+ MiB
