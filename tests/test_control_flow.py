"""An If whose condition comes with the request: both branches planned, each step guarded by the condition,
one branch run per request, a Select per output; against onnxruntime."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InvalidArgument, UnsupportedModel
from memserve.model import CompileOptions, compile_model

from models import graph_model, ort_run, run_local

F, B = TensorProto.FLOAT, TensorProto.BOOL


def branch(nodes, out, shape=(2, 3), weights=None, name="b"):
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (weights or {}).items()]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, F, list(shape))], inits)


def if_model(cond_from_data: bool = False) -> bytes:
    """y = cond ? relu(x) * 2 + w : -(x @ I) + 1, with cond an input or sum(x) > 0."""
    then = branch([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["m"]),
                   helper.make_node("Add", ["m", "w"], ["t"])], "t", weights={"two": np.float32(2)}, name="then")
    other = branch([helper.make_node("MatMul", ["x", "eye"], ["p"]), helper.make_node("Neg", ["p"], ["n"]),
                    helper.make_node("Add", ["n", "one"], ["e"])], "e",
                   weights={"eye": np.eye(3, dtype=np.float32), "one": np.float32(1)}, name="else")
    nodes = [helper.make_node("If", ["c"], ["y"], name="choose", then_branch=then, else_branch=other)]
    inputs = [("x", F, [2, 3])]
    if cond_from_data:
        nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                 helper.make_node("Greater", ["s", "zero"], ["c"])] + nodes
        weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "zero": np.float32(0)}
    else:
        inputs.append(("c", B, []))
        weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    return graph_model(nodes, inputs, [("y", F, [2, 3])], weights)


@pytest.mark.parametrize("cond_from_data", [False, True], ids=["cond input", "cond from data"])
def test_each_request_runs_the_branch_its_condition_picks(cond_from_data):
    model = if_model(cond_from_data)
    rng = np.random.default_rng(0)
    for flip in (True, False, True):
        x = rng.standard_normal((2, 3)).astype(np.float32)
        feeds = {"x": np.abs(x) if flip else -np.abs(x)}
        if not cond_from_data:
            feeds["c"] = np.array(flip)
        np.testing.assert_allclose(run_local(model, feeds)[0], ort_run(model, feeds)[0], rtol=1e-6)


def test_the_plan_holds_both_branches_guarded_and_the_work_each_needs():
    plan = compile_model(if_model(), CompileOptions())
    c = plan.inputs[1].slot
    assert [(s.node.op_type, s.guard) for s in plan.steps] == [
        ("Relu", [(c, True)]), ("Mul", [(c, True)]), ("Add", [(c, True)]),
        ("MatMul", [(c, False)]), ("Neg", [(c, False)]), ("Add", [(c, False)]), ("Select", [])]
    assert plan.work_size >= plan.work_lower_bound > 0


def test_a_branch_that_is_not_picked_does_not_run():
    """The then branch gathers with a request's index: out of range, it fails, but only when it runs."""
    then = branch([helper.make_node("Gather", ["x", "i"], ["g"], axis=1)], "g", shape=(2, 1), name="then")
    other = branch([helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["e"])], "e", shape=(2, 1), name="else",
                   weights={"s0": np.array([0]), "s1": np.array([1]), "ax": np.array([1])})
    model = graph_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                        [("x", F, [2, 3]), ("c", B, []), ("i", TensorProto.INT64, [1])], [("y", F, [2, 1])])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    bad = np.array([7])
    np.testing.assert_array_equal(run_local(model, {"x": x, "c": np.array(False), "i": bad})[0], x[:, :1])
    np.testing.assert_array_equal(run_local(model, {"x": x, "c": np.array(True), "i": np.array([2])})[0], x[:, 2:])
    with pytest.raises(InvalidArgument, match="Gather"):
        run_local(model, {"x": x, "c": np.array(True), "i": bad})


def test_nested_ifs_and_branches_that_return_outer_tensors():
    inner = helper.make_node("If", ["c2"], ["z"], then_branch=branch([helper.make_node("Neg", ["x"], ["n"])], "n"),
                             else_branch=branch([helper.make_node("Identity", ["x"], ["same"])], "same"))
    outer_then = helper.make_graph([inner], "ot", [], [helper.make_tensor_value_info("z", F, [2, 3])])
    outer_else = helper.make_graph([helper.make_node("Identity", ["w"], ["w2"])], "oe", [],
                                   [helper.make_tensor_value_info("w2", F, [2, 3])])
    model = graph_model([helper.make_node("If", ["c1"], ["y"], then_branch=outer_then, else_branch=outer_else)],
                        [("x", F, [2, 3]), ("c1", B, []), ("c2", B, [])], [("y", F, [2, 3])],
                        {"w": np.full((2, 3), 7, np.float32)})
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for c1 in (True, False):
        for c2 in (True, False):
            feeds = {"x": x, "c1": np.array(c1), "c2": np.array(c2)}
            np.testing.assert_array_equal(run_local(model, feeds)[0], ort_run(model, feeds)[0])


def test_an_if_under_an_open_batch_runs_at_each_batch_size():
    then = branch([helper.make_node("Relu", ["x"], ["t"])], "t", shape=("N", 3))
    other = branch([helper.make_node("Sigmoid", ["x"], ["e"])], "e", shape=("N", 3))
    model = graph_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                        [("x", F, ["N", 3]), ("c", B, [])], [("y", F, ["N", 3])])
    rng = np.random.default_rng(1)
    for n, c in ((1, True), (4, False), (3, True)):
        feeds = {"x": rng.standard_normal((n, 3)).astype(np.float32), "c": np.array(c)}
        np.testing.assert_allclose(run_local(model, feeds, max_batch=4)[0], ort_run(model, feeds)[0], rtol=1e-6)


def test_branches_whose_shapes_differ_are_refused_naming_the_node():
    then = branch([helper.make_node("Relu", ["x"], ["t"])], "t")
    other = branch([helper.make_node("ReduceSum", ["x"], ["e"], keepdims=1)], "e", shape=(1, 1))
    model = graph_model([helper.make_node("If", ["c"], ["y"], name="fork", then_branch=then, else_branch=other)],
                        [("x", F, [2, 3]), ("c", B, [])], [("y", F, [2, 3])])
    with pytest.raises(UnsupportedModel, match=r"'fork/y' \(If\): its branches give 'y' as float32\[2, 3\] and "
                                               r"float32\[1, 1\]"):
        compile_model(model, CompileOptions())


def test_a_condition_that_is_not_one_bool_is_refused():
    then = branch([helper.make_node("Relu", ["x"], ["t"])], "t")
    other = branch([helper.make_node("Neg", ["x"], ["e"])], "e")
    model = graph_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                        [("x", F, [2, 3]), ("c", B, [2])], [("y", F, [2, 3])])
    with pytest.raises(InvalidArgument, match="the condition must be one bool"):
        compile_model(model, CompileOptions())


def test_the_daemon_serves_an_if_model(client):
    client.load(if_model(), name="iffy")
    x = np.ones((2, 3), np.float32)
    for c in (True, False):
        got = client.execute("iffy", {"x": x, "c": np.array(c)})["y"]
        np.testing.assert_allclose(got, ort_run(if_model(), {"x": x, "c": np.array(c)})[0])


def test_the_generated_function_and_the_step_list_take_the_same_branch(reg):
    from test_engine import _both_forms

    from memserve.registry import LoadOptions

    m = reg.load(if_model(), LoadOptions(name="iffy"))
    x = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        got, ref = _both_forms(reg, m, feeds)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_allclose(got[0], ort_run(if_model(), feeds)[0], rtol=1e-6)
