"""Elementwise chains (model/chains.py, kernels/chain.py): which runs fuse, and that they compute what
the separate nodes compute, at every batch size and dtype."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import UnsupportedModel
from memserve.model import compile_model

from models import F32, graph_model, ort_run, run_local

F64 = TensorProto.DOUBLE


def ops(model: bytes) -> list[str]:
    return [s.node.op_type for s in compile_model(model).steps]


def scalar(name: str, value: float, dtype=np.float32) -> dict:
    return {name: np.asarray(value, dtype)}


def every_op_model(elem=F32, n: int = 3000) -> bytes:
    """Each chainable op once, constants on both sides, a second tensor operand, squares and Clip."""
    dt = np.float32 if elem == F32 else np.float64
    node = helper.make_node
    nodes = [node("Mul", ["x", "half"], ["a"]), node("Add", ["a", "y"], ["b"]), node("Relu", ["b"], ["c"]),
             node("Sub", ["one", "c"], ["d"]), node("HardSwish", ["d"], ["e"]), node("Pow", ["e", "two"], ["f"]),
             node("Div", ["one", "f"], ["g"]), node("Max", ["g", "y"], ["h"]), node("Min", ["three", "h"], ["i"]),
             node("Neg", ["i"], ["j"]), node("LeakyRelu", ["j"], ["k"], alpha=1.5), node("Abs", ["k"], ["l"]),
             node("Sqrt", ["l"], ["m"]), node("Reciprocal", ["m"], ["n"]),
             node("HardSigmoid", ["n"], ["o"], alpha=0.3, beta=0.4), node("Sub", ["o", "x"], ["p"]),
             node("Clip", ["p", "lo", ""], ["z"])]
    weights = {**scalar("half", 0.5, dt), **scalar("one", 1, dt), **scalar("two", 2, dt),
               **scalar("three", 3, dt), **scalar("lo", -0.25, dt)}
    return graph_model(nodes, [("x", elem, ["N", n]), ("y", elem, ["N", n])], [("z", elem, ["N", n])], weights)


def every_op_numpy(x, y):
    dt = x.dtype.type
    c = np.maximum(x * dt(0.5) + y, 0)
    d = 1 - c
    f = (d * np.clip(d / 6 + dt(0.5), 0, 1)) ** 2
    i = np.minimum(3, np.maximum(1 / f, y))
    k = np.where(-i > 0, -i, -i * dt(1.5))
    o = np.clip((1 / np.sqrt(np.abs(k))) * dt(0.3) + dt(0.4), 0, 1)
    return np.maximum(o - x, dt(-0.25))


@pytest.mark.parametrize("elem", [F32, F64])
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_a_chain_of_every_op_is_one_step_and_matches_onnxruntime(elem, batch):
    model = every_op_model(elem)
    assert ops(model) == ["ElementwiseChain"]
    dt = np.float32 if elem == F32 else np.float64
    r = np.random.default_rng(batch)
    feeds = {"x": r.standard_normal((batch, 3000)).astype(dt), "y": r.standard_normal((batch, 3000)).astype(dt)}
    ours = run_local(model, feeds, max_batch=4)[0]
    np.testing.assert_allclose(ours, every_op_numpy(feeds["x"], feeds["y"]), rtol=1e-5, atol=1e-6)
    if elem == F32:  # onnxruntime has no float64 HardSigmoid
        np.testing.assert_allclose(ours, ort_run(model, feeds)[0], rtol=1e-5, atol=1e-6)


def test_batched_rows_are_byte_identical_to_single_rows():
    model = every_op_model()
    r = np.random.default_rng(0)
    feeds = {"x": r.standard_normal((4, 3000)).astype(np.float32),
             "y": r.standard_normal((4, 3000)).astype(np.float32)}
    whole = run_local(model, feeds, max_batch=4)[0]
    rows = [run_local(model, {k: v[i:i + 1] for k, v in feeds.items()}, max_batch=4)[0] for i in range(4)]
    assert whole.tobytes() == np.concatenate(rows).tobytes()


def test_the_chain_drops_its_intermediates_from_work_memory():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Mul", ["m", "s"], ["a"]),
             helper.make_node("Add", ["a", "m"], ["b"]), helper.make_node("Relu", ["b"], ["y"])]
    w = np.eye(64, dtype=np.float32)
    model = graph_model(nodes, [("x", F32, [16, 64])], [("y", F32, [16, 64])], {"w": w, **scalar("s", 2)})
    plan = compile_model(model)
    assert [s.node.op_type for s in plan.steps] == ["MatMul", "ElementwiseChain"]
    assert plan.work_size == plan.work_lower_bound
    x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], np.maximum(x * 2 + x, 0))


@pytest.mark.parametrize("n", [1, 1023, 1024, 1025, 5000])
def test_lengths_around_the_block_size(n):
    nodes = [helper.make_node("Mul", ["x", "x"], ["a"]), helper.make_node("Sub", ["a", "x"], ["y"])]
    model = graph_model(nodes, [("x", F32, [n])], [("y", F32, [n])])
    assert ops(model) == ["ElementwiseChain"]
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], x * x - x)


def test_what_does_not_chain():
    node = helper.make_node
    # An intermediate read twice, or a graph output, ends the chain; Sigmoid (numpy's SIMD exp is faster)
    # and other powers are left alone; a weight of the full shape is no operand (its shape is fixed).
    read_twice = graph_model([node("Relu", ["x"], ["a"]), node("Neg", ["a"], ["b"]), node("Add", ["a", "b"], ["y"])],
                             [("x", F32, [8])], [("y", F32, [8])])
    assert ops(read_twice) == ["Relu", "ElementwiseChain"]
    exposed = graph_model([node("Relu", ["x"], ["a"]), node("Neg", ["a"], ["y"])],
                          [("x", F32, [8])], [("y", F32, [8]), ("a", F32, [8])])
    assert "ElementwiseChain" not in ops(exposed)
    sigmoid = graph_model([node("Relu", ["x"], ["a"]), node("Sigmoid", ["a"], ["y"])], [("x", F32, [8])],
                          [("y", F32, [8])])
    assert ops(sigmoid) == ["Relu", "Sigmoid"]
    cube = graph_model([node("Relu", ["x"], ["a"]), node("Pow", ["a", "e"], ["y"])], [("x", F32, [8])],
                       [("y", F32, [8])], scalar("e", 3))
    assert ops(cube) == ["Relu", "Pow"]
    weight = graph_model([node("Relu", ["x"], ["a"]), node("Add", ["a", "w"], ["y"])], [("x", F32, [8])],
                         [("y", F32, [8])], {"w": np.ones(8, np.float32)})
    assert ops(weight) == ["Relu", "Add"]
    broadcast = graph_model([node("Relu", ["x"], ["a"]), node("Add", ["a", "b"], ["y"])],
                            [("x", F32, [4, 8]), ("b", F32, [8])], [("y", F32, [4, 8])])
    assert ops(broadcast) == ["Relu", "Add"]
    ints = graph_model([node("Relu", ["x"], ["a"]), node("Neg", ["a"], ["y"])], [("x", TensorProto.INT32, [8])],
                       [("y", TensorProto.INT32, [8])])
    assert "ElementwiseChain" not in ops(ints)


def test_more_than_four_tensor_operands_split_the_chain():
    names = ["x0", "x1", "x2", "x3", "x4", "x5"]
    nodes = [helper.make_node("Add", ["x0", "x1"], ["s1"])]
    nodes += [helper.make_node("Add", [f"s{k}", f"x{k + 1}"], [f"s{k + 1}"]) for k in range(1, 5)]
    model = graph_model(nodes, [(n, F32, [100]) for n in names], [("s5", F32, [100])])
    steps = ops(model)
    assert steps.count("ElementwiseChain") >= 1 and len(steps) < 5
    feeds = {n: np.full(100, k + 1, np.float32) for k, n in enumerate(names)}
    np.testing.assert_array_equal(run_local(model, feeds)[0], np.full(100, 21, np.float32))


def test_nan_and_inf_flow_through_like_the_separate_nodes():
    nodes = [helper.make_node("Div", ["x", "y"], ["a"]), helper.make_node("Mul", ["a", "y"], ["b"]),
             helper.make_node("Sqrt", ["b"], ["z"])]
    model = graph_model(nodes, [("x", F32, [6]), ("y", F32, [6])], [("z", F32, [6])])
    assert ops(model) == ["ElementwiseChain"]
    feeds = {"x": np.array([1, -1, 0, np.inf, np.nan, 4], np.float32),
             "y": np.array([0, 0, 0, 2, 1, -1], np.float32)}
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(run_local(model, feeds)[0], ort_run(model, feeds)[0])


def test_a_model_cannot_name_the_compilers_own_ops():
    """An ElementwiseChain's program indexes memory: an uploaded model naming it is refused."""
    node = helper.make_node("ElementwiseChain", ["x"], ["y"], domain="memserve",
                            program=[16, -1, 99, 0], registers=2, consts=[0.0, 1.0])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F32, [8])],
                          [helper.make_tensor_value_info("y", F32, [8])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("memserve", 1)])
    with pytest.raises(UnsupportedModel, match="ElementwiseChain"):
        compile_model(model.SerializeToString())


def test_read_only_and_unaligned_inputs_run_as_they_arrive():
    """Inputs are views on request bytes (read-only) and, from an HTTP body, at any offset (unaligned):
    the compiled kernel takes both as they are."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    model = graph_model(nodes, [("x", F32, [5])], [("y", F32, [5])])
    raw = bytes(1) + np.arange(-2, 3, dtype=np.float32).tobytes()
    x = np.frombuffer(raw, np.float32, count=5, offset=1)
    assert not x.flags.writeable and not x.flags.aligned
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], np.maximum(np.arange(-2, 3) ** 2, 0))
