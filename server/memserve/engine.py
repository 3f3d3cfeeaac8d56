"""Runs a plan on its weights, a workspace and per-request I/O memory.

A `Binding` is the plan made concrete for one batch size on one workspace
buffer: every weight and work tensor is already a numpy view at its planned
offset, and every step is a closure over slot indices. Executing a request
is then: copy the template, drop the inputs and freshly allocated outputs
into it, call the steps. Bindings are cached on the workspace, per model and
batch size, and dropped when the workspace's buffer changes: the views are
built once, not per request, and never outlive the bytes they view.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .device import Buffer
from .errors import InvalidArgument, MemserveError, ResourceExhausted
from .kernels import Kernel, Node, jit
from .model.plan import INPUT, IO, RUN, VALUE, WEIGHT, WORK, Plan
from .pool import Workspace

StepFn = Callable[[list], None]
log = logging.getLogger("memserve.engine")
Alloc = Callable[[int], Buffer]


@dataclass
class Binding:
    template: list  # one entry per slot, plus a trailing None for omitted inputs
    steps: list[StepFn]
    io: list[tuple[int, np.dtype, tuple[int, ...], int]]  # (slot, dtype, shape, nbytes) per output root
    nodes: list[Node]  # the node of each step, for error messages


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

    def __init__(self, plan: Plan, weights: np.ndarray):
        self.plan = plan
        self.weights = weights
        self.key = next(self._keys)
        # Compiled now, at load, so that no request waits for a compiler.
        jit.prepare([k for op in {s.op for s in plan.steps} for k in op.compiled])

    def run(self, arrays: dict[str, np.ndarray], batch: int, workspace: Workspace, alloc: Alloc
            ) -> tuple[list[np.ndarray], list[Buffer]]:
        """Execute one request on a workspace its lane holds; returns the outputs and their I/O buffers."""
        b = self.binding(batch, workspace)
        env = b.template.copy()
        for spec in self.plan.inputs:
            env[spec.slot] = arrays[spec.name]
        buffers = []
        k = len(b.steps)  # no node is to blame for a failure before the first step
        try:
            for slot, dtype, shape, nbytes in b.io:
                buf = alloc(nbytes)
                buffers.append(buf)
                env[slot] = buf.array[:nbytes].view(dtype).reshape(shape)
            for k, step in enumerate(b.steps):
                step(env)
        except BaseException as exc:
            for buf in buffers:
                buf.free()
            if isinstance(exc, Exception) and not isinstance(exc, MemserveError):
                raise _step_error(b.nodes[k] if k < len(b.nodes) else None, exc) from None
            raise
        return [env[spec.slot] for spec in self.plan.outputs], buffers

    def binding(self, batch: int, workspace: Workspace) -> Binding:
        """Called only by the workspace's lane, so the cache needs no lock of its own."""
        key = (self.key, batch)
        b = workspace.bindings.get(key)
        if b is None:
            b = workspace.bindings[key] = self._bind(batch, workspace.buffer.array)
        return b

    def _bind(self, batch: int, work: np.ndarray) -> Binding:
        plan = self.plan
        infos = plan.infos_at(batch)
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
        for step in plan.steps:
            if step.phase != RUN:
                continue
            if not step.op.alias:
                ins = [infos[i] if i >= 0 else None for i in step.inputs]
                outs = [infos[i] for i in step.outputs]
                try:
                    fn = step.op.build(step.node, ins, outs)
                except MemserveError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the model's content, at this batch size
                    raise _step_error(step.node, exc) from None
                steps.append(_call(fn, step.inputs, step.outputs + step.scratch))
            elif plan.tensors[step.outputs[0]].storage in (INPUT, IO):
                steps.append(_alias(step.inputs[0], step.outputs[0], infos[step.outputs[0]].shape))
            else:
                continue
            nodes.append(step.node)
        io = [(i, infos[i].dtype, infos[i].shape, infos[i].nbytes)
              for i, s in enumerate(plan.tensors) if s.storage == IO and s.root == i]
        return Binding(env, steps, io, nodes)


def _view(block: np.ndarray, offset: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    return block[offset : offset + nbytes].view(dtype).reshape(shape)


def _call(fn: Kernel, ins: list[int], outs: list[int]) -> StepFn:
    def step(env: list) -> None:
        fn([env[i] for i in ins], [env[o] for o in outs])

    return step


def _alias(src: int, dst: int, shape: tuple[int, ...]) -> StepFn:
    def step(env: list) -> None:
        env[dst] = env[src].reshape(shape)

    return step
