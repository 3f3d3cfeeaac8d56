"""Integer quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, QLinearMatMul,
ConvInteger, QLinearConv.

Integer products are computed exactly in floating point: 8-bit operands minus their zero points are at
most 255 in magnitude, so each product is under 2^16 and a float32 GEMM is exact while K * 255^2 < 2^24
(K <= 258), a float64 one for any K a tensor can have. The centred operands and the accumulator are planned
scratch, so the BLAS GEMM runs on them without allocating. Rounding is to nearest, ties to even, then
saturation to the output type, as the ONNX spec (and its reference implementation) say.

The integer convolutions run the float Conv kernel (kernels/conv.py, its im2col tiles and compiled
epilogue) on the centred operands in float64, planned like the rest: centred input, centred weights,
the accumulator, then the Conv's own scratch.
"""
from __future__ import annotations

from typing import Callable

import ml_dtypes
import numpy as np
from onnx import helper, numpy_helper

from ..errors import UnsupportedModel
from . import NARROW_DTYPES, Node, OpDef, TensorInfo, depthwise, node_error, optional, register
from . import conv as C
from .linalg import matmul_shape
from .shape import FLOAT8, norm_axis

INT_TYPES = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16")} | {
    np.dtype(getattr(ml_dtypes, t)) for t in ("int4", "uint4", "int2", "uint2")}
FLOAT_TYPES = FLOAT8 | {np.dtype(ml_dtypes.float4_e2m1fn)}  # scaled, then cast (float8 saturating)
QUANT_TYPES = INT_TYPES | FLOAT_TYPES
F32, F64, I32 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32)



def _broadcaster(node: Node, x: TensorInfo, scale: TensorInfo, zp: TensorInfo | None
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """How a scale (or zero point) meets x: per tensor, per axis, or per block of `block_size` along the axis
    (each value repeated over its block, the last block cut to what x has left)."""
    block = node.attrs.get("block_size", 0)
    if not block:
        shape = _per_axis(node, x, scale, zp)
        return lambda a: a.reshape(shape) if shape else a.reshape(())
    axis = norm_axis(node, node.attrs.get("axis", 1), len(x.shape))
    want = tuple(-(-d // block) if k == axis else d for k, d in enumerate(x.shape)) if block > 0 else None
    if want is None or scale.shape != want or (zp is not None and zp.shape != want):
        raise node_error(node, f"block_size {block} along axis {axis} of {x.shape} needs scale (and zero point) "
                               f"of shape {want}, got {scale.shape}")
    cut = (slice(None),) * axis + (slice(0, x.shape[axis]),)
    return lambda a: np.repeat(a, block, axis=axis)[cut]


def _per_axis(node: Node, x: TensorInfo, scale: TensorInfo, zp: TensorInfo | None) -> tuple[int, ...]:
    """How scale and zero point broadcast against x: a scalar, or one value per index of `axis`."""
    single = scale.shape in ((), (1,))
    if zp is not None and zp.shape != scale.shape and not (single and zp.shape in ((), (1,))):
        raise node_error(node, f"zero point {zp.shape} and scale {scale.shape} must have one shape")
    if single:
        return ()
    if len(scale.shape) != 1:
        raise node_error(node, f"scale must be a scalar or 1-D, got {scale.shape}")
    axis = norm_axis(node, node.attrs.get("axis", 1), len(x.shape))
    if x.shape[axis] != scale.shape[0]:
        raise node_error(node, f"{scale.shape[0]} scales for axis {axis} of size {x.shape[axis]}")
    return tuple(-1 if k == axis else 1 for k in range(len(x.shape)))


def _saturate(values: np.ndarray, out: np.ndarray) -> None:
    info = ml_dtypes.iinfo(out.dtype)
    np.clip(values, info.min, info.max, out=values)
    np.copyto(values, info.min, where=np.isnan(values))  # NaN has no integer: the lowest, as onnxruntime gives
    np.copyto(out, values, casting="unsafe")


# -- QuantizeLinear / DequantizeLinear -----------------------------------------------------------------

def _quant_type(node: Node, ins) -> np.dtype:
    zp = ins[2] if len(ins) > 2 else None
    code = node.attrs.get("output_dtype", 0)
    if zp is not None:
        dtype = zp.dtype
    else:
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(code)) if code else np.dtype(np.uint8)
        except (KeyError, ValueError, TypeError):
            dtype = None
    if dtype not in QUANT_TYPES:
        raise UnsupportedModel(f"node {node.name!r} (QuantizeLinear): quantizing to "
                               f"{dtype or f'output_dtype {code}'} is not supported "
                               f"({', '.join(sorted(t.name for t in QUANT_TYPES))})")
    return dtype


def _quantize_infer(node, ins):
    _broadcaster(node, ins[0], ins[1], ins[2] if len(ins) > 2 else None)
    return [TensorInfo(_quant_type(node, ins), ins[0].shape)]


def _quantize_scratch(node, ins, outs):
    return [TensorInfo(F32 if ins[0].dtype != F64 else F64, ins[0].shape)]


def _build_quantize(node, ins, outs):
    bc = _broadcaster(node, ins[0], ins[1], ins[2] if len(ins) > 2 else None)
    has_zp = len(ins) > 2 and ins[2] is not None
    to = outs[0].dtype
    integer = to in INT_TYPES
    saturate = to in FLOAT8 and bool(node.attrs.get("saturate", 1))

    def run(i, o):
        scale = bc(i[1])
        work = o[1]
        np.divide(i[0], scale, out=work, dtype=work.dtype, casting="unsafe")
        if integer:
            np.rint(work, out=work)
        if has_zp and (integer or to not in FLOAT8):  # a float8 zero point is zero (the spec's rule)
            zp = bc(i[2])
            np.add(work, zp.astype(work.dtype), out=work)
        if integer:
            _saturate(work, o[0])
        elif saturate:  # out of range goes to the largest finite value
            np.copyto(o[0], numpy_helper.saturate_cast(work, to))
        else:
            np.copyto(o[0], work, casting="unsafe")

    return run


def _dequantize_infer(node, ins):
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    if x.dtype not in QUANT_TYPES | {I32}:
        raise UnsupportedModel(f"node {node.name!r} (DequantizeLinear): input type {x.dtype} is not supported")
    if scale.dtype.kind != "f":
        raise node_error(node, f"scale must be a float type, got {scale.dtype}")
    _broadcaster(node, x, scale, zp)
    return [TensorInfo(scale.dtype, x.shape)]


def _build_dequantize(node, ins, outs):
    bc = _broadcaster(node, ins[0], ins[1], ins[2] if len(ins) > 2 else None)
    has_zp = len(ins) > 2 and ins[2] is not None and ins[0].dtype not in FLOAT8  # a float8 zero point is zero
    wide = ins[0].dtype not in NARROW_DTYPES

    def run(i, o):
        y = o[0]
        x = i[0] if wide else i[0].astype(np.float32)  # a narrow type: numpy's ufuncs do not take it
        if has_zp:  # x - zp in int64: exact for every integer type, then one rounding into y's type
            zp = bc(i[2])
            if not wide:
                zp = zp.astype(np.float32)
            np.subtract(x, zp, out=y, dtype=np.int64 if wide else np.float32, casting="unsafe")
        else:
            np.copyto(y, x, casting="unsafe")
        np.multiply(y, bc(i[1]), out=y)

    return run


# -- DynamicQuantizeLinear -----------------------------------------------------------------------------

def _dynamic_infer(node, ins):
    if ins[0].dtype != F32:
        raise node_error(node, f"input must be float32, got {ins[0].dtype}")
    u8 = np.dtype(np.uint8)
    return [TensorInfo(u8, ins[0].shape), TensorInfo(F32, ()), TensorInfo(u8, ())]


def _dynamic_scratch(node, ins, outs):
    return [TensorInfo(F32, ins[0].shape)]


def _build_dynamic(node, ins, outs):
    def run(i, o):
        x, y, scale_out, zp_out, work = i[0], o[0], o[1], o[2], o[3]
        # As the ONNX reference computes them, in float32.
        lo = np.minimum(np.float32(0), x.min()) if x.size else np.float32(0)
        hi = np.maximum(np.float32(0), x.max()) if x.size else np.float32(0)
        scale = np.float32((hi - lo) / np.float32(255)) or np.float32(1)  # all zeros: scale 1, as onnxruntime
        zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
        scale_out[()] = scale
        zp_out[()] = zp
        np.divide(x, scale, out=work)
        np.rint(work, out=work)
        work += zp
        _saturate(work, y)

    return run


# -- MatMulInteger / QLinearMatMul -----------------------------------------------------------------------

def _gemm_type(k: int) -> np.dtype:
    return F32 if k <= 256 else F64  # exact integer sums: see the module's docstring


def _zero_point_shape(node: Node, zp: TensorInfo | None, x: TensorInfo, rows: bool) -> tuple[int, ...]:
    """A zero point is a scalar, or one per row of A (rows) / per column of B."""
    if zp is None or zp.shape in ((), (1,)):
        return ()
    n = x.shape[-2] if rows else x.shape[-1]
    if len(zp.shape) != 1 or zp.shape[0] != n or len(x.shape) < 2:
        raise node_error(node, f"zero point {zp.shape} must be a scalar or hold {n} values")
    return (n, 1) if rows else (n,)


def _matmul_parts(node, ins, b_at: int, a_zp: int, b_zp: int):
    """MatMulInteger's inputs are A, B, azp, bzp; QLinearMatMul's A, a_scale, azp, B, b_scale, bzp, ..."""
    a, b = ins[0], ins[b_at]
    for t in (a, b):
        if t.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
            raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): {t.dtype} operands are not supported "
                                   "(uint8, int8)")
    shape = matmul_shape(node, a.shape, b.shape)
    za = ins[a_zp] if len(ins) > a_zp else None
    zb = ins[b_zp] if len(ins) > b_zp else None
    return a, b, shape, _zero_point_shape(node, za, a, True), _zero_point_shape(node, zb, b, False)


def _centre(x: np.ndarray, zp: np.ndarray | None, shape: tuple[int, ...], out: np.ndarray) -> np.ndarray:
    if zp is None:
        np.copyto(out, x, casting="unsafe")
    else:
        np.subtract(x, zp.reshape(shape) if shape else zp.reshape(()), out=out, dtype=out.dtype, casting="unsafe")
    return out


def _mmi_infer(node, ins):
    _, _, shape, _, _ = _matmul_parts(node, ins, 1, 2, 3)
    return [TensorInfo(I32, shape)]


def _mm_scratch(node, ins, outs, b_index: int):
    a, b = ins[0], ins[b_index]
    t = _gemm_type(a.shape[-1])
    return [TensorInfo(t, a.shape), TensorInfo(t, b.shape), TensorInfo(t, outs[0].shape)]


def _build_mmi(node, ins, outs):
    _, _, _, za, zb = _matmul_parts(node, ins, 1, 2, 3)
    has_za, has_zb = len(ins) > 2 and ins[2] is not None, len(ins) > 3 and ins[3] is not None

    def run(i, o):
        a = _centre(i[0], i[2] if has_za else None, za, o[1])
        b = _centre(i[1], i[3] if has_zb else None, zb, o[2])
        np.matmul(a, b, out=o[3])
        np.copyto(o[0], o[3], casting="unsafe")  # exact integers: the cast is exact

    return run


def _qmm_infer(node, ins):
    _, _, shape, _, _ = _matmul_parts(node, ins, 3, 2, 5)
    if ins[7].dtype not in QUANT_TYPES:
        raise UnsupportedModel(f"node {node.name!r} (QLinearMatMul): output type {ins[7].dtype} is not supported")
    return [TensorInfo(ins[7].dtype, shape)]


def _build_qmm(node, ins, outs):
    _, _, _, za, zb = _matmul_parts(node, ins, 3, 2, 5)
    b_cols = zb

    def run(i, o):
        a = _centre(i[0], i[2], za, o[1])
        b = _centre(i[3], i[5], zb, o[2])
        acc = o[3]
        np.matmul(a, b, out=acc)
        # As the ONNX reference: the multiplier in the scales' type, the product in float64.
        mult = (i[1].reshape(()) * (i[4].reshape(b_cols) if b_cols else i[4].reshape(())) / i[6].reshape(()))
        scaled = np.multiply(acc, mult, dtype=np.float64)
        np.rint(scaled, out=scaled)
        scaled += i[7].reshape(())
        _saturate(scaled, o[0])

    return run


# -- ConvInteger / QLinearConv ------------------------------------------------------------------------------

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _float_conv(node: Node, ins, x_at: int, w_at: int):
    """The float64 Conv this integer convolution runs: its node, input infos, output info and scratch."""
    x, w = ins[x_at], ins[w_at]
    for t in (x, w):
        if t.dtype not in (np.dtype(np.uint8), np.dtype(np.int8)):
            raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): {t.dtype} operands are not supported "
                                   "(uint8, int8)")
    fnode = Node("Conv", node.name, ["x", "w"], node.outputs[:1],
                 {k: v for k, v in node.attrs.items() if k in CONV_ATTRS}, node.opset)
    fins = [TensorInfo(F64, x.shape), TensorInfo(F64, w.shape)]
    fout = C._conv_infer(fnode, fins)[0]
    return fnode, fins, fout, C._conv_scratch(fnode, fins, [fout])


def _channel_shape(node: Node, t: TensorInfo | None, w: TensorInfo, what: str, rank: int, axis: int):
    """A scalar, or one value per output channel of w, shaped to broadcast along `axis` of a rank-`rank` array."""
    if t is None or t.shape in ((), (1,)):
        return ()
    if t.shape != (w.shape[0],):
        raise node_error(node, f"{what} {t.shape} must be a scalar or hold one value per output channel ({w.shape[0]})")
    return tuple(-1 if k == axis else 1 for k in range(rank))


def _conv_integer_infer(node, ins):
    _, _, fout, _ = _float_conv(node, ins, 0, 1)
    _channel_shape(node, optional(ins, 3), ins[1], "w_zero_point", len(ins[1].shape), 0)
    return [TensorInfo(I32, fout.shape)]


def _qconv_infer(node, ins):
    _, _, fout, _ = _float_conv(node, ins, 0, 3)
    for k, what in ((4, "w_scale"), (5, "w_zero_point")):
        _channel_shape(node, ins[k], ins[3], what, len(ins[3].shape), 0)
    if ins[7].dtype not in QUANT_TYPES:
        raise UnsupportedModel(f"node {node.name!r} (QLinearConv): output type {ins[7].dtype} is not supported")
    b = optional(ins, 8)
    if b is not None and (b.dtype != I32 or b.shape != (ins[3].shape[0],)):
        raise node_error(node, f"B must be int32 with one value per output channel, got {b.dtype} {b.shape}")
    return [TensorInfo(ins[7].dtype, fout.shape)]


def _int_conv_scratch(x_at: int, w_at: int):
    def scratch(node, ins, outs):
        _, fins, fout, conv_scratch = _float_conv(node, ins, x_at, w_at)
        return fins + [fout] + conv_scratch

    return scratch



def _int_conv(node, ins, x_at: int, w_at: int, xzp_at: int, wzp_at: int):
    """The shared part: centre x and w into scratch, run the float Conv into the accumulator."""
    fnode, fins, fout, _ = _float_conv(node, ins, x_at, w_at)
    conv = C._build_fused_conv(fnode, fins, [fout])
    w = ins[w_at]
    wzp = _channel_shape(node, optional(ins, wzp_at), w, "w_zero_point", len(w.shape), 0)

    def accumulate(i, o) -> np.ndarray:
        xf, wf, acc = o[1], o[2], o[3]
        _centre(i[x_at], optional(i, xzp_at), (), xf)
        _centre(i[w_at], optional(i, wzp_at), wzp, wf)
        conv([xf, wf], [acc] + list(o[4:]))
        return acc

    return accumulate


def _build_conv_integer(node, ins, outs):
    accumulate = _int_conv(node, ins, 0, 1, 2, 3)

    def run(i, o):
        np.copyto(o[0], accumulate(i, o), casting="unsafe")  # exact integers

    return run


def _build_qconv(node, ins, outs):
    accumulate = _int_conv(node, ins, 0, 3, 2, 5)
    rank = len(outs[0].shape)
    per_channel = _channel_shape(node, ins[4], ins[3], "w_scale", rank, 1)
    bias = (1, -1) + (1,) * (rank - 2)

    def run(i, o):
        acc = accumulate(i, o)
        if optional(i, 8) is not None:
            acc += i[8].reshape(bias)
        w_scale = i[4].reshape(per_channel) if per_channel else i[4].reshape(())
        mult = (i[1].reshape(()) * w_scale / i[6].reshape(()))  # in the scales' type, as the reference
        np.multiply(acc, mult, out=acc)
        np.rint(acc, out=acc)
        acc += i[7].reshape(())
        _saturate(acc, o[0])

    return run


register(OpDef("ConvInteger", _conv_integer_infer, _build_conv_integer, scratch=_int_conv_scratch(0, 1),
               compiled=C.CONV_KERNELS + depthwise.KERNELS))
register(OpDef("QLinearConv", _qconv_infer, _build_qconv, scratch=_int_conv_scratch(0, 3),
               compiled=C.CONV_KERNELS + depthwise.KERNELS))
register(OpDef("QuantizeLinear", _quantize_infer, _build_quantize, scratch=_quantize_scratch))
register(OpDef("DequantizeLinear", _dequantize_infer, _build_dequantize))
register(OpDef("DynamicQuantizeLinear", _dynamic_infer, _build_dynamic, scratch=_dynamic_scratch))
register(OpDef("MatMulInteger", _mmi_infer, _build_mmi, scratch=lambda n, i, o: _mm_scratch(n, i, o, 1)))
register(OpDef("QLinearMatMul", _qmm_infer, _build_qmm, scratch=lambda n, i, o: _mm_scratch(n, i, o, 3)))
