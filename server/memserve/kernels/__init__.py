"""Op implementations and the registry the compiler looks ops up in.

An op is an `OpDef`: `infer` gives output dtypes and shapes from the input
infos (inputs whose value is known at plan time carry it; an infer that can
compute its outputs from shapes alone, like Shape's, sets their value),
`scratch` names temporaries a kernel needs (planned in the workspace like any
tensor, so executing never allocates), and `build` makes the function that
computes one node: `fn(inputs, outputs)`, where `outputs` holds the node's
outputs followed by its scratch arrays, every one preallocated. `compiled`
lists the numba kernels those functions call: they are compiled while the
model loads (jit.py). An `alias`
op's single output is a view of its first input and costs no memory.
`const_inputs` are the inputs that must be known when the model loads (a
Reshape's target shape): kernels read them from the infos at build time.
`value_inputs`, a subset, are those whose value never changes a shape (Clip's
bounds, Trilu's k, CumSum's axis): when one is a graph input, the model still
loads, and the kernel reads its value on each request.
`inplace` names the inputs a kernel may overwrite with its output (when the
input has the output's shape and dtype and dies at this step).

`evaluate` runs an op on known values: the compiler folds constants with it,
and per batch size it recomputes the small shape values that depend on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import ml_dtypes
import numpy as np

from .. import budget
from ..errors import InvalidArgument
from .jit import Compiled

Kernel = Callable[[Sequence[np.ndarray | None], Sequence[np.ndarray]], None]


# Element types memserve computes with (strings are refused).
DTYPES = frozenset(np.dtype(t) for t in (
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool"))
# ONNX's narrow types, as ml_dtypes (onnx's own dependency) gives them: one element per byte (two for
# bfloat16), so a 4-bit tensor takes twice the bytes ONNX's packed form would, and the plan counts them so.
# They are stored, moved and cast (NARROW_OPS), not computed with: a model casts them to a wider type first.
NARROW_DTYPES = frozenset(np.dtype(getattr(ml_dtypes, t)) for t in (
    "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn", "int4", "uint4", "int2", "uint2"))
STORAGE_DTYPES = DTYPES | NARROW_DTYPES
# Ops that take and give narrow types: they cast, or move bytes without arithmetic.
NARROW_OPS = frozenset((
    "Cast", "CastLike", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split",
    "Slice", "Gather", "Expand", "Tile", "Shape", "Size", "Copy", "QuantizeLinear", "DequantizeLinear"))


@dataclass
class TensorInfo:
    dtype: np.dtype
    shape: tuple[int, ...]
    value: np.ndarray | None = None  # known at plan time (small constants)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: a hostile shape cannot wrap


@dataclass
class Node:
    """An ONNX node without the protobuf: what infer and kernel builders read."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 13
    domain: str = ""
    captures: list[str] = field(default_factory=list)  # outer names an If's branches read
    # Inside the branch of an If whose condition comes with the request: (condition, wanted value) per
    # enclosing If; the node runs only when every condition has its wanted value (model/compile.py).
    guard: tuple[tuple[str, bool], ...] = ()


InferFn = Callable[[Node, list[TensorInfo | None]], list[TensorInfo]]
ScratchFn = Callable[[Node, list[TensorInfo | None], list[TensorInfo]], list[TensorInfo]]
BuildFn = Callable[[Node, list[TensorInfo | None], list[TensorInfo]], Kernel]


@dataclass(frozen=True)
class OpDef:
    op_type: str
    infer: InferFn
    build: BuildFn | None = None  # None for alias ops
    scratch: ScratchFn | None = None
    alias: bool = False
    const_inputs: tuple[int, ...] = ()
    value_inputs: tuple[int, ...] = ()  # const_inputs that may instead arrive with each request
    # Outputs whose size depends on the data (NonZero, NonMaxSuppression, ...): infer gives the largest
    # they can be (what is planned), the kernel writes each compactly from the start of its array and
    # returns their actual shapes. Such an output must be a graph output read by no node.
    sized: bool = False
    inplace: tuple[int, ...] = ()  # inputs whose bytes the output may reuse when they die here
    compiled: tuple[Compiled, ...] = ()  # the numba kernels `build`'s functions call (jit.py)
    # Runs a planned subgraph (Loop, Scan): `build` takes a fourth argument, the body's run function
    # (feeds -> the body's outputs), which the engine makes; never folded at load.
    subplan: bool = False
    shape_only: bool = False  # reads its input's shape, never its values (Shape, Size)


REGISTRY: dict[tuple[str, str], OpDef] = {}
INTERNAL_DOMAIN = "memserve"  # ops only the compiler emits (ElementwiseChain); refused in uploaded models


def node_error(node: Node, why: str) -> InvalidArgument:
    """A node's refusal, naming it the way every kernel module does: node 'name' (OpType): why."""
    return InvalidArgument(f"node {node.name!r} ({node.op_type}): {why}")


def optional(ins: Sequence, k: int):
    """Input k of a node, or None when the node omits it (absent, or given as "")."""
    return ins[k] if len(ins) > k and ins[k] is not None else None


def register(op: OpDef, domain: str = "") -> OpDef:
    REGISTRY[(domain, op.op_type)] = op
    return op


def lookup(domain: str, op_type: str) -> OpDef | None:
    return REGISTRY.get(("" if domain == "ai.onnx" else domain, op_type))


def supported_ops() -> list[str]:
    return sorted(op for _, op in REGISTRY)


def evaluate(op: OpDef, node: Node, ins: list[TensorInfo | None], outs: list[TensorInfo]) -> list[np.ndarray]:
    """Compute a node's outputs from known input values (host numpy, outside any workspace)."""
    if all(o.value is not None for o in outs):
        return [o.value for o in outs]
    if op.alias:
        return [np.asarray(ins[0].value).reshape(outs[0].shape)]
    scratch_infos = op.scratch(node, ins, outs) if op.scratch else []
    # Charged before allocating: a small model may ask to fold a huge tensor (budget.py). Kernels may hold
    # float64 temporaries the size of their output (Resize does), so each element counts at least 16 bytes.
    budget.charge(sum(max(t.nbytes, 16 * math.prod(t.shape)) for t in [*outs, *scratch_infos]),
                  f"node {node.name!r} ({node.op_type})")
    arrays = [np.empty(o.shape, o.dtype) for o in outs]
    scratch = [np.empty(t.shape, t.dtype) for t in scratch_infos]
    shapes = op.build(node, ins, outs)([i.value if i is not None else None for i in ins], arrays + scratch)
    if op.sized:  # each output at its actual size, not the largest it could have been
        arrays = [a.reshape(-1)[:math.prod(s)].reshape(s).copy() for a, s in zip(arrays, shapes)]
    return arrays


# Importing the modules registers their ops.
from . import attention, chain, control, conv, dense, elementwise, grid, index, linalg, ml, pool, quant, reduce, resize, rnn, select, shape  # noqa: E402,F401
