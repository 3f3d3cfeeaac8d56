"""Broadcasting binary arithmetic and unary activations, written into `out`."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from . import Node, OpDef, TensorInfo, register


def _broadcast_infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    a, b = ins
    if a.dtype != b.dtype:
        raise InvalidArgument(
            f"node {node.name!r} ({node.op_type}): inputs have different dtypes {a.dtype} and {b.dtype}"
        )
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise InvalidArgument(
            f"node {node.name!r} ({node.op_type}): shapes {a.shape} and {b.shape} do not broadcast"
        ) from None
    return [TensorInfo(a.dtype, tuple(shape))]


def _same_infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    return [TensorInfo(ins[0].dtype, ins[0].shape)]


def _binary(ufunc: np.ufunc):
    def build(node, ins, outs):
        def run(i, o):
            ufunc(i[0], i[1], out=o[0])

        return run

    return build


def _build_div(node, ins, outs):
    if np.issubdtype(outs[0].dtype, np.integer):
        # ONNX integer division truncates toward zero, as C does; numpy floors.
        def run(i, o):
            np.copyto(o[0], np.trunc(np.true_divide(i[0], i[1])), casting="unsafe")

        return run
    return _binary(np.divide)(node, ins, outs)


def _unary(fn):
    def build(node, ins, outs):
        def run(i, o):
            fn(i[0], o[0])

        return run

    return build


def _relu(x, out):
    np.maximum(x, 0, out=out)


def _sigmoid(x, out):
    # 1 / (1 + exp(-x)), computed in out to allocate nothing.
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)


for _name, _ufunc in (("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply)):
    register(OpDef(_name, _broadcast_infer, _binary(_ufunc)))
register(OpDef("Div", _broadcast_infer, _build_div))
register(OpDef("Relu", _same_infer, _unary(_relu)))
register(OpDef("Sigmoid", _same_infer, _unary(_sigmoid)))
register(OpDef("Tanh", _same_infer, _unary(lambda x, out: np.tanh(x, out=out))))
