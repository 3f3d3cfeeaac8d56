"""Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

Windowed pooling of a 2-D float32/float64 input runs one compiled kernel
(pool2d) over every shape: per (sample, channel) plane, in parallel over
planes, each kernel position folds itself into exactly the outputs that see
the input through it (the rows [lo_y, hi_y) and columns [lo_x, hi_x) of
`_window`, computed once per node), so the inner loop has no bounds check and
reads no padding. An average divides by the planned count per output at the
end (count_include_pad decides whether padding counts).

Other ranks and dtypes walk the kernel positions in numpy: each folds one
strided slice of the input into the output with np.maximum or np.add.

GlobalAveragePool over a float32/float64 input sums each plane in float64
with one compiled pass; GlobalMaxPool and other dtypes use numpy.

MaxPool propagates NaN as np.maximum does: once an output is NaN it stays.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from . import OpDef, TensorInfo, portable, register
from .conv import Geometry, _positions, _window, geometry
from .jit import compiled, prange

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# Unsigned indices: numba then drops its negative-index wraparound, which keeps LLVM from vectorising.
_u = np.uint64


def _pool_geometry(node, ins) -> Geometry:
    x = ins[0]
    if len(x.shape) < 3:
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): input must be N x C x spatial, got {x.shape}")
    g = geometry(node, x.shape[2:], tuple(node.attrs["kernel_shape"]), bool(node.attrs.get("ceil_mode", 0)))
    # The kernel runs a step per kernel position: a window may reach past the input by no more than the
    # input's own size, so that a small input cannot ask for 2^40 positions behind 2^40 of padding.
    if any(b > i or a > i for b, a, i in zip(g.pads_begin, g.pads_end, x.shape[2:])):
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): pads {list(g.pads_begin + g.pads_end)} are "
                              f"larger than the input {list(x.shape[2:])}")
    return g


def _wants_indices(node) -> bool:
    return node.op_type == "MaxPool" and len(node.outputs) > 1 and bool(node.outputs[1])


def _pool_infer(node, ins):
    g = _pool_geometry(node, ins)
    shape = ins[0].shape[:2] + g.out
    y = TensorInfo(ins[0].dtype, shape)
    return [y, TensorInfo(np.dtype(np.int64), shape)] if _wants_indices(node) else [y]


def _avg_count(g: Geometry, spatial, include_pad: bool) -> np.ndarray:
    """How many inputs each output averages, as an outer product of per-axis counts."""
    counts = []
    for a, size in enumerate(spatial):
        lo, hi = (-g.pads_begin[a], size + g.pads_end[a]) if include_pad else (0, size)
        starts = np.arange(g.out[a]) * g.strides[a] - g.pads_begin[a]
        taps = starts[:, None] + np.arange(g.kernel[a]) * g.dilations[a]
        counts.append(((taps >= lo) & (taps < hi)).sum(axis=1))
    total = counts[0]
    for c in counts[1:]:
        total = np.multiply.outer(total, c)
    return total


_POOL_SIG = ("void(ro({t}[:, :, :, ::1]), Array({t}, 4, 'C', aligned=False), ro({t}[:, ::1]), "
             "int64[::1], int64[::1], int64[::1], int64[::1], int64, int64, int64, int64, int64, int64, boolean)")


@compiled(_POOL_SIG.format(t="float32"), _POOL_SIG.format(t="float64"), parallel=True)
def pool2d(x, y, count, lo_y, hi_y, lo_x, hi_x, sh, sw, dh, dw, ph, pw, is_max):
    """y[n, c, oy, ox] = max (or sum / count[oy, ox]) over the taps (ky, kx) that see the input of
    x[n, c, oy * sh - ph + ky * dh, ox * sw - pw + kx * dw]. Output (oy, ox) sees the input through tap
    ky when lo_y[ky] <= oy < hi_y[ky], through kx when lo_x[kx] <= ox < hi_x[kx]."""
    channels, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    kh, kw = lo_y.shape[0], lo_x.shape[0]
    init = -np.inf if is_max else 0.0
    flat_count = count.reshape(-1)
    for plane in prange(y.shape[0] * channels):
        n, c = plane // channels, plane % channels
        src, dst = x[n, c], y[n, c]
        flat = dst.reshape(-1)  # a C-contiguous plane
        for k in range(_u(oh * ow)):
            flat[k] = init
        for ky in range(kh):
            for oy in range(lo_y[ky], hi_y[ky]):
                row = src[oy * sh - ph + ky * dh]
                out = dst[oy]
                for kx in range(kw):
                    off = kx * dw - pw
                    lo, hi = _u(lo_x[kx]), _u(hi_x[kx])
                    # Selects, not branches, and unsigned indices: LLVM vectorises these loops.
                    if is_max and sw == 1:
                        for ox in range(lo, hi):
                            v, o = row[_u(ox + off)], out[ox]
                            out[ox] = v if (v > o or v != v) else o  # NaN wins, as in np.maximum
                    elif is_max:
                        for ox in range(lo, hi):
                            v, o = row[_u(ox * sw + off)], out[ox]
                            out[ox] = v if (v > o or v != v) else o
                    else:
                        for ox in range(lo, hi):
                            out[ox] += row[_u(ox * sw + off)]
        if not is_max:
            for k in range(_u(oh * ow)):
                flat[k] /= flat_count[k]


def _bounds(g: Geometry, axis: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per kernel position on `axis`, the outputs [lo, hi) that see a real input."""
    spans = [_window(g, axis, q, size)[0] for q in range(g.kernel[axis])]
    return (np.array([s.start for s in spans], np.int64), np.array([s.stop for s in spans], np.int64))


def _build_pool(node, ins, outs):
    g = _pool_geometry(node, ins)
    spatial = ins[0].shape[2:]
    if _wants_indices(node):
        return _max_with_indices(g, spatial, node.attrs.get("storage_order", 0), outs[0].dtype)
    is_max = node.op_type == "MaxPool"
    dtype = outs[0].dtype
    count = None if is_max else _avg_count(g, spatial, bool(node.attrs.get("count_include_pad", 0))).astype(dtype)
    if len(spatial) == 2 and dtype in _FLOATS:
        return _compiled_pool(g, spatial, is_max, count, dtype)
    plan = [tuple(_window(g, a, q, spatial[a]) for a, q in enumerate(pos)) for pos in _positions(g.kernel)]
    lead = (slice(None), slice(None))
    init = (-np.inf if dtype.kind == "f" else np.iinfo(dtype).min) if is_max else 0

    def run(i, o):
        x, y = i[0], o[0]
        y.fill(init)
        fold = np.maximum if is_max else np.add
        for windows in plan:
            dst = lead + tuple(w[0] for w in windows)
            fold(y[dst], x[lead + tuple(w[1] for w in windows)], out=y[dst])
        if count is not None:
            y /= count

    return run


def _max_with_indices(g: Geometry, spatial: tuple[int, ...], storage_order: int, dtype: np.dtype):
    """MaxPool's values and Indices: each window's first largest input (in row-major order over the
    window, as the reference scans it) and its flat index into the input, (n * C + c) * H * W + h * W + w,
    or h + w * H within a channel for storage_order 1 (column major)."""
    rank = len(spatial)
    span = [(k - 1) * d + 1 for k, d in zip(g.kernel, g.dilations)]
    ends = [max(0, (o - 1) * s + sp - b - n) for o, s, sp, b, n in zip(g.out, g.strides, span, g.pads_begin, spatial)]
    low = -np.inf if dtype.kind == "f" else np.iinfo(dtype).min
    # The input position each window tap reads, per axis: out * stride - pad + tap * dilation.
    taps = [np.arange(o)[:, None] * s - b + np.arange(k)[None, :] * d
            for o, s, b, k, d in zip(g.out, g.strides, g.pads_begin, g.kernel, g.dilations)]
    if storage_order and rank == 2:
        weights = (1, spatial[0])
    else:
        weights = tuple(int(np.prod(spatial[a + 1:])) for a in range(rank))
    plane = int(np.prod(spatial))

    def run(i, o):
        x = i[0]
        win = portable.windows(np, x, g.kernel, g.strides, g.dilations, list(zip(g.pads_begin, ends)), low, g.out)
        flat = win.reshape(win.shape[:2 + rank] + (-1,))
        best = flat.argmax(axis=-1)
        np.copyto(o[0], np.take_along_axis(flat, best[..., None], axis=-1)[..., 0])
        tap = np.unravel_index(best, g.kernel)
        index = np.arange(x.shape[0] * x.shape[1]).reshape(x.shape[:2] + (1,) * rank) * plane
        for a in range(rank):
            index = index + _position(taps[a], tap[a], a, rank) * weights[a]
        np.copyto(o[1], index)

    return run


def _position(taps: np.ndarray, tap: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """The input position along `axis` of each output's chosen tap: taps[out, tap]."""
    out = np.arange(taps.shape[0]).reshape((1, 1) + tuple(-1 if a == axis else 1 for a in range(rank)))
    return taps[out, tap]


def _compiled_pool(g: Geometry, spatial: tuple[int, ...], is_max: bool, count: np.ndarray | None, dtype):
    lo_y, hi_y = _bounds(g, 0, spatial[0])
    lo_x, hi_x = _bounds(g, 1, spatial[1])
    count = np.ascontiguousarray(count if count is not None else np.ones(g.out, dtype))
    sh, sw = g.strides
    dh, dw = g.dilations
    ph, pw = g.pads_begin
    kernel = pool2d.ensure()

    def run(i, o):
        x = i[0]
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        kernel(x, o[0], count, lo_y, hi_y, lo_x, hi_x, sh, sw, dh, dw, ph, pw, is_max)

    return run


def _global_infer(node, ins):
    x = ins[0]
    return [TensorInfo(x.dtype, x.shape[:2] + (1,) * (len(x.shape) - 2))]


_PLANES_SIG = "void(ro({t}[:, ::1]), Array({t}, 1, 'C', aligned=False))"


@compiled(_PLANES_SIG.format(t="float32"), _PLANES_SIG.format(t="float64"), parallel=True,
          fastmath={"reassoc"})  # reassoc lets LLVM split the sum over vector lanes: 8x faster, still float64
def mean_planes(x, y):
    """y[p] = mean of x[p, :], summed in float64."""
    size = x.shape[1]
    for p in prange(x.shape[0]):
        row = x[p]
        s = 0.0
        for k in range(_u(size)):
            s += row[k]
        y[p] = s / size


def _build_global(node, ins, outs):
    x = ins[0]
    axes = tuple(range(2, len(x.shape)))
    planes = x.shape[0] * x.shape[1]
    if node.op_type == "GlobalAveragePool" and x.dtype in _FLOATS and planes and np.prod(x.shape[2:]) > 0:
        kernel = mean_planes.ensure()

        def run(i, o):
            src = i[0].reshape(planes, -1)
            if not src.flags.c_contiguous:
                src = np.ascontiguousarray(src)
            kernel(src, o[0].reshape(-1))

        return run
    # np.max reduces a contiguous plane with SIMD already; a compiled max that keeps NaN could not.
    fn = np.max if node.op_type == "GlobalMaxPool" else np.mean

    def run_numpy(i, o):
        fn(i[0], axis=axes, keepdims=True, out=o[0])

    return run_numpy


KERNELS = (pool2d, mean_planes)
def _build_lp_pool(node, ins, outs):
    """(sum of |x|^p over the window)^(1/p); padding counts as zeros."""
    g = _pool_geometry(node, ins)
    spatial = ins[0].shape[2:]
    p = node.attrs.get("p", 2)
    plan = [tuple(_window(g, a, q, spatial[a]) for a, q in enumerate(pos)) for pos in _positions(g.kernel)]
    lead = (slice(None), slice(None))

    def run(i, o):
        xp, y = np.abs(i[0]) ** p, o[0]
        y.fill(0)
        for windows in plan:
            dst = lead + tuple(w[0] for w in windows)
            np.add(y[dst], xp[lead + tuple(w[1] for w in windows)], out=y[dst])
        np.power(y, 1 / p, out=y)

    return run


register(OpDef("LpPool", _pool_infer, _build_lp_pool))
register(OpDef("MaxPool", _pool_infer, _build_pool, compiled=KERNELS))
register(OpDef("AveragePool", _pool_infer, _build_pool, compiled=KERNELS))
register(OpDef("GlobalAveragePool", _global_infer, _build_global, compiled=KERNELS))
register(OpDef("GlobalMaxPool", _global_infer, _build_global, compiled=KERNELS))
