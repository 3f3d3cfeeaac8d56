"""Loop and Scan: the body is planned on its own, once, and the op's kernel (kernels/control.py) runs it once
per iteration on memory the outer plan placed.

1. The body's inputs get their types and shapes from what the op feeds them: for a Loop the iteration
   number and condition (int64 and bool, as the body declares them) and the loop-carried values (as their
   initial values); for a Scan the states and one slice of each scan input. The outer tensors the body
   reads become its weights when they are known at load, else more inputs the kernel passes on.
2. `build_plan` plans the body like a model. Its weights, packed into one block, become one weight of the
   outer plan: accounted, digested and shared with it. Its work memory and its outputs' memory are
   scratch of the op, placed by the outer planner like any other tensor. A body that needs the iteration
   number as a plan-time parameter (a Slice starting at it) is planned with the number as a value
   (input_values), so each iteration is keyed by it.
3. A loop-carried value must keep its type and shape (checked). The final values are written into the op's
   outputs, which each iteration reads. Scan outputs are stacked into outputs planned for the most
   iterations: a Scan's sequence length, or a Loop's trip count when it is known at load (a weight, or
   input_values). A Loop that may stop earlier (its condition) returns its scan outputs at the iterations
   that ran, as data-dependent outputs are (`OpDef.sized`).
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from ..errors import UnsupportedModel
from ..kernels import INTERNAL_DOMAIN, Node, TensorInfo, node_error
from .onnx_import import Branch, Graph, GraphInput

_ids = itertools.count()


def expand(walk, node: Node) -> Node:
    """The node the walk plans in place of a Loop or Scan: its body planned, its weights a new constant."""
    from .compile import CompileOptions, build_plan  # the body is planned by the same pipeline

    body: Branch = node.attrs["body"]
    loop = node.op_type == "Loop"
    fed, attrs = (_loop_inputs if loop else _scan_inputs)(walk, node, body)
    weights = dict(body.weights)
    runtime = []  # outer tensors the body reads that come with the request: passed on as inputs
    for name in node.captures:
        if name in walk.consts and name not in walk.dynamic:
            weights[name] = walk.consts[name]
        else:
            runtime.append(name)
    formal = [(v.name, info) for v, info in zip(body.inputs, fed)] + [(n, walk.infos[n]) for n in runtime]
    # What the op feeds may be smaller at another request shape (an open sequence): every dimension of the
    # body's inputs but the iteration number's and the condition's is open, up to its size here.
    fixed = 2 if loop else 0
    graph = Graph(node.opset, body.nodes, weights,
                  [GraphInput(name, info.dtype, [d if k < fixed or d == 0 else None for d in info.shape],
                              [""] * len(info.shape)) for k, (name, info) in enumerate(formal)],
                  body.outputs)
    options = CompileOptions(input_shapes={name: info.shape for name, info in formal[fixed:]}, leading_batch=False,
                             fuse=walk.fuse)
    try:
        plan = build_plan(graph, options)
    except UnsupportedModel:
        if not loop:
            raise
        # The iteration number as a plan-time parameter (a Slice at it): planned with a value, keyed by it.
        values = {body.inputs[0].name: np.zeros(fed[0].shape, np.int64)}
        plan = build_plan(graph, dataclasses.replace(options, input_values=values))
    states = attrs["states"]
    first = 1 if loop else 0  # where the states are among the body's outputs; among its inputs: 2 or 0
    for (name, info), spec in zip(formal[2 * first:2 * first + states], plan.outputs[first:first + states]):
        if (info.dtype, tuple(info.shape)) != (spec.dtype, spec.max_shape):
            raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): its body turns {name!r} from "
                                   f"{info.dtype}{list(info.shape)} into {spec.dtype}{list(spec.max_shape)}; "
                                   "memserve needs loop-carried values that keep their type and shape")
    if not loop:  # a scan output's axis counts in the stacked output's rank
        attrs["out_axes"] = [_axis(node, ax, len(spec.max_shape) + 1)
                             for ax, spec in zip(attrs.pop("raw_out_axes"), plan.outputs[states:])]
    packed = f"{node.name}:body{next(_ids)}"
    walk.consts[packed] = _pack(plan)
    walk.infos[packed] = TensorInfo(walk.consts[packed].dtype, walk.consts[packed].shape)
    attrs.update(body_plan=plan, formal=[name for name, _ in formal], captures=len(runtime))
    attrs.update({k: v for k, v in node.attrs.items() if k != "body"})
    sized = loop and attrs["scan_outputs"] and not attrs["fixed_trips"]
    return Node(node.op_type, node.name, node.inputs + runtime + [packed], node.outputs, attrs, node.opset,
                INTERNAL_DOMAIN if sized else "", guard=node.guard)


def _loop_inputs(walk, node: Node, body: Branch) -> tuple[list[TensorInfo], dict]:
    trip, cond = (node.inputs + ["", ""])[:2]
    carried = node.inputs[2:]
    states = len(carried)
    scans = len(body.outputs) - 1 - states
    if len(body.inputs) != 2 + states or scans < 0:
        raise node_error(node, f"its body takes {len(body.inputs)} inputs and gives {len(body.outputs)} outputs "
                               f"for {states} loop-carried values")
    for name, dtype, what in ((trip, np.dtype(np.int64), "trip count"), (cond, np.dtype(bool), "condition")):
        info = walk.infos[name] if name else None
        if info is not None and (info.dtype != dtype or math.prod(info.shape) != 1):
            raise node_error(node, f"its {what} must be one {dtype}, got {info.dtype} of shape {list(info.shape)}")
    fed = [TensorInfo(np.dtype(np.int64), _declared(body.inputs[0], ())),
           TensorInfo(np.dtype(bool), _declared(body.inputs[1], ()))] + [walk.infos[n] for n in carried]
    _check_types(node, body, fed)
    planned = walk.infos[trip].value if trip else None  # a weight, or a value given with input_values
    if scans and planned is None:
        raise UnsupportedModel(f"node {node.name!r} (Loop): its trip count comes with the request, so its scan "
                               "outputs cannot be planned; give the trip count with input_values (the most "
                               "iterations to plan for)")
    # The trip count and the first condition known (at load, or per request shape), and a body that never
    # stops early: the scan outputs' length is known too.
    fixed = planned is not None and (not cond or walk.infos[cond].value is not None) and _keeps_going(body)
    trips = max(int(np.asarray(planned).reshape(-1)[0]), 0) if planned is not None else 0
    return fed, {"states": states, "scan_outputs": scans, "trips": trips, "fixed_trips": fixed}


def _scan_inputs(walk, node: Node, body: Branch) -> tuple[list[TensorInfo], dict]:
    if node.opset < 9:
        raise UnsupportedModel(f"node {node.name!r} (Scan): Scan before opset 9 (a batch axis and sequence_lens) "
                               "is not supported")
    a = node.attrs
    m = a.get("num_scan_inputs", 0)
    states = len(node.inputs) - m
    scans_out = len(body.outputs) - states
    if m < 1 or states < 0 or scans_out < 0 or len(body.inputs) != len(node.inputs):
        raise node_error(node, f"num_scan_inputs {m} does not fit its {len(node.inputs)} inputs and a body of "
                               f"{len(body.inputs)} inputs and {len(body.outputs)} outputs")
    for key, count in (("scan_input_axes", m), ("scan_input_directions", m), ("scan_output_axes", scans_out),
                       ("scan_output_directions", scans_out)):
        if key in a and len(a[key]) != count:
            raise node_error(node, f"{key} has {len(a[key])} entries for {count} scan inputs or outputs")
    xs = [walk.infos[n] for n in node.inputs[states:]]
    in_axes = [_axis(node, ax, len(x.shape)) for ax, x in zip(a.get("scan_input_axes", [0] * m), xs)]
    in_reverse = [bool(d) for d in a.get("scan_input_directions", [0] * m)]
    fed = [walk.infos[n] for n in node.inputs[:states]]
    fed += [TensorInfo(x.dtype, x.shape[:ax] + x.shape[ax + 1:]) for x, ax in zip(xs, in_axes)]
    _check_types(node, body, fed)
    out_axes = a.get("scan_output_axes", [0] * scans_out)
    out_reverse = [bool(d) for d in a.get("scan_output_directions", [0] * scans_out)]
    if len(in_axes) != m or len(in_reverse) != m or len(out_axes) != scans_out or len(out_reverse) != scans_out:
        raise node_error(node, "its scan axes and directions must give one entry per scan input and output")
    return fed, {"states": states, "scan_outputs": scans_out, "in_axes": in_axes, "in_reverse": in_reverse,
                 "raw_out_axes": out_axes, "out_reverse": out_reverse}


def _keeps_going(body: Branch) -> bool:
    """Whether the body's condition output is always true: a constant true, or the condition it was given
    passed through (what exporters write for a for-loop)."""
    out = body.outputs[0]
    if out in body.weights:
        return bool(np.all(body.weights[out]))
    source = next((n for n in body.nodes if out in n.outputs), None)
    return source is not None and source.op_type == "Identity" and source.inputs[0] == body.inputs[1].name


def _axis(node: Node, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise node_error(node, f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _declared(v: GraphInput, default: tuple) -> tuple[int, ...]:
    if v.dims is None or any(d is None for d in v.dims):
        return default
    return tuple(v.dims)


def _check_types(node: Node, body: Branch, fed: list[TensorInfo]) -> None:
    for v, info in zip(body.inputs, fed):
        if v.dtype is not None and v.dtype != info.dtype:
            raise node_error(node, f"its body declares input {v.name!r} as {v.dtype}, and is fed {info.dtype}")


def _pack(plan) -> np.ndarray:
    """The body's weights as one block, at the offsets its plan laid them out at."""
    block = np.zeros(max(plan.weight_size, 1), np.uint8)
    for slot, value in (plan.staged_weights or {}).items():
        offset = plan.tensors[slot].offset
        raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        block[offset:offset + raw.size] = raw
    plan.release_staging()
    return block
