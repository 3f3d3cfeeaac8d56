"""Resize and Upsample: nearest, linear and cubic, separable along each axis.

For every resized axis the output coordinate is mapped back to the input
(the coordinate_transformation_mode), and each output position reads a few
input taps with weights: 1 tap for nearest, 2 for linear, 4 for cubic. The
axes are applied one after another; intermediate results are numpy
temporaries. The one case on the hot path of the models served here,
nearest upsampling by whole factors (detection models' feature pyramids),
takes a compiled pass with no temporaries instead (_integer_upsampling).
Taps are computed, and gathered, a chunk of output positions at a time, so
that the temporaries stay near CHUNK_ELEMENTS whatever the output's size: a
tiny input asking for 2^28 outputs along one axis costs its output, not ten
times it in float64 index and weight arrays.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..errors import InvalidArgument, UnsupportedModel
from . import Node, OpDef, TensorInfo, jit, register

CHUNK_ELEMENTS = 1 << 20  # elements of one gathered (positions x taps x other dims) temporary
MAX_STRIDED_COPIES = 64  # whole-factor upsampling off the last two axes: one strided copy per offset


def _value(info):
    return None if info is None or info.value is None or info.value.size == 0 else np.asarray(info.value)


def _params(node: Node, ins) -> dict:
    """Scales, output sizes, roi and modes, whatever the opset spelled them."""
    x = ins[0]
    rank = len(x.shape)
    if node.op_type == "Upsample":
        scales = node.attrs.get("scales") if node.opset < 9 else _value(ins[1])
        mode = node.attrs.get("mode", "nearest")
        return _finish(node, x, rank, np.asarray(scales, np.float64), None, None, mode,
                       "asymmetric", "floor", list(range(rank)))
    if node.opset < 11:
        scales, roi, sizes = _value(ins[1]), None, None
    else:
        roi = _value(ins[1]) if len(ins) > 1 else None
        scales = _value(ins[2]) if len(ins) > 2 else None
        sizes = _value(ins[3]) if len(ins) > 3 else None
    axes = [a % rank for a in node.attrs.get("axes", range(rank))]
    default_ctm = "asymmetric" if node.opset < 11 else "half_pixel"
    return _finish(node, x, rank, scales, sizes, roi, node.attrs.get("mode", "nearest"),
                   node.attrs.get("coordinate_transformation_mode", default_ctm),
                   node.attrs.get("nearest_mode", "round_prefer_floor" if node.opset >= 11 else "floor"), axes)


def _finish(node, x, rank, scales, sizes, roi, mode, ctm, nearest_mode, axes) -> dict:
    if mode not in ("nearest", "linear", "cubic"):
        raise UnsupportedModel(f"node {node.name!r} (Resize): mode {mode!r} is not supported")
    in_sizes = [x.shape[a] for a in axes]
    if sizes is not None:
        sizes = [int(s) for s in sizes]
        policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            scale = pick(s / i for s, i in zip(sizes, in_sizes))
            sizes = [int(np.floor(scale * i + 0.5)) for i in in_sizes]
            scales = [scale] * len(axes)
        else:
            scales = [s / i for s, i in zip(sizes, in_sizes)]
    elif scales is not None:
        scales = [float(s) for s in scales]
        if len(scales) == rank and len(axes) != rank:
            scales = [scales[a] for a in axes]
        sizes = [int(np.floor(i * s)) for i, s in zip(in_sizes, scales)]
    else:
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): needs scales or sizes known when the model loads")
    full_roi = None
    if ctm == "tf_crop_and_resize":
        roi = [float(r) for r in roi]
        n = len(axes)
        full_roi = (roi[:n], roi[n:])
    out_shape = list(x.shape)
    for a, s in zip(axes, sizes):
        out_shape[a] = s
    return dict(axes=axes, scales=scales, sizes=sizes, roi=full_roi, mode=mode, ctm=ctm, nearest=nearest_mode,
                shape=tuple(out_shape))


def _infer(node, ins):
    p = _params(node, ins)
    return [TensorInfo(ins[0].dtype, p["shape"])]


def _source(ctm: str, o: np.ndarray, scale: float, n_in: int, n_out: int, roi) -> np.ndarray:
    if ctm == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if ctm == "half_pixel_symmetric":
        adjust = n_out / (scale * n_in)
        return n_in / 2 * (1 - adjust) + (o + 0.5) / scale - 0.5
    if ctm == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(o)
    if ctm == "align_corners":
        # As the ONNX reference: the resized length is n_in * scale, before flooring.
        return o * (n_in - 1) / (n_in * scale - 1) if n_out > 1 else np.zeros_like(o)
    if ctm == "asymmetric":
        return o / scale
    if ctm == "tf_crop_and_resize":
        start, end = roi
        if n_out > 1:
            return start * (n_in - 1) + o * (end - start) * (n_in - 1) / (n_out - 1)
        return 0.5 * (start + end) * (n_in - 1) + 0 * o
    raise UnsupportedModel(f"coordinate_transformation_mode {ctm!r} is not supported")


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0))


def _antialiased(node, mode: str, scale: float) -> int:
    """How many taps an antialiased downsampling filter has at this scale (0: not antialiased): the
    linear or cubic kernel stretched by 1 / scale, as the ONNX reference does."""
    if not node.attrs.get("antialias", 0) or mode == "nearest" or scale >= 1:
        return 0
    reach = 1 if mode == "linear" else 2
    return 2 - 2 * (math.floor(-reach / scale) + 1)


def _antialias_taps(node, mode: str, x: np.ndarray, scale: float, n_in: int, taps: int, exclude: bool):
    """The stretched filter's taps around each source position x: the `taps` inputs nearest to x (ties to
    the lower), edge-padded, weighted by the kernel at scale * distance, normalised to sum to one."""
    whole = x == np.floor(x)
    left = np.floor(x).astype(np.int64) - whole  # the reference's ratio in (0, 1]: a whole x leans left
    ratio = np.where(whole, 1.0, x - np.floor(x))
    half = taps // 2
    first = np.clip(left - half + 1, -half, n_in + half - taps)  # within the reference's edge padding
    idx = first[:, None] + np.arange(taps)
    t = np.abs(scale * (idx - left[:, None] - ratio[:, None]))
    if mode == "linear":
        w = np.clip(1 - t, 0, 1)
    else:
        a = node.attrs.get("cubic_coeff_a", -0.75)
        w = _cubic(t, a)
    w = w / w.sum(axis=1, keepdims=True)
    if exclude:
        w = np.where((idx < 0) | (idx >= n_in), 0, w)
        w = w / w.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_in - 1), w


def _taps(node, p, k: int, n_in: int, n_out: int, start: int = 0, stop: int | None = None):
    """(indices, weights, outside) of shape (m, taps), (m, taps), (m,) for output positions start..stop
    (m of them) of one axis."""
    stop = n_out if stop is None else stop
    roi = (p["roi"][0][k], p["roi"][1][k]) if p["roi"] else None
    x = _source(p["ctm"], np.arange(start, stop, dtype=np.float64), p["scales"][k], n_in, n_out, roi)
    outside = (x < 0) | (x > n_in - 1) if p["ctm"] == "tf_crop_and_resize" else np.zeros(stop - start, bool)
    mode = p["mode"]
    stretched = _antialiased(node, mode, p["scales"][k])
    if stretched:
        idx, w = _antialias_taps(node, mode, x, p["scales"][k], n_in, stretched,
                                 bool(node.attrs.get("exclude_outside", 0)))
        return idx, w, outside
    if mode == "nearest":
        rounding = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
                    "floor": np.floor, "ceil": np.ceil}[p["nearest"]]
        idx = np.clip(rounding(x), 0, n_in - 1).astype(np.int64)[:, None]
        return idx, np.ones_like(idx, np.float64), outside
    if mode == "linear":
        xc = np.clip(x, 0, n_in - 1)
        i0 = np.floor(xc).astype(np.int64)
        w = xc - i0
        return np.stack([i0, np.minimum(i0 + 1, n_in - 1)], 1), np.stack([1 - w, w], 1), outside
    a = node.attrs.get("cubic_coeff_a", -0.75)
    base = np.floor(x).astype(np.int64)
    idx = base[:, None] + np.arange(-1, 3)
    w = _cubic(x[:, None] - idx, a)
    if node.attrs.get("exclude_outside", 0):
        w = np.where((idx < 0) | (idx >= n_in), 0, w)
        w /= w.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_in - 1), w, outside


def _build(node, ins, outs):
    p = _params(node, ins)
    shape = ins[0].shape
    resized = []  # (axis, index into p's per-axis lists, n_in, n_out)
    for k, (a, n_out) in enumerate(zip(p["axes"], p["sizes"])):
        n_in = shape[a]
        if n_in == n_out and p["scales"][k] == 1 and p["ctm"] != "tf_crop_and_resize":
            continue
        if n_in == 0 and n_out > 0:
            raise InvalidArgument(f"node {node.name!r} ({node.op_type}): cannot resize an empty axis {a} to {n_out}")
        resized.append((a, k, n_in, n_out))
    repeat = _integer_upsampling(p, resized, ins[0].dtype)
    if repeat is not None:
        return repeat
    extrapolation = node.attrs.get("extrapolation_value", 0.0)
    taps = max([{"nearest": 1, "linear": 2}.get(p["mode"], 4)]
               + [_antialiased(node, p["mode"], p["scales"][k]) for _, k, _, _ in resized])

    def run(i, o):
        y = i[0].astype(np.float64) if p["mode"] != "nearest" else i[0]
        outside_axes = []  # (axis, positions outside the roi): extrapolated at the end, as one mask
        for a, k, n_in, n_out in resized:
            out_shape = y.shape[:a] + (n_out,) + y.shape[a + 1:]
            res = np.empty(out_shape, y.dtype)
            other = max(int(np.prod(out_shape, dtype=np.int64)) // max(n_out, 1), 1)
            per = max(1, CHUNK_ELEMENTS // (other * taps))
            outside_all = np.zeros(n_out, bool) if p["ctm"] == "tf_crop_and_resize" else None
            lead = (slice(None),) * a
            for c0 in range(0, n_out, per):
                c1 = min(c0 + per, n_out)
                idx, w, outside = _taps(node, p, k, n_in, n_out, c0, c1)
                taken = np.take(y, idx, axis=a)  # (..., m, taps, ...)
                if idx.shape[1] == 1:
                    part = taken.squeeze(a + 1)
                else:
                    part = (taken * w.reshape(w.shape + (1,) * (taken.ndim - a - 2))).sum(axis=a + 1)
                res[lead + (slice(c0, c1),)] = part
                if outside_all is not None:
                    outside_all[c0:c1] = outside
            y = res
            if outside_all is not None and outside_all.any():
                outside_axes.append((a, outside_all))
        if outside_axes:
            y = np.array(y, copy=True) if y is i[0] else y
            for a, outside in outside_axes:
                y[(slice(None),) * a + (outside,)] = extrapolation
        if np.issubdtype(o[0].dtype, np.integer) and p["mode"] != "nearest":
            y = np.rint(y)
        np.copyto(o[0], y, casting="unsafe")

    return run


_UP = "void(ro({t}[:, :, ::1]), int64, int64, {t}[:, :, ::1])"


@jit.compiled(*(_UP.format(t=t) for t in ("float32", "float64", "uint8", "int64")))
def upsample_rows(x, fh, fw, y):
    """y[p, i, j] = x[p, i // fh, j // fw]: each output row is written once, then copied fh - 1 times."""
    planes, h, w = x.shape
    for p in range(planes):
        for i in range(h):
            first = y[p, i * fh]
            if fw == 2:  # the common x2: two stores per input, no inner loop
                for j in range(w):
                    first[2 * j] = x[p, i, j]
                    first[2 * j + 1] = x[p, i, j]
            else:
                for j in range(w):
                    v = x[p, i, j]
                    for b in range(fw):
                        first[j * fw + b] = v
            for a in range(1, fh):
                y[p, i * fh + a, :] = first


def _integer_upsampling(p: dict, resized: list[tuple[int, int, int, int]], dtype: np.dtype):
    """Nearest, asymmetric, floor, by whole factors (the FPN upsampling of detection models): output i
    reads input i // f. On the last two axes (NCHW images) one compiled pass; elsewhere one strided copy
    per factor offset. No temporaries."""
    if p["mode"] != "nearest" or p["ctm"] != "asymmetric" or p["nearest"] != "floor" or not resized:
        return None
    factors = {}
    for a, k, n_in, n_out in resized:
        f = n_out // n_in if n_in else 0
        if f < 2 or n_out != n_in * f or p["scales"][k] != f:
            return None
        factors[a] = f
    shape = p["shape"]
    rank = len(shape)
    if rank >= 2 and set(factors) <= {rank - 2, rank - 1} and dtype in _UPSAMPLE_DTYPES:
        fh, fw = factors.get(rank - 2, 1), factors.get(rank - 1, 1)
        h, w = shape[-2] // fh, shape[-1] // fw
        fn = upsample_rows.ensure()
        return lambda i, o: fn(i[0].reshape(-1, h, w), fh, fw, o[0].reshape(-1, h * fh, w * fw))
    if math.prod(factors.values()) > MAX_STRIDED_COPIES:  # 2**28 copies of one element: the chunked path
        return None
    out_view = [d for a in range(rank) for d in ((shape[a] // factors[a], factors[a]) if a in factors
                                                   else (shape[a],))]
    indexes = []  # one per combination of offsets within the factors: the input lands there whole
    for off in itertools.product(*(range(factors[a]) for a in sorted(factors))):
        at = dict(zip(sorted(factors), off))
        indexes.append(tuple(k for a in range(rank) for k in ((slice(None), at[a]) if a in at else (slice(None),))))

    def run(i, o):
        y = o[0].reshape(out_view)
        for index in indexes:
            y[index] = i[0]

    return run


_UPSAMPLE_DTYPES = tuple(np.dtype(t) for t in ("float32", "float64", "uint8", "int64"))


register(OpDef("Resize", _infer, _build, const_inputs=(1, 2, 3), compiled=(upsample_rows,)))
register(OpDef("Upsample", _infer, _build, const_inputs=(1,), compiled=(upsample_rows,)))
