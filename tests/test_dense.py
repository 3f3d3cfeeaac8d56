"""Dense: MatMul/Gemm -> Add(bias) -> Relu fused into one step (model/fuse.py, kernels/dense.py), both of its
paths (the compiled small product, BLAS + compiled epilogue) against onnxruntime; the compiled LinearClassifier."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from memserve.kernels import dense
from memserve.model import CompileOptions, compile_model
from memserve.model.plan import RUN

from models import F32, graph_model, ort_run, run_local

F64 = TensorProto.DOUBLE


def run_ops(model, **options):
    return [s.node.op_type for s in compile_model(model, CompileOptions(**options)).steps if s.phase == RUN]


def mlp_layer(k, n, elem=F32, rank=2, relu=True, bias_shape=None, seed=0):
    dt = np.float32 if elem == F32 else np.float64
    r = np.random.default_rng(seed)
    weights = {"w": r.standard_normal((k, n)).astype(dt), "b": r.standard_normal(bias_shape or (n,)).astype(dt)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["a" if relu else "y"])]
    if relu:
        nodes.append(helper.make_node("Relu", ["a"], ["y"]))
    lead = ["N"] + [3] * (rank - 2)
    out = [1] * (len(bias_shape or ()) - rank) + lead + [n]
    return graph_model(nodes, [("x", elem, lead + [k])], [("y", elem, out)], weights)


def sizes(m, k, n):
    return "small" if dense.compiled_path(m, k, n) else "blas"


@pytest.mark.parametrize("elem", [F32, F64])
@pytest.mark.parametrize("m,k,n", [(1, 64, 10), (3, 20, 100), (4, 7, 5), (5, 64, 64), (64, 128, 128), (200, 33, 65)])
def test_matmul_add_relu_is_one_dense_step_matching_onnxruntime(elem, m, k, n):
    model = mlp_layer(k, n, elem)
    assert run_ops(model, max_batch=m) == ["Dense"]
    dt = np.float32 if elem == F32 else np.float64
    x = np.random.default_rng(m).standard_normal((m, k)).astype(dt)
    got = run_local(model, {"x": x}, max_batch=m)[0]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)
    assert sizes(m, k, n) in ("small", "blas")


def test_both_paths_are_taken_by_the_shapes_above():
    assert sizes(1, 64, 10) == "small" and sizes(64, 128, 128) == "blas" and sizes(5, 64, 64) == "blas"
    assert sizes(4, 7, 5) == "small" and sizes(3, 20, 100) == "small" and sizes(200, 33, 65) == "blas"


def test_three_d_input_and_no_activation():
    model = mlp_layer(16, 24, rank=3, relu=False)
    assert run_ops(model, max_batch=2) == ["Dense"]
    x = np.random.default_rng(0).standard_normal((2, 3, 16)).astype(np.float32)
    np.testing.assert_allclose(run_local(model, {"x": x}, max_batch=2)[0], ort_run(model, {"x": x})[0],
                               rtol=1e-4, atol=1e-5)


def test_a_bias_of_higher_rank_than_the_product_is_not_fused():
    # (1, 1, n) added to a 2-D product broadcasts to 3-D: not a bias of the Dense.
    model = mlp_layer(8, 4, bias_shape=(1, 1, 4))
    assert "Dense" not in run_ops(model, max_batch=2)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    got = run_local(model, {"x": x}, max_batch=2)[0]
    assert got.shape == (1, 2, 4)
    np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def torch_linear_gemm(shared=False):
    """Gemm(transB=1) -> Relu, as torch exports nn.Linear; `shared`: a second Gemm reads the same B."""
    r = np.random.default_rng(1)
    weights = {"w": r.standard_normal((6, 10)).astype(np.float32), "b": r.standard_normal(6).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1), helper.make_node("Relu", ["g"], ["y"])]
    outputs = [("y", F32, ["N", 6])]
    if shared:
        nodes.append(helper.make_node("Gemm", ["x", "w"], ["z"], transB=1))
        outputs.append(("z", F32, ["N", 6]))
    return graph_model(nodes, [("x", F32, ["N", 10])], outputs, weights)


def test_torch_linear_gemm_is_transposed_once_with_the_same_weight_bytes():
    model = torch_linear_gemm()
    plan = compile_model(model, CompileOptions(max_batch=4))
    assert [s.node.op_type for s in plan.steps if s.phase == RUN] == ["Dense"]
    assert plan.weight_size <= 64 * 2 + 6 * 10 * 4 + 6 * 4  # W^T and b, each aligned: the original B is gone
    x = np.random.default_rng(2).standard_normal((4, 10)).astype(np.float32)
    np.testing.assert_allclose(run_local(model, {"x": x}, max_batch=4)[0], ort_run(model, {"x": x})[0],
                               rtol=1e-4, atol=1e-5)


def test_a_transposed_weight_another_node_reads_is_not_copied():
    model = torch_linear_gemm(shared=True)
    assert run_ops(model, max_batch=4) == ["Gemm", "Relu", "Gemm"]
    x = np.random.default_rng(3).standard_normal((4, 10)).astype(np.float32)
    for got, want in zip(run_local(model, {"x": x}, max_batch=4), ort_run(model, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_gemm_with_alpha_stays_gemm():
    w = np.ones((4, 3), np.float32)
    model = graph_model([helper.make_node("Gemm", ["x", "w"], ["g"], alpha=2.0), helper.make_node("Relu", ["g"], ["y"])],
                        [("x", F32, [2, 4])], [("y", F32, [2, 3])], {"w": w})
    assert run_ops(model) == ["Gemm", "Relu"]


@pytest.mark.parametrize("m", [1, 64])
def test_nan_and_inf_pass_through_like_numpy(m):
    model = mlp_layer(4, 8 if m == 1 else 4096)
    x = np.random.default_rng(0).standard_normal((m, 4)).astype(np.float32)
    x[0, 0], x[-1, 1] = np.nan, np.inf
    got = run_local(model, {"x": x}, max_batch=m)[0]
    w, b = (numpy_helper.to_array(t) for t in __import__("onnx").load_from_string(model).graph.initializer)
    want = np.maximum(x @ w + b, 0)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# Binary with NONE/SOFTMAX/SOFTMAX_ZERO and PROBIT differ from onnxruntime's conventions (ml_common.h's
# write_scores) on the numpy path as on the compiled one: skl2onnx emits none of them.
@pytest.mark.parametrize("transform,classes", [("NONE", 3), ("LOGISTIC", 3), ("SOFTMAX", 3), ("SOFTMAX_ZERO", 3),
                                               ("LOGISTIC", 2)])
def test_linear_classifier_post_transforms_match_onnxruntime(transform, classes):
    r = np.random.default_rng(classes)
    f = 5
    rows = 1 if classes == 2 else classes  # binary: one row of coefficients, scores [-s, s]
    node = helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                            coefficients=r.standard_normal(rows * f).tolist(), intercepts=r.standard_normal(rows).tolist(),
                            classlabels_ints=list(range(10, 10 + classes)), post_transform=transform)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F32, ["N", f])],
                          [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                           helper.make_tensor_value_info("scores", F32, ["N", classes])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    data = model.SerializeToString()
    x = r.standard_normal((7, f)).astype(np.float32) * (0.3 if transform == "PROBIT" else 1)
    x[3] = np.nan
    got, want = run_local(data, {"x": x}, max_batch=8), ort_run(data, {"x": x})
    np.testing.assert_array_equal(got[0][np.arange(7) != 3], want[0][np.arange(7) != 3])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
