"""Integer quantization: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, QLinearMatMul.

Integer products are computed exactly in floating point: 8-bit operands minus their zero points are at
most 255 in magnitude, so each product is under 2^16 and a float32 GEMM is exact while K * 255^2 < 2^24
(K <= 258), a float64 one for any K a tensor can have. The centred operands and the accumulator are planned
scratch, so the BLAS GEMM runs on them without allocating. Rounding is to nearest, ties to even, then
saturation to the output type, as the ONNX spec (and its reference implementation) say.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument, UnsupportedModel
from . import Node, OpDef, TensorInfo, register
from .linalg import matmul_shape
from .shape import norm_axis

QUANT_TYPES = {np.dtype(t) for t in ("uint8", "int8", "uint16", "int16")}
ONNX_TYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16"}  # output_dtype attribute values
F32, F64, I32 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32)


def _fail(node: Node, why: str) -> InvalidArgument:
    return InvalidArgument(f"node {node.name!r} ({node.op_type}): {why}")


def _no_blocks(node: Node) -> None:
    if node.attrs.get("block_size", 0):
        raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): blocked quantization (block_size) is not "
                               "supported; quantize per tensor or per axis")


def _per_axis(node: Node, x: TensorInfo, scale: TensorInfo, zp: TensorInfo | None) -> tuple[int, ...]:
    """How scale and zero point broadcast against x: a scalar, or one value per index of `axis`."""
    single = scale.shape in ((), (1,))
    if zp is not None and zp.shape != scale.shape and not (single and zp.shape in ((), (1,))):
        raise _fail(node, f"zero point {zp.shape} and scale {scale.shape} must have one shape")
    if single:
        return ()
    if len(scale.shape) != 1:
        raise _fail(node, f"scale must be a scalar or 1-D, got {scale.shape}")
    axis = norm_axis(node, node.attrs.get("axis", 1), len(x.shape))
    if x.shape[axis] != scale.shape[0]:
        raise _fail(node, f"{scale.shape[0]} scales for axis {axis} of size {x.shape[axis]}")
    return tuple(-1 if k == axis else 1 for k in range(len(x.shape)))


def _saturate(values: np.ndarray, out: np.ndarray) -> None:
    info = np.iinfo(out.dtype)
    np.clip(values, info.min, info.max, out=values)
    np.copyto(out, values, casting="unsafe")


# -- QuantizeLinear / DequantizeLinear -----------------------------------------------------------------

def _quant_type(node: Node, ins) -> np.dtype:
    zp = ins[2] if len(ins) > 2 else None
    code = node.attrs.get("output_dtype", 0)
    dtype = zp.dtype if zp is not None else np.dtype(ONNX_TYPES.get(code, "uint8")) if code in ONNX_TYPES or not code \
        else None
    if dtype not in QUANT_TYPES:
        raise UnsupportedModel(f"node {node.name!r} (QuantizeLinear): quantizing to "
                               f"{dtype or f'output_dtype {code}'} is not supported (uint8, int8, uint16, int16)")
    return dtype


def _quantize_infer(node, ins):
    _no_blocks(node)
    _per_axis(node, ins[0], ins[1], ins[2] if len(ins) > 2 else None)
    return [TensorInfo(_quant_type(node, ins), ins[0].shape)]


def _quantize_scratch(node, ins, outs):
    return [TensorInfo(F32 if ins[0].dtype != F64 else F64, ins[0].shape)]


def _build_quantize(node, ins, outs):
    shape = _per_axis(node, ins[0], ins[1], ins[2] if len(ins) > 2 else None)
    has_zp = len(ins) > 2 and ins[2] is not None

    def run(i, o):
        scale = i[1].reshape(shape) if shape else i[1].reshape(())
        work = o[1]
        np.divide(i[0], scale, out=work, dtype=work.dtype, casting="unsafe")
        np.rint(work, out=work)
        if has_zp:
            np.add(work, i[2].reshape(shape) if shape else i[2].reshape(()), out=work, dtype=work.dtype,
                   casting="unsafe")
        _saturate(work, o[0])

    return run


def _dequantize_infer(node, ins):
    _no_blocks(node)
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    if x.dtype not in QUANT_TYPES | {I32}:
        raise UnsupportedModel(f"node {node.name!r} (DequantizeLinear): input type {x.dtype} is not supported")
    if scale.dtype.kind != "f":
        raise _fail(node, f"scale must be a float type, got {scale.dtype}")
    _per_axis(node, x, scale, zp)
    return [TensorInfo(scale.dtype, x.shape)]


def _build_dequantize(node, ins, outs):
    shape = _per_axis(node, ins[0], ins[1], ins[2] if len(ins) > 2 else None)
    has_zp = len(ins) > 2 and ins[2] is not None

    def run(i, o):
        y = o[0]
        if has_zp:  # x - zp in int64: exact for every input type, then one rounding into y's type
            np.subtract(i[0], i[2].reshape(shape) if shape else i[2].reshape(()), out=y, dtype=np.int64,
                        casting="unsafe")
        else:
            np.copyto(y, i[0], casting="unsafe")
        np.multiply(y, i[1].reshape(shape) if shape else i[1].reshape(()), out=y)

    return run


# -- DynamicQuantizeLinear -----------------------------------------------------------------------------

def _dynamic_infer(node, ins):
    if ins[0].dtype != F32:
        raise _fail(node, f"input must be float32, got {ins[0].dtype}")
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
        raise _fail(node, f"zero point {zp.shape} must be a scalar or hold {n} values")
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


register(OpDef("QuantizeLinear", _quantize_infer, _build_quantize, scratch=_quantize_scratch))
register(OpDef("DequantizeLinear", _dequantize_infer, _build_dequantize))
register(OpDef("DynamicQuantizeLinear", _dynamic_infer, _build_dynamic, scratch=_dynamic_scratch))
register(OpDef("MatMulInteger", _mmi_infer, _build_mmi, scratch=lambda n, i, o: _mm_scratch(n, i, o, 1)))
register(OpDef("QLinearMatMul", _qmm_infer, _build_qmm, scratch=lambda n, i, o: _mm_scratch(n, i, o, 3)))
