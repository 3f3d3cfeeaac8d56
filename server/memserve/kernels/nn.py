"""Softmax along an axis, with its reductions in planned scratch memory."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from . import Node, OpDef, TensorInfo, register


def _axis(node: Node, rank: int) -> int:
    default = -1 if node.opset >= 13 else 1
    axis = node.attrs.get("axis", default)
    if not -rank <= axis < rank:
        raise InvalidArgument(f"node {node.name!r} (Softmax): axis {axis} out of range for rank {rank}")
    return axis % rank


def _view(x: np.ndarray, node: Node, axis: int) -> tuple[np.ndarray, int]:
    """Opsets before 13 flatten to 2-D at `axis` and normalise each row."""
    if node.opset >= 13:
        return x, axis
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(rows, -1), 1


def _infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    x = ins[0]
    if not np.issubdtype(x.dtype, np.floating):
        raise InvalidArgument(f"node {node.name!r} (Softmax): needs a float input, got {x.dtype}")
    _axis(node, len(x.shape))
    return [TensorInfo(x.dtype, x.shape)]


def _scratch(node, ins, outs):
    x = ins[0]
    axis = _axis(node, len(x.shape))
    if node.opset >= 13:
        shape = tuple(1 if d == axis else s for d, s in enumerate(x.shape))
    else:
        shape = (int(np.prod(x.shape[:axis], dtype=np.int64)), 1)
    return [TensorInfo(x.dtype, shape)]


def _build(node, ins, outs):
    axis = _axis(node, len(ins[0].shape))

    def run(i, o):
        x, ax = _view(i[0], node, axis)
        y, _ = _view(o[0], node, axis)
        red = o[1]
        np.max(x, axis=ax, keepdims=True, out=red)
        np.subtract(x, red, out=y)
        np.exp(y, out=y)
        np.sum(y, axis=ax, keepdims=True, out=red)
        y /= red

    return run


register(OpDef("Softmax", _infer, _build, scratch=_scratch))
