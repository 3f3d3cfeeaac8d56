"""Load-time work grows near-linearly with the model (issue 9, item 5).

A 3 MB model can hold 100k nodes; anything on the load path that looks at every node (or slot, or
placed tensor) once per node makes such a model take minutes to compile. These tests build long
chains, reverse-ordered node lists, many outputs and many fusable blocks, check that the plan is
right, and count the work deterministically, never by timing:

- `lines_executed`: the Python lines the calling thread runs (sys.settrace), the whole compile;
- the planner's own count (`MemoryPlan.visits`);

and require that doubling the model at most 2.5x that work (a quadratic step would make it 4x).
"""
from __future__ import annotations

import random
import sys

import numpy as np
import pytest
from onnx import helper

from memserve.engine import Executable
from memserve.errors import ModelParseError
from memserve.kernels import Node
from memserve.model import CompileOptions, compile_model
from memserve.model import compile as compile_module
from memserve.model.compile import build_plan
from memserve.model.onnx_import import _topological, import_onnx
from memserve.model.plan import RUN, WORK
from memserve.planner import SWEEP

from models import F32, graph_model, op_chain, ort_run, run_local

SIZES = (2000, 4000, 8000)
GROWTH = 2.5  # work at 2n over work at n; 2 is linear, 4 quadratic


def lines_executed(fn) -> tuple[object, int]:
    """(fn(), the number of Python lines the calling thread ran for it)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = fn()
    finally:
        sys.settrace(previous)
    return result, count


def assert_near_linear(work: dict[int, int], what: str) -> None:
    sizes = sorted(work)
    for small, large in zip(sizes, sizes[1:]):
        assert work[large] <= GROWTH * (large / small) / 2 * work[small], f"{what} grows faster than linearly: {work}"


chain = op_chain


def check_work_plan(plan) -> None:
    """Every pair of work tensors live at the same step is disjoint in bytes; size is the lower bound."""
    placements = sorted(plan.placements, key=lambda p: p.first)
    for k, a in enumerate(placements):
        for b in placements[k + 1:]:
            if b.first > a.last:
                break
            assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)
    assert plan.work_size == plan.work_lower_bound


@pytest.fixture(autouse=True, scope="module")
def warm():
    """Imports and first-use caches are paid once, before anything is counted."""
    compile_model(chain(8, "Transpose"))
    compile_model(chain(8, "Relu"))
    compile_model(layer_norm_gelu_blocks(2))


@pytest.mark.parametrize("op", ["Transpose", "Sigmoid", "Relu"])
def test_long_chains_compile_and_bind_in_linear_work(op, monkeypatch):
    planned = []
    real = compile_module.plan_offsets
    monkeypatch.setattr(compile_module, "plan_offsets", lambda reqs: planned.append(real(reqs)) or planned[-1])
    compile_lines, bind_lines, visits = {}, {}, {}
    for n in SIZES:
        plan, compile_lines[n] = lines_executed(lambda: compile_model(chain(n, op)))
        visits[n] = planned[-1].visits
        assert planned[-1].order != SWEEP
        steps = 1 if op == "Relu" else n  # Relus fuse into one ElementwiseChain (model/chains.py)
        assert len([s for s in plan.steps if s.phase == RUN]) == steps
        check_work_plan(plan)
        if op == "Sigmoid":  # each writes over the one before it: one work tensor for the whole chain
            assert len([i for i, s in enumerate(plan.tensors) if s.storage == WORK and s.root == i]) == 1
        exe = Executable(plan, np.zeros(plan.weight_size, np.uint8))
        binding, bind_lines[n] = lines_executed(lambda: exe._bind(0, np.zeros(plan.work_size, np.uint8)))
        assert len(binding.steps) == steps
    assert_near_linear(compile_lines, f"compiling a {op} chain (Python lines)")
    assert_near_linear(bind_lines, f"binding a {op} chain (Python lines)")
    if op == "Transpose":
        assert_near_linear(visits, "the planner's visits")


@pytest.mark.parametrize("op", ["Transpose", "Relu"])
def test_a_long_chain_computes_the_right_thing(op):
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    (y,) = run_local(chain(2001, op), {"x": x})
    np.testing.assert_array_equal(y, x.T if op == "Transpose" else np.maximum(x, 0))


# -- node lists out of order ---------------------------------------------------------------------


def reference_topological(nodes, available):
    """The repeated-pass sort _topological replaced (O(n^2) on a reversed list): the order to keep."""
    known = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.inputs + n.captures):
                ordered.append(n)
                known.update(n.outputs)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.inputs + n.captures if i not in known})[:5]
            raise ModelParseError(f"graph has a cycle or undefined tensors: {missing}")
        pending = rest
    return ordered


def test_reverse_ordered_node_lists_sort_in_linear_work():
    # The ONNX checker refuses an unsorted top-level graph, but If branches and exporters' output
    # reach _topological unsorted; a reversed chain is its worst case (one node per pass).
    work = {}
    for n in SIZES:
        graph = import_onnx(chain(n, "Transpose"))
        available = {i.name for i in graph.inputs} | set(graph.weights)
        ordered, work[n] = lines_executed(lambda: _topological(graph.nodes[::-1], available))
        assert [m.name for m in ordered] == [m.name for m in graph.nodes]
    assert_near_linear(work, "sorting a reversed node list (Python lines)")
    # And the re-sorted graph compiles to the very plan of the sorted one.
    sorted_plan = compile_model(chain(500, "Transpose"))
    graph = import_onnx(chain(500, "Transpose"))
    graph.nodes = _topological(graph.nodes[::-1], {i.name for i in graph.inputs})
    plan = build_plan(graph, CompileOptions())
    assert [(p.name, p.offset) for p in plan.placements] == [(p.name, p.offset) for p in sorted_plan.placements]


def random_graph(rng: random.Random, n: int, acyclic: bool) -> tuple[list[Node], set[str]]:
    names = [f"v{k}" for k in range(rng.randint(1, n + 3))] + [""]
    available = set(rng.sample(names[:-1], min(len(names) - 1, rng.randint(0, 3))))
    nodes = []
    for k in range(n):
        if acyclic:  # node k reads what inputs and earlier nodes make: a DAG, then shuffled
            sources = sorted(available) + [f"o{j}" for j in range(k)] + [""]
            node = Node("X", f"n{k}", [rng.choice(sources) for _ in range(rng.randint(0, 3))], [f"o{k}"])
        else:  # anything: cycles, undefined names, several producers of one name, captures
            node = Node("X", f"n{k}", [rng.choice(names) for _ in range(rng.randint(0, 3))],
                        [rng.choice(names) for _ in range(rng.randint(0, 2))],
                        captures=[rng.choice(names)] if rng.random() < 0.1 else [])
        nodes.append(node)
    if acyclic:
        rng.shuffle(nodes)
    return nodes, available


@pytest.mark.parametrize("acyclic", [True, False])
def test_topological_keeps_the_order_of_the_repeated_passes(acyclic):
    rng = random.Random(int(acyclic))
    for _ in range(3000):
        nodes, available = random_graph(rng, rng.randint(0, 14), acyclic)
        try:
            want = [id(m) for m in reference_topological(nodes, available)]
        except ModelParseError as exc:
            with pytest.raises(ModelParseError) as got:
                _topological(nodes, available)
            assert str(got.value) == str(exc)
            continue
        assert [id(m) for m in _topological(nodes, available)] == want


# -- many outputs, many fusions ------------------------------------------------------------------


def many_outputs(n: int) -> bytes:
    """n Relu nodes on one input, every result a graph output (claim_output once per output)."""
    nodes = [helper.make_node("Relu" if k % 2 else "Neg", ["x"], [f"y{k}"]) for k in range(n)]
    return graph_model(nodes, [("x", F32, [2, 4])], [(f"y{k}", F32, [2, 4]) for k in range(n)])


def test_many_graph_outputs_compile_in_linear_work():
    work = {}
    for n in (1000, 2000, 4000):
        plan, work[n] = lines_executed(lambda: compile_model(many_outputs(n)))
        assert len(plan.outputs) == n and plan.work_size == 0  # every result goes straight to I/O memory
    assert_near_linear(work, "compiling a model with many outputs (Python lines)")
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    got = run_local(many_outputs(50), {"x": x})
    for k, y in enumerate(got):
        np.testing.assert_array_equal(y, np.maximum(x, 0) if k % 2 else -x)


def layer_norm_gelu_blocks(blocks: int, width: int = 16) -> bytes:
    """Decomposed LayerNorm (opset 13, as exporters write it below opset 17) then decomposed Gelu,
    `blocks` times: 14 nodes per block, that fuse.py turns into two."""
    rng = np.random.default_rng(blocks)
    nodes, weights, x = [], {"two": np.float32(2), "eps": np.float32(1e-5), "sqrt2": np.float32(np.sqrt(2)),
                             "one": np.float32(1), "half": np.float32(0.5)}, "x"
    for b in range(blocks):
        p = f"b{b}_"
        weights[p + "gamma"] = rng.standard_normal(width).astype(np.float32)
        weights[p + "beta"] = rng.standard_normal(width).astype(np.float32)
        mk = helper.make_node
        nodes += [
            mk("ReduceMean", [x], [p + "mean"], axes=[-1]),
            mk("Sub", [x, p + "mean"], [p + "d"]),
            mk("Pow", [p + "d", "two"], [p + "sq"]),
            mk("ReduceMean", [p + "sq"], [p + "var"], axes=[-1]),
            mk("Add", [p + "var", "eps"], [p + "ve"]),
            mk("Sqrt", [p + "ve"], [p + "std"]),
            mk("Div", [p + "d", p + "std"], [p + "n"]),
            mk("Mul", [p + "n", p + "gamma"], [p + "g"]),
            mk("Add", [p + "g", p + "beta"], [p + "ln"]),
            mk("Div", [p + "ln", "sqrt2"], [p + "s"]),
            mk("Erf", [p + "s"], [p + "e"]),
            mk("Add", [p + "e", "one"], [p + "e1"]),
            mk("Mul", [p + "ln", p + "e1"], [p + "m"]),
            mk("Mul", [p + "m", "half"], [p + "out"]),
        ]
        x = p + "out"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    return graph_model(nodes, [("x", F32, [2, width])], [("y", F32, [2, width])], weights, opset=13)


def test_fusing_many_blocks_is_linear_work():
    work = {}
    for blocks in (150, 300, 600):
        plan, work[blocks] = lines_executed(lambda: compile_model(layer_norm_gelu_blocks(blocks)))
        ops = [s.node.op_type for s in plan.steps if s.phase == RUN and not s.op.alias]
        assert ops == ["LayerNormalization", "Gelu"] * blocks
    assert_near_linear(work, "fusing LayerNorm and Gelu blocks (Python lines)")
    model = layer_norm_gelu_blocks(20)
    x = np.random.default_rng(2).standard_normal((2, 16)).astype(np.float32)
    np.testing.assert_allclose(run_local(model, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
