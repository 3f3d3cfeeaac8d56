"""compile(): storage, exact offsets, aliases, batch handling, and every refusal."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InputMismatch, InvalidArgument, ModelParseError, UnsupportedModel
from memserve.model import CompileOptions, compile_model
from memserve.model.plan import INPUT, IO, WEIGHT

from models import F32, graph_model, mlp_bytes, run_local, with_external_data


def slots(plan):
    return {s.name: s for s in plan.tensors}


def test_example_mlp_plan_has_hand_checked_offsets():
    # 64-128-128-10 at batch 1: activations are 512 bytes. Each Gemm -> Relu is one Dense step (the Relu's
    # output is the Dense's), so a0 lives at steps 0-1 and a1 at steps 1-2: they overlap at step 1 and
    # take offsets 0 and 512; h2 (steps 2-3) fits under a1 at 0, and the softmax's 64-byte reduction,
    # live at step 3 with h2, goes right above it.
    plan = compile_model(mlp_bytes())
    s = slots(plan)
    assert [st.node.op_type for st in plan.steps] == ["Dense", "Dense", "Dense", "Softmax"]
    assert {n: s[n].offset for n in ("a0", "a1", "h2", "softmax:scratch0")} == {
        "a0": 0, "a1": 512, "h2": 0, "softmax:scratch0": 64}
    assert (plan.work_size, plan.work_lower_bound) == (1024, 1024)
    # Weights: each at the next 64-byte boundary, in first-use order.
    assert [s[n].offset for n in ("W0", "b0", "W1", "b1", "W2", "b2")] == [0, 32768, 33280, 98816, 99328, 104448]
    assert plan.weight_size == 104512
    assert s["x"].storage == INPUT and s["probs"].storage == IO and s["W0"].storage == WEIGHT


def test_max_batch_scales_work_memory():
    plan = compile_model(mlp_bytes(), CompileOptions(max_batch=8))
    assert plan.max_batch == 8 and plan.work_size == 8192
    assert plan.inputs[0].shape == (-1, 64) and plan.outputs[0].shape == (-1, 10)


def test_aliases_cost_nothing_and_view_their_root():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["rs"]),
        helper.make_node("Flatten", ["rs"], ["f"], axis=1),
        helper.make_node("Identity", ["f"], ["i"]),
        helper.make_node("Sigmoid", ["i"], ["y"]),
    ]
    model = graph_model(nodes, [("x", F32, ["N", 2, 8])], [("y", F32, ["N", 16])],
                        {"shape": np.array([-1, 4, 4], np.int64)})
    plan = compile_model(model, CompileOptions(max_batch=2))
    s = slots(plan)
    assert s["rs"].root == s["f"].root == s["i"].root == plan.tensors.index(s["r"])
    assert plan.work_size == 128 and plan.work_lower_bound == 128  # only r: 2*16 floats
    x = np.random.default_rng(0).standard_normal((2, 2, 8)).astype(np.float32)
    (y,) = run_local(model, {"x": x}, max_batch=2)
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-np.maximum(x, 0).reshape(2, 16))), rtol=1e-6)


def test_output_that_is_an_alias_lives_in_io_memory():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Reshape", ["r", "shape"], ["y"])]
    model = graph_model(nodes, [("x", F32, [2, 3])], [("y", F32, [6])], {"shape": np.array([6], np.int64)})
    plan = compile_model(model)
    assert slots(plan)["r"].storage == IO and plan.work_size == 0
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], np.maximum(x, 0).reshape(6))


def test_outputs_that_are_inputs_weights_or_repeats_get_copies():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["r2"])]
    model = graph_model(nodes, [("x", F32, [3])], [("r", F32, [3]), ("r2", F32, [3]), ("x", F32, [3]),
                                                    ("w", F32, [3])], {"w": np.ones(3, np.float32)})
    x = np.array([-1, 0, 2], np.float32)
    r, r2, x_out, w = run_local(model, {"x": x})
    np.testing.assert_array_equal(r, [0, 0, 2])
    np.testing.assert_array_equal(r2, [0, 0, 2])
    np.testing.assert_array_equal(x_out, x)
    np.testing.assert_array_equal(w, np.ones(3))


def test_input_validation_at_execute():
    plan = compile_model(mlp_bytes(), CompileOptions(max_batch=4))
    ok = np.zeros((3, 64), np.float32)
    assert plan.batch_of({"x": ok}) == 3
    for bad, msg in [({}, "missing"), ({"x": ok, "z": ok}, "unknown"),
                     ({"x": ok.astype(np.float64)}, "must be float32"),
                     ({"x": np.zeros((3, 63), np.float32)}, "must have shape"),
                     ({"x": np.zeros((5, 64), np.float32)}, "1 to 4")]:
        with pytest.raises(InputMismatch, match=msg):
            plan.batch_of(bad)


def test_open_dimensions_must_be_given():
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = graph_model(nodes, [("x", F32, ["N", "seq"])], [("y", F32, ["N", "seq"])])
    with pytest.raises(InvalidArgument, match=r"dimension 1 \('seq'\) is left open"):
        compile_model(model)
    plan = compile_model(model, CompileOptions(input_shapes={"x": (4, 7)}))
    assert plan.max_batch == 4 and plan.inputs[0].shape == (-1, -1) and plan.inputs[0].max_shape == (4, 7)
    with pytest.raises(InvalidArgument, match="not inputs of the model"):
        compile_model(model, CompileOptions(input_shapes={"nope": (1, 2)}))


def test_garbage_and_empty_bytes():
    with pytest.raises(ModelParseError, match="not an ONNX"):
        compile_model(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelParseError, match="empty"):
        compile_model(b"")
    with pytest.raises(ModelParseError):
        compile_model(mlp_bytes()[:500])  # truncated


def test_unsupported_op_is_named():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Shrink", ["r"], ["y"], name="norm")]
    model = graph_model(nodes, [("x", F32, [2])], [("y", F32, [2])])
    with pytest.raises(UnsupportedModel, match=r"'norm' \(Shrink\)"):
        compile_model(model)


def _branch(op, name):
    return helper.make_graph([helper.make_node(op, ["x"], [name])], name, [], [helper.make_tensor_value_info(name, F32, [2])])


def test_if_with_a_condition_known_at_load_is_inlined():
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [False])),
             helper.make_node("If", ["c"], ["y"], name="choose", then_branch=_branch("Relu", "t"),
                              else_branch=_branch("Neg", "e"))]
    model = graph_model(nodes, [("x", F32, [2])], [("y", F32, [2])])
    plan = compile_model(model)
    assert [s.node.op_type for s in plan.steps] == ["Neg", "Identity"]
    np.testing.assert_array_equal(run_local(model, {"x": np.array([1, -2], np.float32)})[0], [-1, 2])


def test_a_loop_whose_body_does_not_fit_it_is_refused_naming_the_node():
    body = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "b", [],
                             [helper.make_tensor_value_info("o", F32, [2])])
    loop = [helper.make_node("Loop", ["", "c"], ["y"], name="loopy", body=body)]
    model = graph_model(loop, [("c", TensorProto.BOOL, []), ("x", F32, [2])], [("y", F32, [2])])
    with pytest.raises(InvalidArgument, match=r"'loopy' \(Loop\): its body takes 0 inputs and gives 1 outputs "
                                               r"for 0 loop-carried values"):
        compile_model(model)


def test_external_data_is_refused():
    with pytest.raises(UnsupportedModel, match="external file"):
        compile_model(with_external_data(mlp_bytes()))


def test_only_inputs_with_an_open_leading_dimension_are_batched():
    nodes = [helper.make_node("Add", ["x", "bias"], ["y"])]
    model = graph_model(nodes, [("x", F32, ["N", 3]), ("bias", F32, [1, 3])], [("y", F32, ["N", 3])])
    plan = compile_model(model, CompileOptions(max_batch=4))
    assert [s.shape for s in plan.inputs] == [(-1, 3), (1, 3)]
    x, bias = np.ones((2, 3), np.float32), np.arange(3, dtype=np.float32).reshape(1, 3)
    assert plan.batch_of({"x": x, "bias": bias}) == 2
    np.testing.assert_array_equal(run_local(model, {"x": x, "bias": bias}, max_batch=4)[0], x + bias)


def shape_chain_model():
    """What the TorchScript exporter emits: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "target"], ["flat"]),
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),  # weights only: folded at load
        helper.make_node("MatMul", ["flat", "wt"], ["y"]),
    ]
    w = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    return graph_model(nodes, [("x", F32, ["N", 3, 4])], [("y", F32, ["N", 5])],
                       {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
                        "minus1": np.array([-1], np.int64), "w": w}, opset=13), w


def test_shape_chains_are_computed_per_batch_size_and_weight_math_is_folded():
    from memserve.model.plan import BIND, RUN
    model, w = shape_chain_model()
    plan = compile_model(model, CompileOptions(max_batch=4))
    run = [s.node.op_type for s in plan.steps if s.phase == RUN]
    assert run == ["Relu", "Reshape", "MatMul"]
    assert [s.node.op_type for s in plan.steps if s.phase == BIND] == ["Shape", "Gather", "Unsqueeze", "Concat"]
    s = slots(plan)
    assert "w" not in s and s["wt"].storage == WEIGHT  # only the transposed copy is stored
    assert plan.weight_size == 256  # 5 x 12 float32, aligned; the shape constants stay on the host
    for n in (1, 3, 4):
        x = np.random.default_rng(n).standard_normal((n, 3, 4)).astype(np.float32)
        np.testing.assert_allclose(run_local(model, {"x": x}, max_batch=4)[0],
                                   np.maximum(x, 0).reshape(n, 12) @ w.T, rtol=1e-5)


def test_reshape_target_from_a_graph_input_is_refused():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="r")]
    model = graph_model(nodes, [("x", F32, [2, 3]), ("shape", TensorProto.INT64, [2])], [("y", F32, [3, 2])])
    with pytest.raises(UnsupportedModel, match=r"'r' \(Reshape\): input 'shape' must be known"):
        compile_model(model)


def test_elementwise_steps_write_over_inputs_that_die():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Sigmoid", ["r"], ["s"]), helper.make_node("MatMul", ["x", "w"], ["m2"]),
             helper.make_node("Add", ["s", "m2"], ["a"]), helper.make_node("Tanh", ["a"], ["y"])]
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    # w is an input, not a weight: MatMul -> Relu by a constant would be one Dense step (test_dense.py).
    model = graph_model(nodes, [("x", F32, [4, 8]), ("w", F32, [8, 8])], [("y", F32, [4, 8])])
    plan = compile_model(model)
    s = slots(plan)
    m = plan.tensors.index(s["m"])
    assert s["r"].root == s["s"].root == m  # Relu and Sigmoid reuse m's bytes
    assert s["a"].root in (m, plan.tensors.index(s["m2"]))  # Add reuses one of its dying inputs
    assert plan.work_size == 256  # two 128-byte tensors live at once, never more
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    want = np.tanh(1 / (1 + np.exp(-np.maximum(x @ w, 0))) + x @ w)
    np.testing.assert_allclose(run_local(model, {"x": x, "w": w})[0], want, rtol=1e-5)


def test_an_input_still_needed_later_is_not_overwritten():
    nodes = [helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Sigmoid", ["e"], ["r"]),
             helper.make_node("Add", ["r", "e"], ["y"])]
    model = graph_model(nodes, [("x", F32, [4])], [("y", F32, [4])])
    s = slots(compile_model(model))
    assert s["r"].root != s["e"].root  # e is read again by Add
    x = np.array([-1, 0, 1, 2], np.float32)
    e = np.exp(x)
    np.testing.assert_allclose(run_local(model, {"x": x})[0], 1 / (1 + np.exp(-e)) + e, rtol=1e-6)


def test_opset_1_reshape_takes_its_shape_from_the_attribute():
    """Reshape before opset 5 has a `shape` attribute, not an input; it used to answer INTERNAL."""
    model = graph_model([helper.make_node("Reshape", ["x"], ["y"], shape=[4])], [("x", F32, [2, 2])],
                        [("y", F32, [4])], opset=1)
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], x.reshape(4))
