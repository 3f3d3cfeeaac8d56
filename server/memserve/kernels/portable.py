"""Kernels written against an array module (`xp`: numpy, or CuPy on the cuda device).

The cpu device runs the kernels of the other modules (numba, BLAS, scipy); a device whose memory is not the
host's runs these, each writing into the planned view it is given (`out=`), so the plan's memory stays
the plan's. The same code runs with xp = numpy, which is how the tests check it (tests/test_devices.py)
on a machine without a GPU.

`builder(op_type, xp)` gives a build function (node, ins, outs) -> kernel, or None for an op this set does
not have: a device refuses to load a model with one, naming it.
"""
from __future__ import annotations

import functools
from typing import Callable

from . import Node, TensorInfo, control, node_error
from .conv import geometry

PortableBuild = Callable[[Node, list, list, object], Callable]
PORTABLE: dict[str, PortableBuild] = {}


def builder(op_type: str, xp) -> Callable | None:
    build = PORTABLE.get(op_type)
    return functools.partial(build, xp=xp) if build is not None else None


def _register(*names: str):
    def add(fn: PortableBuild) -> PortableBuild:
        for name in names:
            PORTABLE[name] = fn
        return fn

    return add


BINARY = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide", "Pow": "power", "Max": "maximum",
          "Min": "minimum", "Equal": "equal", "Less": "less", "Greater": "greater", "And": "logical_and",
          "Or": "logical_or"}
UNARY = {"Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Neg": "negative", "Abs": "absolute", "Reciprocal": "reciprocal",
         "Tanh": "tanh", "Not": "logical_not", "Floor": "floor", "Ceil": "ceil"}


@_register(*BINARY)
def _binary(node: Node, ins: list[TensorInfo], outs: list[TensorInfo], xp):
    ufunc = getattr(xp, BINARY[node.op_type])
    integer_div = node.op_type == "Div" and outs[0].dtype.kind in "iu"

    def run(i, o):
        if integer_div:  # ONNX truncates an integer quotient towards zero
            xp.copyto(o[0], xp.trunc(xp.true_divide(i[0], i[1])), casting="unsafe")
        else:
            ufunc(i[0], i[1], out=o[0])

    return run


@_register(*UNARY)
def _unary(node, ins, outs, xp):
    ufunc = getattr(xp, UNARY[node.op_type])

    def run(i, o):
        ufunc(i[0], out=o[0])

    return run


@_register("Relu")
def _relu(node, ins, outs, xp):
    def run(i, o):
        xp.maximum(i[0], 0, out=o[0])

    return run


@_register("Sigmoid")
def _sigmoid(node, ins, outs, xp):
    def run(i, o):
        y = o[0]
        xp.negative(i[0], out=y)
        xp.exp(y, out=y)
        y += 1
        xp.reciprocal(y, out=y)

    return run


@_register("Copy", "Identity")
def _copy(node, ins, outs, xp):
    def run(i, o):
        xp.copyto(o[0], i[0])

    return run


@_register("Cast")
def _cast(node, ins, outs, xp):
    def run(i, o):
        xp.copyto(o[0], i[0], casting="unsafe")

    return run


@_register("Where")
def _where(node, ins, outs, xp):
    def run(i, o):
        xp.copyto(o[0], xp.where(i[0], i[1], i[2]))

    return run


def _axis(node: Node, rank: int, default: int) -> int:
    axis = node.attrs.get("axis", default)
    if not -rank <= axis < max(rank, 1):
        raise node_error(node, f"axis {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


@_register("Softmax", "LogSoftmax")
def _softmax(node, ins, outs, xp):
    axis = _axis(node, len(ins[0].shape), -1 if node.opset >= 13 else 1)
    log = node.op_type == "LogSoftmax"
    if node.opset < 13:  # the input flattened to 2-D at the axis
        raise node_error(node, "Softmax before opset 13 is not in this device's kernel set")

    def run(i, o):
        y = o[0]
        xp.subtract(i[0], i[0].max(axis=axis, keepdims=True), out=y)
        if log:
            y -= xp.log(xp.exp(y).sum(axis=axis, keepdims=True))
        else:
            xp.exp(y, out=y)
            y /= y.sum(axis=axis, keepdims=True)

    return run


@_register("MatMul")
def _matmul(node, ins, outs, xp):
    def run(i, o):
        xp.matmul(i[0], i[1], out=o[0])

    return run


@_register("Gemm")
def _gemm(node, ins, outs, xp):
    a = node.attrs
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    ta, tb = a.get("transA", 0), a.get("transB", 0)
    has_c = len(ins) > 2 and ins[2] is not None

    def run(i, o):
        y = o[0]
        xp.matmul(i[0].T if ta else i[0], i[1].T if tb else i[1], out=y)
        if alpha != 1.0:
            y *= y.dtype.type(alpha)
        if has_c:
            y += i[2] * i[2].dtype.type(beta) if beta != 1.0 else i[2]

    return run


@_register("Transpose")
def _transpose(node, ins, outs, xp):
    perm = node.attrs.get("perm") or list(reversed(range(len(ins[0].shape))))

    def run(i, o):
        xp.copyto(o[0], i[0].transpose(perm))

    return run


@_register("Concat")
def _concat(node, ins, outs, xp):
    axis = _axis(node, len(outs[0].shape), 0)

    def run(i, o):
        xp.concatenate([x for x in i if x is not None], axis=axis, out=o[0])

    return run


@_register("Gather")
def _gather(node, ins, outs, xp):
    axis = _axis(node, len(ins[0].shape), 0)

    def run(i, o):
        xp.take(i[0], i[1], axis=axis, out=o[0])

    return run


def _reduce_axes(node: Node, ins: list[TensorInfo]) -> tuple[int, ...] | None:
    rank = len(ins[0].shape)
    if len(ins) > 1 and ins[1] is not None:
        axes = ins[1].value.reshape(-1).tolist() if ins[1].value is not None else None
        if axes is None:
            raise node_error(node, "axes must be known when the model loads")
    else:
        axes = node.attrs.get("axes")
    if not axes:
        return None if not node.attrs.get("noop_with_empty_axes", 0) else ()
    return tuple(int(a) % rank for a in axes)


@_register("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(node, ins, outs, xp):
    axes = _reduce_axes(node, ins)
    keep = bool(node.attrs.get("keepdims", 1))
    how = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min"}[node.op_type]

    def run(i, o):
        if axes == ():
            xp.copyto(o[0], i[0])
            return
        xp.copyto(o[0], getattr(i[0], how)(axis=axes, keepdims=keep).reshape(o[0].shape), casting="unsafe")

    return run


@_register("LayerNormalization")
def _layer_norm(node, ins, outs, xp):
    rank = len(ins[0].shape)
    axis = _axis(node, rank, -1)
    axes = tuple(range(axis, rank))
    eps = node.attrs.get("epsilon", 1e-5)
    if len(outs) > 1:
        raise node_error(node, "its mean and inverse deviation outputs are not in this device's kernel set")
    has_bias = len(ins) > 2 and ins[2] is not None

    def run(i, o):
        x, y = i[0], o[0]
        mean = x.mean(axis=axes, keepdims=True)
        xp.subtract(x, mean, out=y)
        var = (y * y).mean(axis=axes, keepdims=True)
        y /= xp.sqrt(var + y.dtype.type(eps))
        y *= i[1]
        if has_bias:
            y += i[2]

    return run


# -- convolution and pooling: windows as strided views (no im2col copy), one contraction -------------------

def _spatial(node: Node, x: TensorInfo, kernel: list[int]) -> tuple[list, list, list]:
    """Strides, dilations and (begin, end) pads of a Conv or pooling node, auto_pad resolved: the cpu
    kernels' geometry (kernels/conv.py)."""
    g = geometry(node, tuple(x.shape[2:]), tuple(kernel))
    return list(g.strides), list(g.dilations), list(zip(g.pads_begin, g.pads_end))


def windows(xp, x, kernel, strides, dil, pads, fill, out=None):
    """(N, C, out..., k...) views of x's windows, padded with `fill` ((begin, end) per spatial axis); `out`:
    how many windows per axis to keep (all that fit when None)."""
    n = len(kernel)
    padded = xp.pad(x, [(0, 0), (0, 0)] + list(pads), constant_values=fill) if any(sum(p) for p in pads) else x
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    win = xp.lib.stride_tricks.sliding_window_view(padded, span, axis=tuple(range(2, 2 + n)))
    starts = tuple(slice(0, o * s if out else None, s) for o, s in zip(out or strides, strides))
    return win[(slice(None), slice(None)) + starts + tuple(slice(None, None, d) for d in dil)]


@_register("Conv")
def _conv(node, ins, outs, xp):
    x, w = ins[0], ins[1]
    kernel = list(w.shape[2:])
    strides, dil, pads = _spatial(node, x, kernel)
    group = node.attrs.get("group", 1)
    n, c, m = x.shape[0], x.shape[1], w.shape[0]
    has_bias = len(ins) > 2 and ins[2] is not None
    letters = "ijkl"[:len(kernel)]
    spatial = "xyzw"[:len(kernel)]
    # n g c out... k... , g m c k... -> n g m out...
    expr = f"ngc{spatial}{letters},gmc{letters}->ngm{spatial}"

    def run(i, o):
        win = windows(xp, i[0], kernel, strides, dil, pads, 0)
        win = win.reshape((n, group, c // group) + win.shape[2:])
        wg = i[1].reshape((group, m // group, c // group) + tuple(kernel))
        res = xp.einsum(expr, win, wg).reshape(o[0].shape)
        if has_bias:
            res += i[2].reshape((1, m) + (1,) * len(kernel))
        xp.copyto(o[0], res, casting="unsafe")

    return run


@_register("MaxPool", "AveragePool")
def _pool(node, ins, outs, xp):
    if len(outs) > 1:
        raise node_error(node, "the Indices output is not in this device's kernel set")
    kernel = list(node.attrs["kernel_shape"])
    strides, dil, pads = _spatial(node, ins[0], kernel)
    if node.attrs.get("ceil_mode", 0):
        raise node_error(node, "ceil_mode is not in this device's kernel set")
    axes = tuple(range(-len(kernel), 0))
    is_max = node.op_type == "MaxPool"
    include_pad = node.attrs.get("count_include_pad", 0)

    def run(i, o):
        if is_max:
            xp.copyto(o[0], windows(xp, i[0], kernel, strides, dil, pads, -xp.inf).max(axis=axes))
            return
        total = windows(xp, i[0], kernel, strides, dil, pads, 0).sum(axis=axes)
        if include_pad or not any(sum(p) for p in pads):
            count = float(xp.prod(xp.asarray(kernel)))
        else:  # each window's count of real (unpadded) elements
            ones = xp.ones((1, 1) + i[0].shape[2:], i[0].dtype)
            count = windows(xp, ones, kernel, strides, dil, pads, 0).sum(axis=axes)
        xp.divide(total, count, out=o[0], casting="unsafe")

    return run


@_register("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node, ins, outs, xp):
    axes = tuple(range(2, len(ins[0].shape)))
    how = "mean" if node.op_type == "GlobalAveragePool" else "max"

    def run(i, o):
        xp.copyto(o[0], getattr(i[0], how)(axis=axes, keepdims=True))

    return run


@_register("BatchNormalization")
def _batch_norm(node, ins, outs, xp):
    if node.attrs.get("training_mode", 0):
        raise node_error(node, "training mode is not in this device's kernel set")
    shape = (1, -1) + (1,) * (len(ins[0].shape) - 2)
    eps = node.attrs.get("epsilon", 1e-5)

    def run(i, o):
        scale = i[1] / xp.sqrt(i[4] + eps)
        xp.multiply(i[0], scale.reshape(shape), out=o[0])
        o[0] += (i[2] - i[3] * scale).reshape(shape)

    return run


# -- control flow: the cpu's own kernels, which use only what numpy dispatches to the array's module
# (np.copyto, fill, item), so they run on any xp ----------------------------------------------------------

def _control(build: Callable) -> PortableBuild:
    def portable_build(node, ins, outs, *body, xp):
        return build(node, ins, outs, *body)

    return portable_build


PORTABLE["Select"] = _control(control._build_select)
PORTABLE["Loop"] = _control(control._build_loop)
PORTABLE["Scan"] = _control(control._build_scan)
