"""Reshape, Flatten and Identity (aliases: views that cost no memory) and Cast."""
from __future__ import annotations

import numpy as np
from onnx import helper

from ..errors import InvalidArgument, UnsupportedModel
from . import Node, OpDef, TensorInfo, register


def _count(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _reshape_infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    x, spec = ins
    if spec is None or spec.value is None:
        raise UnsupportedModel(
            f"node {node.name!r} (Reshape): the target shape must be known when the model loads"
        )
    dims = [int(d) for d in spec.value.reshape(-1)]
    if not node.attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if dims.count(-1) > 1:
        raise InvalidArgument(f"node {node.name!r} (Reshape): more than one -1 in {dims}")
    if -1 in dims:
        known = _count([d for d in dims if d != -1])
        if known == 0 or _count(x.shape) % known:
            raise InvalidArgument(f"node {node.name!r} (Reshape): cannot reshape {x.shape} to {dims}")
        dims[dims.index(-1)] = _count(x.shape) // known
    if _count(dims) != _count(x.shape):
        raise InvalidArgument(f"node {node.name!r} (Reshape): cannot reshape {x.shape} to {dims}")
    return [TensorInfo(x.dtype, tuple(dims))]


def _flatten_infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    x = ins[0]
    axis = node.attrs.get("axis", 1)
    if not -len(x.shape) <= axis <= len(x.shape):
        raise InvalidArgument(f"node {node.name!r} (Flatten): axis {axis} out of range for {x.shape}")
    if axis < 0:
        axis += len(x.shape)
    return [TensorInfo(x.dtype, (_count(x.shape[:axis]), _count(x.shape[axis:])))]


def _identity_infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    return [TensorInfo(ins[0].dtype, ins[0].shape, ins[0].value)]


def _cast_infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(node.attrs["to"]))
    except (KeyError, ValueError, TypeError):
        raise UnsupportedModel(f"node {node.name!r} (Cast): unsupported target type {node.attrs.get('to')}") from None
    return [TensorInfo(dtype, ins[0].shape)]


def _build_cast(node, ins, outs):
    def run(i, o):
        np.copyto(o[0], i[0], casting="unsafe")

    return run


register(OpDef("Reshape", _reshape_infer, alias=True))
register(OpDef("Flatten", _flatten_infer, alias=True))
register(OpDef("Identity", _identity_infer, alias=True))
register(OpDef("Cast", _cast_infer, _build_cast))
