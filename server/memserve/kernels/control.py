"""Control flow: Select, which ends an If whose condition comes with the request; Loop and Scan, which run
a planned body once per iteration.

The compiler places both branches' nodes in the plan, each guarded by the condition (model/compile.py);
a request runs the steps of the branch its condition picks, and Select copies that branch's output into
the If's. The other branch's output is never read: its steps did not run.
"""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np

from ..errors import DeadlineExceeded, InvalidArgument, UnsupportedModel
from ..limits import MAX_LOOP_TRIPS
from . import INTERNAL_DOMAIN, OpDef, TensorInfo, node_error, register


def _select_infer(node, ins):
    cond, then, other = ins
    if cond.dtype != np.dtype(bool) or int(np.prod(cond.shape)) != 1:
        raise node_error(node, f"the condition must be one bool, got {cond.dtype} of shape {cond.shape}")
    if then.dtype != other.dtype or then.shape != other.shape:
        raise UnsupportedModel(
            f"node {node.name!r} (If): its branches give {node.outputs[0]!r} as {then.dtype}{list(then.shape)} "
            f"and {other.dtype}{list(other.shape)}; an If whose condition comes with the request needs branches "
            "whose outputs agree in type and shape")
    return [TensorInfo(then.dtype, then.shape)]


def _build_select(node, ins, outs):
    def run(i, o):
        np.copyto(o[0], i[1] if i[0].item() else i[2])

    return run


# Ops the compiler itself expands (their subgraphs become steps): no kernel of their own.
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})

SELECT = register(OpDef("Select", _select_infer, _build_select), domain=INTERNAL_DOMAIN)


# -- Loop and Scan ---------------------------------------------------------------------------------------
#
# The compiler plans the body on its own (model/loops.py) and leaves in node.attrs: "body_plan" (its Plan),
# "formal" (the body's input names, in the order the kernel feeds them), "states", "scan_outputs" and
# "captures" (counts), and for Scan the axes and directions. The node's last input is the body's weight
# block; its scratch is the body's work memory, the body's output memory, then the kernel's own small buffers.

BODY_WORK, BODY_IO = 0, 1

# One execution's allowance, shared by every Loop and Scan it runs, nested ones included: the engine sets
# it per execution on the lane's thread (`allowance`), each body run takes one, and an execution whose
# caller stopped waiting ends at the next body run. So no request, however its loops nest, runs more than
# MAX_LOOP_TRIPS bodies or much past its deadline.
_allowance = threading.local()


@contextlib.contextmanager
def allowance(finish_by: float | None):
    """Body runs for one execution: MAX_LOOP_TRIPS of them, until `finish_by` (time.monotonic())."""
    _allowance.left, _allowance.finish_by = MAX_LOOP_TRIPS, finish_by
    try:
        yield
    finally:
        _allowance.left = _allowance.finish_by = None


def _take(node) -> None:
    left = getattr(_allowance, "left", None)
    if left is None:  # outside an execution (a test calling a kernel): the per-loop count alone
        return
    if left <= 0:
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): this request ran {MAX_LOOP_TRIPS} loop "
                              f"bodies, nested loops counted together; memserve runs at most that many per "
                              "request")
    _allowance.left = left - 1
    if _allowance.finish_by is not None and time.monotonic() > _allowance.finish_by:
        raise DeadlineExceeded(f"node {node.name!r} ({node.op_type}): the request's deadline passed while its "
                               "loop ran")


def _body_scratch(node) -> list[TensorInfo]:
    plan = node.attrs["body_plan"]
    io = sum(-(-s.info.nbytes // 64) * 64 for i, s in enumerate(plan.tensors) if s.storage == "io" and s.root == i)
    return [TensorInfo(np.dtype(np.uint8), (max(plan.work_size, 1),)), TensorInfo(np.dtype(np.uint8), (max(io, 1),))]


def _body_outputs(node, fed: list[TensorInfo]) -> list[TensorInfo]:
    """The body's outputs at the shapes this request feeds it (its inputs' open dimensions)."""
    plan = node.attrs["body_plan"]
    arrays = {spec.name: np.zeros(spec.max_shape, spec.dtype) if spec.param  # planned with a value: keyed by it
              else np.broadcast_to(np.zeros((), spec.dtype), info.shape)  # no bytes: only the shape is read
              for spec, info in zip(plan.inputs, fed)}
    infos = plan.infos_at(plan.key_of(arrays))
    return [infos[spec.slot] for spec in plan.outputs]


def _loop_infer(node, ins):
    n, c = node.attrs["states"], node.attrs["captures"]
    plan = node.attrs["body_plan"]
    fed = [TensorInfo(s.dtype, s.max_shape) for s in plan.inputs[:2]] + list(ins[2:2 + n + c])
    outs = [TensorInfo(i.dtype, i.shape) for i in ins[2:2 + n]]
    trips = ins[0].value if ins[0] is not None else None
    trips = max(int(np.asarray(trips).reshape(-1)[0]), 0) if trips is not None else node.attrs.get("trips", 0)
    if ins[1] is not None and ins[1].value is not None and not np.all(ins[1].value):
        trips = 0  # the first test fails: no iteration
    for info in _body_outputs(node, fed)[1 + n:]:
        outs.append(TensorInfo(info.dtype, (trips,) + info.shape))
    return outs


def _loop_scratch(node, ins, outs):
    plan = node.attrs["body_plan"]
    it, cond = plan.inputs[0], plan.inputs[1]
    return _body_scratch(node) + [TensorInfo(it.dtype, it.max_shape), TensorInfo(cond.dtype, cond.max_shape)]


def _first(a: np.ndarray) -> int | bool:
    return a.reshape(-1)[0].item()


def _build_loop(node, ins, outs, body):
    a = node.attrs
    n, k, c = a["states"], a["scan_outputs"], a["captures"]
    names = a["formal"]
    sized = node.domain == INTERNAL_DOMAIN

    def run(i, o):
        trips = max(_first(i[0]), 0) if i[0] is not None else None
        cond = bool(_first(i[1])) if i[1] is not None else True
        states, scans = o[:n], o[n:n + k]
        it, cnd = o[n + k + 2], o[n + k + 3]
        for s, v in zip(states, i[2:2 + n]):
            np.copyto(s, v)
        feeds = dict(zip(names, [it, cnd] + list(states) + list(i[2 + n:2 + n + c])))
        t = 0
        while cond and (trips is None or t < trips):
            if t == MAX_LOOP_TRIPS:
                raise InvalidArgument(f"node {node.name!r} (Loop) ran {t} iterations without stopping; memserve "
                                      f"runs at most {MAX_LOOP_TRIPS} per request")
            _take(node)
            it.fill(t)
            cnd.fill(cond)
            res = body(feeds)
            cond = bool(_first(res[0]))
            for s, r in zip(states, res[1:1 + n]):
                np.copyto(s, r)
            for out, r in zip(scans, res[1 + n:]):
                if t >= len(out):
                    raise node_error(node, f"ran more than the {len(out)} iterations its scan outputs were "
                                           "planned for")
                np.copyto(out[t, ...], r)  # [t, ...]: a view even of a 1-D output
            t += 1
        if sized:
            return [s.shape for s in states] + [(t,) + out.shape[1:] for out in scans]

    return run


def _scan_infer(node, ins):
    a = node.attrs
    n, m = a["states"], len(a["in_axes"])
    lengths = {x.shape[ax] for x, ax in zip(ins[n:n + m], a["in_axes"])}
    if len(lengths) != 1:
        raise node_error(node, f"its scan inputs have different lengths {sorted(lengths)}")
    steps = lengths.pop()
    slices = [TensorInfo(x.dtype, x.shape[:ax] + x.shape[ax + 1:]) for x, ax in zip(ins[n:n + m], a["in_axes"])]
    fed = list(ins[:n]) + slices + list(ins[n + m:n + m + a["captures"]])
    outs = [TensorInfo(i.dtype, i.shape) for i in ins[:n]]
    for info, ax in zip(_body_outputs(node, fed)[n:], a["out_axes"]):
        shape = list(info.shape)
        shape.insert(ax, steps)
        outs.append(TensorInfo(info.dtype, tuple(shape)))
    return outs


def _scan_scratch(node, ins, outs):
    plan = node.attrs["body_plan"]
    n, m = node.attrs["states"], len(node.attrs["in_axes"])
    return _body_scratch(node) + [TensorInfo(s.dtype, s.max_shape) for s in plan.inputs[n:n + m]]


def _build_scan(node, ins, outs, body):
    a = node.attrs
    n, m, k = a["states"], len(a["in_axes"]), a["scan_outputs"]
    names = a["formal"]
    in_axes, in_rev, out_axes, out_rev = a["in_axes"], a["in_reverse"], a["out_axes"], a["out_reverse"]

    def at(axis: int, index: int) -> tuple:
        return (slice(None),) * axis + (index, Ellipsis)  # the Ellipsis: a 0-d view, not a scalar

    def run(i, o):
        states, scans, slices = o[:n], o[n:n + k], o[n + k + 2:n + k + 2 + m]
        for s, v in zip(states, i[:n]):
            np.copyto(s, v)
        feeds = dict(zip(names, list(states) + list(slices) + list(i[n + m:len(i) - 1])))
        steps = i[n].shape[in_axes[0]] if m else 0
        for t in range(steps):
            _take(node)
            for x, buf, ax, rev in zip(i[n:n + m], slices, in_axes, in_rev):
                np.copyto(buf, x[at(ax, steps - 1 - t if rev else t)])
            res = body(feeds)
            for s, r in zip(states, res[:n]):
                np.copyto(s, r)
            for out, r, ax, rev in zip(scans, res[n:], out_axes, out_rev):
                np.copyto(out[at(ax, steps - 1 - t if rev else t)], r)

    return run


# The trip count plans the scan outputs: known at load, or given with input_values and keyed by value.
LOOP = register(OpDef("Loop", _loop_infer, _build_loop, scratch=_loop_scratch, subplan=True, const_inputs=(0,),
                      value_inputs=(0,)))
# A Loop whose scan outputs' length the data decides (a condition, or a trip count not known at load).
LOOP_SIZED = register(OpDef("Loop", _loop_infer, _build_loop, scratch=_loop_scratch, subplan=True, sized=True,
                            const_inputs=(0,), value_inputs=(0,)), domain=INTERNAL_DOMAIN)
SCAN = register(OpDef("Scan", _scan_infer, _build_scan, scratch=_scan_scratch, subplan=True))
