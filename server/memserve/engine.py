"""Runs a plan on its weights, a workspace and per-request I/O memory.

A `Binding` is the plan made concrete for one batch size on one workspace
buffer: every weight and work tensor is already a numpy view at its planned
offset, and the steps are one generated Python function whose local
variables are the slots: each step is a direct call of its kernel, so
dispatching a node costs a fraction of a microsecond. Executing a request is
then: take one I/O buffer for all the outputs, call that function. Bindings
are cached on the workspace, per model and batch size, and dropped when the
workspace's buffer changes: the views are built once, not per request, and
never outlive the bytes they view. `Binding.steps` keeps the same steps as
closures over a slot list, the reference the generated function is tested
against.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .device import Buffer, Device, align_up
from .errors import InvalidArgument, MemserveError, ResourceExhausted
from .kernels import Kernel, Node, control, jit
from .model.plan import INPUT, IO, RUN, VALUE, WEIGHT, WORK, Plan
from .pool import Workspace

StepFn = Callable[[list], None]
log = logging.getLogger("memserve.engine")


@dataclass
class Binding:
    template: list  # one entry per slot, plus a trailing None for omitted inputs
    steps: list[StepFn]  # the reference form: one closure per step over `template`'s slots
    io: list[tuple[int, np.dtype, tuple[int, ...], int]]  # (slot, dtype, shape, nbytes) per output root
    nodes: list[Node]  # the node of each step, for error messages
    run: Callable[[dict, list], list] | None = None  # the steps as one generated function (_generate)
    lines: dict[int, int] = field(default_factory=dict)  # line of `run`'s source -> step index
    io_offsets: list[int] = field(default_factory=list)  # of each output root in the one I/O buffer
    io_size: int = 0  # bytes of that buffer
    io_buffer: Buffer | None = None  # kept (freed) between requests when small (IO_KEEP)
    io_views: list[np.ndarray] | None = None  # the outputs' views into io_buffer

    def run_steps(self, arrays: dict[str, np.ndarray], outputs: list[np.ndarray], plan: Plan) -> list[np.ndarray]:
        """The reference form of `run`: copy the template, fill it, call each step's closure."""
        env = self.template.copy()
        for spec in plan.inputs:
            env[spec.slot] = arrays[spec.name]
        for (slot, _, _, _), out in zip(self.io, outputs):
            env[slot] = out
        for step in self.steps:
            step(env)
        return [env[spec.slot] for spec in plan.outputs]

    def step_of(self, tb) -> int | None:
        """The step a failure came from: the line of the generated function it passed through."""
        code = self.run.__code__ if self.run is not None else None
        while tb is not None:
            if tb.tb_frame.f_code is code:
                return self.lines.get(tb.tb_lineno)
            tb = tb.tb_next
        return None


# A binding whose outputs take at most this many bytes keeps their I/O buffer (and the views into it)
# between requests: the device accounts it while a request runs (Device.retake, then free), but no
# request allocates host memory or builds views for its outputs. Larger outputs get fresh storage.
IO_KEEP = 64 << 10
# Bindings a workspace keeps (per model and request shape): each holds a view per tensor and a generated
# function, so a client cycling through open dimensions' sizes costs binding time, not unbounded memory.
MAX_BINDINGS = 64


def _step_error(node: Node | None, exc: Exception) -> MemserveError:
    """A kernel failing on request data (an index out of range, say) is the request's problem."""
    where = f"node {node.name!r} ({node.op_type})" if node is not None else "the model"
    if isinstance(exc, MemoryError):
        return ResourceExhausted(f"{where} ran out of host memory on this request")
    log.info("execution failed in %s", where, exc_info=True)
    return InvalidArgument(f"{where} failed on this request's inputs: {type(exc).__name__}: {exc}")


class Executable:
    """A plan bound to its read-only weight block."""

    _keys = itertools.count()

    def __init__(self, plan: Plan, weights: np.ndarray, kernel: Callable = lambda op: op.build):
        self.plan = plan
        self.weights = weights
        self.kernel = kernel  # the device's kernel builder for an op (Device.kernel)
        self.key = next(self._keys)
        # Compiled now, at load, so that no request waits for a compiler.
        ops = _ops(plan)
        jit.prepare([k for op in ops for k in op.compiled])
        self.loops = any(op.subplan for op in ops)  # executions get a loop allowance (control.allowance)

    def run(self, arrays: dict[str, np.ndarray], key: tuple[int, ...], workspace: Workspace, device: Device,
            finish_by: float | None = None) -> tuple[list[np.ndarray], Buffer]:
        """Execute one request on a workspace its lane holds (so in the device context); returns the
        outputs and the one I/O buffer they live in, which the caller frees once it has copied them.
        finish_by (time.monotonic()): when the caller stops waiting; a model's loops stop there."""
        b = self.binding(key, workspace)
        if not device.host_memory:  # copied in once per request; a host device reads the request's bytes
            arrays = {name: device.to_device(a) for name, a in arrays.items()}
        buf = b.io_buffer
        if buf is not None:
            device.retake(buf)
            views = b.io_views
        else:
            buf = device.alloc(b.io_size, "io")
            store = buf.array
            views = [store[o : o + nbytes].view(dtype).reshape(shape)
                     for o, (_, dtype, shape, nbytes) in zip(b.io_offsets, b.io)]
            if b.io_size <= IO_KEEP:
                b.io_buffer, b.io_views = buf, views
        try:
            if self.loops:
                with control.allowance(finish_by):
                    return b.run(arrays, views), buf
            return b.run(arrays, views), buf
        except BaseException as exc:
            buf.free()
            if isinstance(exc, Exception) and not isinstance(exc, MemserveError):
                k = b.step_of(exc.__traceback__)
                raise _step_error(b.nodes[k] if k is not None else None, exc) from None
            raise

    def binding(self, key: tuple[int, ...], workspace: Workspace) -> Binding:
        """Called only by the workspace's lane, so the cache needs no lock of its own. A request shape's
        binding (Plan.key_of) is kept, up to MAX_BINDINGS per workspace, the oldest dropped first."""
        cached = (self.key, key)
        b = workspace.bindings.get(cached)
        if b is None:
            if len(workspace.bindings) >= MAX_BINDINGS:
                workspace.bindings.pop(next(iter(workspace.bindings)))
            b = workspace.bindings[cached] = self._bind(key, workspace.buffer.array)
        return b

    def _bind(self, key: tuple[int, ...], work: np.ndarray) -> Binding:
        plan = self.plan
        infos = plan.infos_at(key)
        env: list = [None] * (len(plan.tensors) + 1)
        for i, slot in enumerate(plan.tensors):
            info = infos[i]
            if slot.root != i:
                if slot.storage in (WEIGHT, WORK):
                    env[i] = env[slot.root].reshape(info.shape)
            elif slot.storage == WEIGHT:
                env[i] = _view(self.weights, slot.offset, slot.info.nbytes, info.dtype, info.shape)
            elif slot.storage == WORK:
                env[i] = _view(work, slot.offset, info.nbytes, info.dtype, info.shape)
            elif slot.storage == VALUE:
                env[i] = info.value
        steps: list[StepFn] = []
        nodes: list[Node] = []
        calls: list[tuple] = []  # per step: ("call", fn, ins, outs, sized) or ("alias", src, dst, shape)
        for step in plan.steps:
            if step.phase != RUN:
                continue
            if not step.op.alias:
                ins = [infos[i] if i >= 0 else None for i in step.inputs]
                outs = [infos[i] for i in step.outputs]
                try:
                    build = self.kernel(step.op)
                    if step.op.subplan:
                        fn = build(step.node, ins, outs, _body(step, env, self.kernel))
                    else:
                        fn = build(step.node, ins, outs)
                except MemserveError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the model's content, at these sizes
                    raise _step_error(step.node, exc) from None
                steps.append(_guarded(step.guard, _call(fn, step.inputs, step.outputs + step.scratch)))
                calls.append(("call", step.guard, fn, step.inputs, step.outputs + step.scratch, step.op.sized))
            elif plan.tensors[step.outputs[0]].storage in (INPUT, IO):
                shape = infos[step.outputs[0]].shape
                steps.append(_guarded(step.guard, _alias(step.inputs[0], step.outputs[0], shape)))
                calls.append(("alias", step.guard, step.inputs[0], step.outputs[0], shape))
            else:
                continue
            nodes.append(step.node)
        io = [(i, infos[i].dtype, infos[i].shape, infos[i].nbytes)
              for i, s in enumerate(plan.tensors) if s.storage == IO and s.root == i]
        b = Binding(env, steps, io, nodes)
        offset = 0
        for _, _, _, nbytes in io:
            b.io_offsets.append(offset)
            offset += align_up(nbytes)
        b.io_size = offset
        b.run, b.lines = _generate(plan, env, calls, io)
        return b


def _ops(plan: Plan) -> set:
    """The ops of a plan's steps, and of the bodies its Loops and Scans plan."""
    ops = {s.op for s in plan.steps}
    for s in plan.steps:
        if s.op.subplan:
            ops |= _ops(s.node.attrs["body_plan"])
    return ops


def _body(step, env: list, kernel: Callable) -> Callable[[dict], list]:
    """A Loop's or Scan's body bound to the memory the outer plan gave it: its weight block (the step's last
    input), its work memory and its outputs' memory (the step's first two scratch tensors). One binding per
    body key (only a body keyed by its iteration number has several), up to MAX_BINDINGS."""
    plan: Plan = step.node.attrs["body_plan"]
    exe = Executable(plan, env[step.inputs[-1]], kernel)
    work, io = env[step.scratch[0]], env[step.scratch[1]]
    keyed = bool(plan.dims or plan.param_values)
    bindings: dict[tuple, Binding] = {}

    def bind(key: tuple) -> Binding:
        if len(bindings) >= MAX_BINDINGS:
            bindings.pop(next(iter(bindings)))
        b = bindings[key] = exe._bind(key, work)
        b.io_views = [_view(io, o, nbytes, dtype, shape) for o, (_, dtype, shape, nbytes) in zip(b.io_offsets, b.io)]
        return b

    fixed = bind(plan.max_key()) if not keyed else None
    by_value = bool(plan.param_values)  # keyed by the iteration number: look the key up every time
    last: list = [None, None]  # the feeds' shapes and their binding: a loop feeds the same shapes each time

    def run(feeds: dict) -> list:
        if fixed is not None:
            return fixed.run(feeds, fixed.io_views)
        shapes = None if by_value else tuple(a.shape for a in feeds.values())
        if shapes is None or shapes != last[0]:
            key = plan.key_of(feeds)
            last[:] = shapes, bindings.get(key) or bind(key)
        b = last[1]
        return b.run(feeds, b.io_views)

    return run


def _generate(plan: Plan, env: list, calls: list[tuple], io: list[tuple]) -> tuple[Callable, dict[int, int]]:
    """The binding's steps as one Python function `run(arrays, outputs) -> graph outputs`.

    Every slot is a local variable (t<slot>): inputs come from the request's dict, output roots from
    `outputs`, the rest (weights, work views, values) are bound once as the factory's arguments, so
    a step is one direct call with two short lists, and nothing is copied per request. The source
    holds only generated identifiers: names and constants from the model are passed as arguments.
    """
    consts: dict[str, object] = {}  # factory argument -> value
    local: set[int] = set()
    body: list[str] = []
    for k, spec in enumerate(plan.inputs):
        consts[f"n{k}"] = spec.name
        body.append(f"t{spec.slot} = a[n{k}]")
        local.add(spec.slot)
    for k, (slot, _, _, _) in enumerate(io):
        body.append(f"t{slot} = o[{k}]")
        local.add(slot)

    def ref(i: int) -> str:
        if i < 0:
            return "None"
        if i not in local and f"t{i}" not in consts:
            consts[f"t{i}"] = env[i]
        return f"t{i}"

    # A view of request memory made in a guarded step may never be made: it starts as None.
    unset = [call[3] for call in calls if call[0] == "alias" and call[1]]
    if unset:
        body.append(" = ".join(f"t{dst}" for dst in unset) + " = None")
        local.update(unset)
    lines: dict[int, int] = {}
    first = 3 + len(body)  # `def factory`, `def run`, then the body: lines count from 1
    sized: dict[int, str] = {}  # output slot -> its actual shape, as the expression that reads it
    for k, call in enumerate(calls):
        lines[first + k] = k
        guard = call[1]
        # One line per step, its guard included: an If's branch runs when its conditions hold.
        when = "if {}: ".format(" and ".join(f"{'' if want else 'not '}{ref(c)}.item()" for c, want in guard)) \
            if guard else ""
        if call[0] == "call":
            _, _, fn, ins, outs, returns_shapes = call
            consts[f"k{k}"] = fn
            result = f"r{k} = " if returns_shapes else ""
            body.append(f"{when}{result}k{k}([{', '.join(ref(i) for i in ins)}], "
                        f"[{', '.join(ref(i) for i in outs)}])")
            if returns_shapes:
                sized.update({slot: f"r{k}[{j}]" for j, slot in enumerate(outs)})
        else:
            _, _, src, dst, shape = call
            consts[f"s{k}"] = shape
            body.append(f"{when}t{dst} = {ref(src)}.reshape(s{k})")
            local.add(dst)
    if sized:
        consts["cut"] = _cut
    body.append("return [{}]".format(", ".join(
        f"cut({ref(spec.slot)}, {sized[spec.slot]})" if spec.slot in sized else ref(spec.slot)
        for spec in plan.outputs)))
    src = "def factory({}):\n    def run(a, o):\n{}\n    return run\n".format(
        ", ".join(consts), "\n".join("        " + line for line in body))
    namespace: dict = {}
    exec(compile(src, f"<memserve plan {id(plan):x}>", "exec"), namespace)  # noqa: S102 - generated identifiers only
    return namespace["factory"](*consts.values()), lines


def _cut(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A data-dependent output at its actual shape: the first elements of its planned (largest) array."""
    return array.reshape(-1)[:int(np.prod(shape, dtype=np.int64))].reshape(shape)


def _view(block: np.ndarray, offset: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    return block[offset : offset + nbytes].view(dtype).reshape(shape)


def _call(fn: Kernel, ins: list[int], outs: list[int]) -> StepFn:
    def step(env: list) -> None:
        fn([env[i] for i in ins], [env[o] for o in outs])

    return step


def _guarded(guard: list[tuple[int, bool]], step: StepFn) -> StepFn:
    if not guard:
        return step

    def when(env: list) -> None:
        if all(env[c].item() == want for c, want in guard):
            step(env)

    return when


def _alias(src: int, dst: int, shape: tuple[int, ...]) -> StepFn:
    def step(env: list) -> None:
        env[dst] = env[src].reshape(shape)

    return step
