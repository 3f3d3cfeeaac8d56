"""Op implementations and the registry the compiler looks ops up in.

An op is an `OpDef`: `infer` gives output dtypes and shapes from the input
infos (inputs whose value is known at plan time carry it), `scratch` names
temporaries a kernel needs (planned in the workspace like any tensor, so
executing never allocates), and `kernel` builds the function that computes
one node: `fn(inputs, outputs)`, where `outputs` holds the node's outputs
followed by its scratch arrays, every one preallocated. An `alias` op's
single output is a view of its first input and costs no memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

Kernel = Callable[[Sequence[np.ndarray | None], Sequence[np.ndarray]], None]


@dataclass
class TensorInfo:
    dtype: np.dtype
    shape: tuple[int, ...]
    value: np.ndarray | None = None  # known at plan time (small constants)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


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


REGISTRY: dict[tuple[str, str], OpDef] = {}


def register(op: OpDef, domain: str = "") -> OpDef:
    REGISTRY[(domain, op.op_type)] = op
    return op


def lookup(domain: str, op_type: str) -> OpDef | None:
    return REGISTRY.get(("" if domain == "ai.onnx" else domain, op_type))


def supported_ops() -> list[str]:
    return sorted(op for _, op in REGISTRY)


# Importing the modules registers their ops.
from . import elementwise, linalg, nn, shape  # noqa: E402,F401
