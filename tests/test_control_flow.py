"""An If whose condition comes with the request: both branches planned, each step guarded by the condition,
one branch run per request, a Select per output; against onnxruntime."""
import re

import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InvalidArgument, ResourceExhausted, UnsupportedModel
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
    with pytest.raises(InvalidArgument, match="its condition must be one bool"):
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


# -- Loop and Scan -----------------------------------------------------------------------------------------

I64 = TensorProto.INT64


def vi(name, t, shape):
    return helper.make_tensor_value_info(name, t, shape)


def loop_body(scan: bool = True, stop_at: float | None = None, capture: str | None = None):
    """h <- tanh(h * 0.5 + w[i]) (+ a captured outer tensor); the condition stays true, or turns false once
    sum(h) passes stop_at; a scan output of h at every iteration."""
    from onnx import numpy_helper

    nodes = [helper.make_node("Gather", ["w", "i"], ["wi"], axis=0),
             helper.make_node("Mul", ["h", "half"], ["hm"]), helper.make_node("Add", ["hm", "wi"], ["a"])]
    if capture:
        nodes.append(helper.make_node("Add", ["a", capture], ["a2"]))
    nodes.append(helper.make_node("Tanh", ["a2" if capture else "a"], ["h2"]))
    if stop_at is None:
        nodes.append(helper.make_node("Identity", ["c"], ["c2"]))
    else:
        nodes += [helper.make_node("ReduceSum", ["h2"], ["s"], keepdims=0),
                  helper.make_node("Less", ["s", "limit"], ["c2"])]
    outs = [vi("c2", B, []), vi("h2", F, [4])]
    if scan:
        nodes.append(helper.make_node("Identity", ["h2"], ["hs"]))
        outs.append(vi("hs", F, [4]))
    inits = [numpy_helper.from_array(np.float32(0.5), "half"), numpy_helper.from_array(np.float32(stop_at or 0), "limit")]
    return helper.make_graph(nodes, "body", [vi("i", I64, []), vi("c", B, []), vi("h", F, [4])], outs, inits)


W = np.random.default_rng(5).standard_normal((12, 4)).astype(np.float32)


def loop_model(trips=None, cond_input=False, scan=True, stop_at=None, capture=None, after=False) -> bytes:
    inputs = [("h0", F, [4])]
    weights = {"w": W}
    if trips is None:
        inputs.append(("m", I64, []))
    else:
        weights["m"] = np.array(trips, np.int64)
    if cond_input:
        inputs.append(("c0", B, []))
    else:
        weights["c0"] = np.array(True)
    if capture:
        inputs.append((capture, F, [4]))
    outs = ["h"] + (["hs"] if scan else [])
    nodes = [helper.make_node("Loop", ["m", "c0", "h0"], outs, name="loop",
                              body=loop_body(scan, stop_at, capture))]
    graph_outs = [("h", F, [4])] + ([("hs", F, ["K", 4])] if scan else [])
    if after:  # the loop's outputs read by another node: they must not be data-dependent
        nodes.append(helper.make_node("Mul", ["hs", "hs"], ["sq"]))
        graph_outs = [("sq", F, ["K", 4])]
    return graph_model(nodes, inputs, graph_outs, weights)


def test_a_loop_with_a_trip_count_known_at_load_feeds_the_nodes_after_it():
    model = loop_model(trips=6, after=True)
    feeds = {"h0": np.zeros(4, np.float32)}
    np.testing.assert_allclose(run_local(model, feeds)[0], ort_run(model, feeds)[0], rtol=1e-5)


@pytest.mark.parametrize("m", [0, 1, 7, -3])
def test_a_trip_count_that_comes_with_the_request(m):
    model = loop_model(scan=False)
    feeds = {"h0": np.full(4, 0.1, np.float32), "m": np.array(m, np.int64)}
    np.testing.assert_allclose(run_local(model, feeds)[0], ort_run(model, feeds)[0], rtol=1e-5)


def test_scan_outputs_of_a_request_trip_count_are_planned_with_input_values_and_cut_to_what_ran():
    model = loop_model(stop_at=1.5, cond_input=True)
    with pytest.raises(UnsupportedModel, match="give the trip count with input_values"):
        compile_model(model, CompileOptions())
    plan = {"m": np.array(10, np.int64)}
    for m, c in ((10, True), (4, True), (10, False)):
        feeds = {"h0": np.full(4, 0.2, np.float32), "m": np.array(m, np.int64), "c0": np.array(c)}
        got, want = run_local(model, feeds, input_values=plan), ort_run(model, feeds)
        assert got[1].shape == want[1].shape  # the iterations that ran, stopped by the condition or by m
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5)
    with pytest.raises(InvalidArgument, match="hs"):  # more iterations than were planned for
        run_local(model, {"h0": np.zeros(4, np.float32), "m": np.array(11, np.int64), "c0": np.array(True)},
                  input_values=plan)


def test_a_body_reads_outer_tensors_known_and_unknown_at_load():
    model = loop_model(trips=5, capture="bias")
    feeds = {"h0": np.zeros(4, np.float32), "bias": np.linspace(-1, 1, 4, dtype=np.float32)}
    for g, w in zip(run_local(model, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(g, w, rtol=1e-5)


def test_work_memory_does_not_grow_with_the_trip_count_and_body_weights_are_counted_once():
    small = compile_model(loop_model(trips=2, scan=False), CompileOptions())
    large = compile_model(loop_model(trips=11, scan=False), CompileOptions())
    assert small.work_size == large.work_size
    assert large.weight_size >= W.nbytes + 4 + 4  # the outer w is read by the body: it goes in with it


def test_a_loop_that_never_stops_is_refused_after_its_iteration_limit():
    from memserve.limits import MAX_LOOP_TRIPS

    model = graph_model([helper.make_node("Loop", ["", "", "h0"], ["h"], body=loop_body(scan=False))],
                        [("h0", F, [4])], [("h", F, [4])], {"w": np.zeros((MAX_LOOP_TRIPS + 1, 4), np.float32)})
    with pytest.raises(InvalidArgument, match=f"ran {MAX_LOOP_TRIPS} iterations without stopping"):
        run_local(model, {"h0": np.zeros(4, np.float32)})


def test_a_loop_carried_value_that_changes_shape_is_refused():
    body = helper.make_graph([helper.make_node("Concat", ["h", "h"], ["h2"], axis=0),
                              helper.make_node("Identity", ["c"], ["c2"])], "body",
                             [vi("i", I64, []), vi("c", B, []), vi("h", F, [4])], [vi("c2", B, []), vi("h2", F, [8])])
    model = graph_model([helper.make_node("Loop", ["m", "", "h0"], ["h"], name="grow", body=body)],
                        [("h0", F, [4])], [("h", F, [8])], {"m": np.array(3, np.int64)})
    with pytest.raises(UnsupportedModel, match=r"'grow' \(Loop\): its body turns 'h' from float32\[4\] into "
                                               r"float32\[8\]"):
        compile_model(model, CompileOptions())


def test_a_torch_scripted_loop_over_an_open_sequence_matches_onnxruntime(tmp_path):
    torch = pytest.importorskip("torch")

    class Recur(torch.nn.Module):
        def forward(self, x):
            h = torch.zeros_like(x[0])
            for i in range(x.size(0)):
                h = torch.tanh(h * 0.5 + x[i])
            return h

    path = tmp_path / "loop.onnx"
    torch.onnx.export(torch.jit.script(Recur()), (torch.randn(5, 4),), str(path), input_names=["x"],
                      output_names=["h"], dynamic_axes={"x": {0: "seq"}}, dynamo=False)
    model = path.read_bytes()
    rng = np.random.default_rng(3)
    for n in (8, 5, 1):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        np.testing.assert_allclose(run_local(model, {"x": x}, input_shapes={"x": (8, 4)})[0],
                                   ort_run(model, {"x": x})[0], rtol=1e-5)


def scan_model(reverse_in: int = 0, reverse_out: int = 0, out_axis: int = 0) -> bytes:
    body = helper.make_graph([helper.make_node("Add", ["s", "x"], ["s2"]), helper.make_node("Mul", ["s2", "x"], ["y"])],
                             "body", [vi("s", F, [3]), vi("x", F, [3])], [vi("s2", F, [3]), vi("y", F, [3])])
    node = helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_input_directions=[reverse_in],
                            scan_output_directions=[reverse_out], scan_output_axes=[out_axis])
    return graph_model([node], [("s0", F, [3]), ("xs", F, [3, "T"])], [("s", F, [3]), ("ys", F, ["a", "b"])])


@pytest.mark.parametrize("reverse_in,reverse_out,out_axis", [(0, 0, 0), (1, 0, 1), (0, 1, -1), (1, 1, 0)])
def test_scan_axes_and_directions_over_an_open_length_match_onnxruntime(reverse_in, reverse_out, out_axis):
    model = scan_model(reverse_in, reverse_out, out_axis)
    rng = np.random.default_rng(4)
    for t in (6, 2):
        feeds = {"s0": np.ones(3, np.float32), "xs": rng.standard_normal((3, t)).astype(np.float32)}
        for g, w in zip(run_local(model, feeds, input_shapes={"xs": (3, 6)}), ort_run(model, feeds)):
            np.testing.assert_allclose(g, w, rtol=1e-5)


def test_the_daemon_serves_loops_and_scans(client):
    client.load(loop_model(scan=False), name="looper")
    client.load(scan_model(), name="scanner", input_shapes={"xs": (3, 6)})
    feeds = {"h0": np.zeros(4, np.float32), "m": np.array(3, np.int64)}
    np.testing.assert_allclose(client.execute("looper", feeds)["h"], ort_run(loop_model(scan=False), feeds)[0],
                               rtol=1e-5)
    feeds = {"s0": np.ones(3, np.float32), "xs": np.ones((3, 4), np.float32)}
    got = client.execute("scanner", feeds)
    np.testing.assert_allclose(got["ys"], ort_run(scan_model(), feeds)[1], rtol=1e-5)


@pytest.mark.parametrize("trips", [2**62, -1])
def test_a_hostile_trip_count_for_scan_outputs_is_refused_or_runs_nothing(trips):
    """2^62 iterations of scan output cannot be planned (the shape bound refuses it before any memory is
    taken); a negative count runs no iteration."""
    model = loop_model(trips=trips)
    if trips < 0:
        got = run_local(model, {"h0": np.full(4, 0.5, np.float32)})
        np.testing.assert_array_equal(got[0], np.full(4, 0.5, np.float32))
        assert got[1].shape == (0, 4)
        return
    with pytest.raises((InvalidArgument, ResourceExhausted), match=r"'loop' \(Loop\) output has dimension"):
        compile_model(model, CompileOptions())


# -- what an attack session found (tests/hostile's rule: every finding stays as a test) ---------------------

def test_branch_initializers_are_their_own_even_when_names_repeat():
    """Sibling branches with an initializer of one name, and one that shadows an outer initializer: each
    branch reads its own (was: inlining mixed them up, and the If's result was wrong)."""
    from onnx import numpy_helper

    def own(value, op="Add"):
        return helper.make_graph([helper.make_node(op, ["x", "w"], [f"o{value}"])], f"b{value}", [],
                                 [helper.make_tensor_value_info(f"o{value}", F, [3])],
                                 [numpy_helper.from_array(np.full(3, value, np.float32), "w")])

    model = graph_model([helper.make_node("If", ["c"], ["y"], then_branch=own(10), else_branch=own(20)),
                         helper.make_node("Add", ["y", "w"], ["z"])],
                        [("c", B, []), ("x", F, [3])], [("z", F, [3])], {"w": np.ones(3, np.float32)})
    for c in (True, False):
        feeds = {"c": np.array(c), "x": np.arange(3, dtype=np.float32)}
        np.testing.assert_array_equal(run_local(model, feeds)[0], ort_run(model, feeds)[0])
    constant = graph_model([helper.make_node("If", ["c"], ["y"], then_branch=own(10), else_branch=own(20)),
                            helper.make_node("Add", ["y", "w"], ["z"])], [("x", F, [3])], [("z", F, [3])],
                           {"w": np.ones(3, np.float32), "c": np.array(False)})
    np.testing.assert_array_equal(run_local(constant, {"x": np.zeros(3, np.float32)})[0], np.full(3, 21))


def nested_loops() -> bytes:
    inner = helper.make_graph([helper.make_node("Identity", ["c2"], ["c2o"]), helper.make_node("Add", ["y", "one"], ["yo"])],
                              "inner", [vi("j", I64, []), vi("c2", B, []), vi("y", F, [])],
                              [vi("c2o", B, []), vi("yo", F, [])])
    outer = helper.make_graph([helper.make_node("Identity", ["c1"], ["c1o"]),
                               helper.make_node("Loop", ["n", "", "x"], ["xo"], body=inner)],
                              "outer", [vi("i", I64, []), vi("c1", B, []), vi("x", F, [])],
                              [vi("c1o", B, []), vi("xo", F, [])])
    return graph_model([helper.make_node("Loop", ["m", "", "x0"], ["y"], body=outer)],
                       [("m", I64, []), ("n", I64, []), ("x0", F, [])], [("y", F, [])],
                       {"one": np.array(1, np.float32)})


def test_nested_loops_share_one_allowance_per_request(client):
    """65,536 x 65,536 bodies would run for hours (was: the daemon kept a core busy long after the caller
    left, and SIGTERM could not stop it): the request's loops share one allowance of 65,536 bodies."""
    import time

    from memserve_client import MemserveError

    client.load(nested_loops(), name="nest")
    t = time.monotonic()
    with pytest.raises(MemserveError, match="nested loops counted together") as e:
        client.execute("nest", {"m": np.array(65536, np.int64), "n": np.array(65536, np.int64),
                                "x0": np.array(0, np.float32)})
    assert e.value.code.name == "INVALID_ARGUMENT" and time.monotonic() - t < 30
    out = client.execute("nest", {"m": np.array(3, np.int64), "n": np.array(4, np.int64), "x0": np.array(0, np.float32)})
    assert float(out["y"]) == 12.0


def test_a_loop_stops_at_its_callers_deadline(client):
    """A body keyed by its iteration number rebinds per value: slow within the allowance. The caller's
    deadline ends it, and the lane serves the next request at once."""
    import time

    from memserve_client import MemserveError

    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c2"]),
                              helper.make_node("Unsqueeze", ["i", "zero"], ["i1"]),
                              helper.make_node("Add", ["i1", "one"], ["i2"]),
                              helper.make_node("Slice", ["table", "i1", "i2"], ["s"]),
                              helper.make_node("Add", ["h", "s"], ["h2"])],
                             "body", [vi("i", I64, []), vi("c", B, []), vi("h", F, [1])],
                             [vi("c2", B, []), vi("h2", F, [1])])
    model = graph_model([helper.make_node("Loop", ["m", "", "h0"], ["h"], body=body)],
                        [("m", I64, []), ("h0", F, [1])], [("h", F, [1])],
                        {"zero": np.array([0], np.int64), "one": np.array([1], np.int64),
                         "table": np.ones(70000, np.float32)})
    client.load(model, name="slow")
    t = time.monotonic()
    with pytest.raises(MemserveError) as e:
        client.execute("slow", {"m": np.array(65000, np.int64), "h0": np.zeros(1, np.float32)}, timeout=1.5)
    assert e.value.code.name == "DEADLINE_EXCEEDED"
    out = client.execute("slow", {"m": np.array(5, np.int64), "h0": np.zeros(1, np.float32)}, timeout=30)
    assert float(out["h"][0]) == 5.0 and time.monotonic() - t < 20


@pytest.mark.parametrize("where,value,says", [
    ("if", np.array([], bool), "its condition must be one bool, got bool of shape [0]"),
    ("if", np.array([True, False]), "its condition must be one bool"),
    ("if", np.array(1.0, np.float32), "its condition must be one bool, got float32"),
    ("trip", np.array([], np.int64), "its trip count must be one int64, got int64 of shape [0]"),
    ("trip", np.array(3.0, np.float32), "its trip count must be one int64, got float32"),
    ("cond", np.array([True, True]), "its condition must be one bool"),
])
def test_conditions_and_trip_counts_that_are_not_one_value_are_refused(where, value, says):
    """Was: an IndexError traceback logged at WARNING, or a model onnxruntime refuses running anyway."""
    if where == "if":
        then = branch([helper.make_node("Relu", ["x"], ["t"])], "t")
        other = branch([helper.make_node("Neg", ["x"], ["e"])], "e")
        model = graph_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                            [("x", F, [2, 3])], [("y", F, [2, 3])], {"c": value})
    else:
        weights = {"w": W, "m": np.array(2, np.int64), "c0": np.array(True)}
        weights["m" if where == "trip" else "c0"] = value
        model = graph_model([helper.make_node("Loop", ["m", "c0", "h0"], ["h"], body=loop_body(scan=False))],
                            [("h0", F, [4])], [("h", F, [4])], weights)
    with pytest.raises(InvalidArgument, match=re.escape(says)):
        compile_model(model, CompileOptions())


def test_a_full_tree_of_runtime_ifs_is_refused_before_its_run_function_grows_past_bounds():
    """Was: a depth-15 tree of runtime Ifs (under the nesting and node limits) took over 30 s to bind on its
    first request. Sibling branches also reuse their nodes' output names here, which must not mix."""
    def tree(d):
        if d == 0:
            return helper.make_graph([helper.make_node("Neg", ["x"], ["leaf"])], "b", [],
                                     [helper.make_tensor_value_info("leaf", F, [3])])
        return helper.make_graph([helper.make_node("If", ["c"], [f"o{d}"], then_branch=tree(d - 1),
                                                   else_branch=tree(d - 1))], "b", [],
                                 [helper.make_tensor_value_info(f"o{d}", F, [3])])

    def model(depth):
        return graph_model([helper.make_node("If", ["c"], ["y"], then_branch=tree(depth), else_branch=tree(0))],
                           [("c", B, []), ("x", F, [3])], [("y", F, [3])])

    with pytest.raises(UnsupportedModel, match=r"step conditions; memserve plans at most 100000"):
        compile_model(model(13), CompileOptions())
    small = model(4)
    for c in (True, False):
        feeds = {"c": np.array(c), "x": np.array([1, -2, 3], np.float32)}
        np.testing.assert_array_equal(run_local(small, feeds)[0], ort_run(small, feeds)[0])
