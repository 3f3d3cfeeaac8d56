"""Elementwise ops with numpy broadcasting, written into `out`.

Arithmetic, comparisons, logic and the common activations (Relu, Sigmoid,
Tanh, Gelu, Erf, Clip, ...) write straight into their output; a few rare
activations (Elu, Selu, Celu, Mish, ThresholdedRelu) use numpy temporaries.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special

from ..errors import InvalidArgument
from . import Node, OpDef, TensorInfo, register

BOOL = np.dtype(bool)
FLOATS = frozenset(np.dtype(t) for t in ("float16", "float32", "float64"))
SIGNED = FLOATS | frozenset(np.dtype(t) for t in ("int8", "int16", "int32", "int64"))
NUMERIC = SIGNED | frozenset(np.dtype(t) for t in ("uint8", "uint16", "uint32", "uint64"))
ANY = NUMERIC | {BOOL}
INTS = NUMERIC - FLOATS


def check_dtype(node: Node, dtype: np.dtype, allowed: frozenset, what: str = "input") -> None:
    """The types the op's ONNX schema allows; numpy would fail (or silently wrap) on the others."""
    if dtype not in allowed:
        names = ", ".join(sorted(d.name for d in allowed))
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): {what} type {dtype} is not one of {names}")


def broadcast(node: Node, ins: list[TensorInfo | None]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*(i.shape for i in ins if i is not None)))
    except ValueError:
        raise InvalidArgument(
            f"node {node.name!r} ({node.op_type}): shapes {[i.shape for i in ins if i is not None]} do not broadcast"
        ) from None


def _same_dtypes(node: Node, ins: list[TensorInfo | None]) -> np.dtype:
    dtypes = {i.dtype for i in ins if i is not None}
    if len(dtypes) > 1:
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): inputs have different dtypes {sorted(map(str, dtypes))}")
    return ins[0].dtype


def _typed(infer, allowed: frozenset):
    """infer, after checking the first input's type against the op's allowed types."""
    def checked(node, ins):
        check_dtype(node, ins[0].dtype, allowed)
        return infer(node, ins)

    return checked


def _arith_infer(node, ins):
    return [TensorInfo(_same_dtypes(node, ins), broadcast(node, ins))]


def _compare_infer(node, ins):
    _same_dtypes(node, ins)
    return [TensorInfo(BOOL, broadcast(node, ins))]


def _pow_infer(node, ins):  # the exponent may have another type
    for k, i in enumerate(ins[:2]):
        check_dtype(node, i.dtype, NUMERIC, "base" if k == 0 else "exponent")
    return [TensorInfo(ins[0].dtype, broadcast(node, ins))]


def _build_pow(node, ins, outs):
    if np.issubdtype(outs[0].dtype, np.integer):
        # numpy refuses integers to negative integer powers; ONNX computes pow in floating point and casts.
        def run(i, o):
            with np.errstate(all="ignore"):
                np.copyto(o[0], np.power(i[0].astype(np.float64), i[1].astype(np.float64)), casting="unsafe")

        return run
    return _binary(np.power)(node, ins, outs)


def _same_infer(node, ins):
    return [TensorInfo(ins[0].dtype, ins[0].shape)]


def _bool_infer(node, ins):
    return [TensorInfo(BOOL, ins[0].shape)]


def _binary(ufunc: np.ufunc):
    def build(node, ins, outs):
        def run(i, o):
            ufunc(i[0], i[1], out=o[0], casting="unsafe")

        return run

    return build


def _build_div(node, ins, outs):
    if np.issubdtype(outs[0].dtype, np.integer):
        # ONNX integer division truncates toward zero, as C does; numpy floors.
        def run(i, o):
            np.copyto(o[0], np.trunc(np.true_divide(i[0], i[1])), casting="unsafe")

        return run
    return _binary(np.divide)(node, ins, outs)


def _build_mod(node, ins, outs):
    return _binary(np.fmod if node.attrs.get("fmod", 0) else np.mod)(node, ins, outs)


def _variadic(ufunc: np.ufunc, mean: bool = False):
    def build(node, ins, outs):
        def run(i, o):
            y = o[0]
            np.copyto(y, i[0])
            for x in i[1:]:
                ufunc(y, x, out=y)
            if mean:
                y /= len(i)

        return run

    return build


def _unary(fn):
    """fn(x, out, node) computes into out."""
    def build(node, ins, outs):
        def run(i, o):
            fn(i[0], o[0], node)

        return run

    return build


def _sigmoid(x, out, node=None):
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1
    np.reciprocal(out, out=out)


def _hard_sigmoid(x, out, node, alpha=None, beta=None):
    alpha = node.attrs.get("alpha", 0.2) if alpha is None else alpha
    beta = node.attrs.get("beta", 0.5) if beta is None else beta
    np.multiply(x, alpha, out=out)
    out += beta
    np.clip(out, 0, 1, out=out)


def _hard_swish(x, out, node):
    _hard_sigmoid(x, out, node, 1 / 6, 0.5)
    out *= x


def _leaky_relu(x, out, node):
    alpha = node.attrs.get("alpha", 0.01)
    np.multiply(x, alpha, out=out)
    np.maximum(out, x, out=out) if alpha <= 1 else np.minimum(out, x, out=out)


def _gelu(x, out, node):
    if node.attrs.get("approximate", "none") == "tanh":
        np.power(x, 3, out=out)
        out *= 0.044715
        out += x
        out *= math.sqrt(2 / math.pi)
        np.tanh(out, out=out)
    else:
        np.multiply(x, 1 / math.sqrt(2), out=out)
        special.erf(out, out=out)
    out += 1
    out *= x
    out *= 0.5


def _softsign(x, out, node):
    np.abs(x, out=out)
    out += 1
    np.divide(x, out, out=out)


def _softplus(x, out, node):
    np.logaddexp(x, 0, out=out)


def _elu(x, out, node):
    alpha = node.attrs.get("alpha", 1.0)
    np.copyto(out, np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))), casting="unsafe")


def _selu(x, out, node):
    alpha = node.attrs.get("alpha", 1.67326319217681884765625)
    gamma = node.attrs.get("gamma", 1.05070102214813232421875)
    np.copyto(out, gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))), casting="unsafe")


def _celu(x, out, node):
    alpha = node.attrs.get("alpha", 1.0)
    np.copyto(out, np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha)), casting="unsafe")


def _thresholded_relu(x, out, node):
    np.copyto(out, np.where(x > node.attrs.get("alpha", 1.0), x, 0), casting="unsafe")


def _mish(x, out, node):
    np.copyto(out, x * np.tanh(np.logaddexp(x, 0)), casting="unsafe")


def _ufunc(f):
    return lambda x, out, node: f(x, out=out)


UNARY = {
    "Abs": _ufunc(np.abs), "Neg": _ufunc(np.negative), "Sqrt": _ufunc(np.sqrt), "Exp": _ufunc(np.exp),
    "Log": _ufunc(np.log), "Reciprocal": _ufunc(np.reciprocal), "Floor": _ufunc(np.floor),
    "Ceil": _ufunc(np.ceil), "Round": _ufunc(np.rint), "Sign": _ufunc(np.sign), "Sin": _ufunc(np.sin),
    "Cos": _ufunc(np.cos), "Tan": _ufunc(np.tan), "Asin": _ufunc(np.arcsin), "Acos": _ufunc(np.arccos),
    "Atan": _ufunc(np.arctan), "Sinh": _ufunc(np.sinh), "Cosh": _ufunc(np.cosh), "Asinh": _ufunc(np.arcsinh),
    "Acosh": _ufunc(np.arccosh), "Atanh": _ufunc(np.arctanh), "Erf": _ufunc(special.erf),
    "Tanh": _ufunc(np.tanh), "Relu": lambda x, out, node: np.maximum(x, 0, out=out),
    "Sigmoid": _sigmoid, "HardSigmoid": _hard_sigmoid, "HardSwish": _hard_swish, "LeakyRelu": _leaky_relu,
    "Gelu": _gelu, "Softsign": _softsign, "Softplus": _softplus, "Elu": _elu, "Selu": _selu, "Celu": _celu,
    "ThresholdedRelu": _thresholded_relu, "Mish": _mish,
}
# These read x again after they started writing out, so out must not be x.
NOT_INPLACE = {"HardSwish", "LeakyRelu", "Gelu", "Softsign"}
# Input types per the ONNX schemas (the rest of UNARY take floats only).
UNARY_TYPES = {"Abs": NUMERIC, "Sign": NUMERIC, "Neg": SIGNED, "Relu": SIGNED}
for _name, _fn in UNARY.items():
    register(OpDef(_name, _typed(_same_infer, UNARY_TYPES.get(_name, FLOATS)), _unary(_fn),
                   inplace=() if _name in NOT_INPLACE else (0,)))

register(OpDef("Not", _typed(_same_infer, frozenset({BOOL})), _unary(_ufunc(np.logical_not))))
register(OpDef("IsNaN", _typed(_bool_infer, FLOATS), _unary(_ufunc(np.isnan))))


def _build_isinf(node, ins, outs):
    pos, neg = node.attrs.get("detect_positive", 1), node.attrs.get("detect_negative", 1)

    def run(i, o):
        x = i[0]
        np.copyto(o[0], (np.isposinf(x) if pos else False) | (np.isneginf(x) if neg else False))

    return run


register(OpDef("IsInf", _typed(_bool_infer, FLOATS), _build_isinf))

for _name, _ufn in (("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply)):
    register(OpDef(_name, _typed(_arith_infer, NUMERIC), _binary(_ufn), inplace=(0, 1)))
register(OpDef("Div", _typed(_arith_infer, NUMERIC), _build_div, inplace=(0, 1)))
register(OpDef("Mod", _typed(_arith_infer, NUMERIC), _build_mod, inplace=(0, 1)))
register(OpDef("Pow", _pow_infer, _build_pow, inplace=(0,)))
register(OpDef("PRelu", _typed(_arith_infer, SIGNED), lambda n, i, o: (
    lambda ii, oo: np.copyto(oo[0], np.where(ii[0] < 0, ii[0] * ii[1], ii[0]), casting="unsafe"))))
for _name, _ufn in (("Equal", np.equal), ("Less", np.less), ("LessOrEqual", np.less_equal),
                    ("Greater", np.greater), ("GreaterOrEqual", np.greater_equal)):
    register(OpDef(_name, _typed(_compare_infer, ANY), _binary(_ufn)))
for _name, _ufn in (("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)):
    register(OpDef(_name, _typed(_compare_infer, frozenset({BOOL})), _binary(_ufn)))
for _name, _ufn, _mean in (("Max", np.maximum, False), ("Min", np.minimum, False),
                           ("Sum", np.add, False), ("Mean", np.add, True)):
    register(OpDef(_name, _typed(_arith_infer, NUMERIC if _name in ("Max", "Min") else FLOATS),
                   _variadic(_ufn, _mean), inplace=(0,)))


def _clip_bounds(node, ins):
    if node.opset < 11:
        return node.attrs.get("min"), node.attrs.get("max")
    return tuple(np.asarray(ins[k].value).reshape(()) if len(ins) > k and ins[k] is not None else None
                 for k in (1, 2))


def _clip_infer(node, ins):
    for k in (1, 2):
        if len(ins) > k and ins[k] is not None and math.prod(ins[k].shape) != 1:
            raise InvalidArgument(f"node {node.name!r} (Clip): {('min', 'max')[k - 1]} must be one value, "
                                  f"got shape {ins[k].shape}")
    return _typed(_same_infer, NUMERIC)(node, ins)


def _build_clip(node, ins, outs):
    lo, hi = _clip_bounds(node, ins)
    # A bound that is a graph input is read from each request (value_inputs).
    late = [k for k in (1, 2) if node.opset >= 11 and len(ins) > k and ins[k] is not None and ins[k].value is None]

    def run(i, o):
        a, b = lo, hi
        if late:
            a = i[1].reshape(()) if 1 in late else a
            b = i[2].reshape(()) if 2 in late else b
        if a is None and b is None:
            np.copyto(o[0], i[0])
        else:
            np.clip(i[0], a, b, out=o[0])

    return run


register(OpDef("Clip", _clip_infer, _build_clip, const_inputs=(1, 2), value_inputs=(1, 2), inplace=(0,)))


# -- bitwise --------------------------------------------------------------------------------------------

for _name, _ufn in (("BitwiseAnd", np.bitwise_and), ("BitwiseOr", np.bitwise_or), ("BitwiseXor", np.bitwise_xor)):
    register(OpDef(_name, _typed(_arith_infer, INTS), _binary(_ufn), inplace=(0, 1)))
register(OpDef("BitwiseNot", _typed(_same_infer, INTS), _unary(_ufunc(np.invert)), inplace=(0,)))


def _bitshift_infer(node, ins):
    direction = node.attrs.get("direction", "")
    if direction not in ("LEFT", "RIGHT"):
        raise InvalidArgument(f"node {node.name!r} (BitShift): direction must be LEFT or RIGHT, got {direction!r}")
    return _typed(_arith_infer, INTS)(node, ins)


def _build_bitshift(node, ins, outs):
    direction = node.attrs["direction"]
    dtype = outs[0].dtype
    bits = dtype.itemsize * 8
    unsigned = np.dtype(f"u{dtype.itemsize}")

    def run(i, o):
        a, b = i[0], i[1]
        outside = (b < 0) | (b >= bits)  # C leaves these undefined; ONNX: 0, or -1 for a negative right shift
        count = np.where(outside, 0, b).astype(unsigned)
        if direction == "LEFT":  # on the unsigned bits, so that a signed value wraps instead of overflowing
            np.copyto(o[0], np.left_shift(np.asarray(a).astype(unsigned), count), casting="unsafe")
            np.copyto(o[0], 0, where=np.broadcast_to(outside, o[0].shape))
        else:
            np.copyto(o[0], np.right_shift(a, count.astype(dtype)), casting="unsafe")  # arithmetic when signed
            fill = np.where(np.asarray(a) < 0, -1, 0) if dtype.kind == "i" else 0
            np.copyto(o[0], np.broadcast_to(fill, o[0].shape), where=np.broadcast_to(outside, o[0].shape),
                      casting="unsafe")

    return run


register(OpDef("BitShift", _bitshift_infer, _build_bitshift))


def _swish(x, out, node):
    alpha = node.attrs.get("alpha", 1.0)
    np.copyto(out, x * special.expit(alpha * x), casting="unsafe")


register(OpDef("Swish", _typed(_same_infer, FLOATS), _unary(_swish)))
