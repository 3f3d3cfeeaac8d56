"""GridSample and RoiAlign: image sampling by coordinates.

GridSample: X (N, C, *spatial) sampled at the normalized coordinates of grid (N, *out, S) in [-1, 1].

Per spatial axis the coordinate is mapped to pixels (align_corners: -1 and 1 are the centres of the edge
pixels, else their outer edges), rounded for `nearest`, and brought back inside by `border` (clamped) or
`reflection` (mirrored at the edges) when it falls out. Interpolation is separable: per axis, 1
(nearest), 2 (linear) or 4 (cubic, Keys' kernel with a = -0.75) taps of pixel indices and weights; a tap
outside the image reads 0 (`zeros`), the edge (`border`) or its mirror (`reflection`). The output sums
every combination of taps, one gather of (C, positions) each: at most 4^3 for 3-D cubic.

RoiAlign: per region, a grid of bilinear samples in each output bin (sampling_ratio per side, or enough
to cover the bin), averaged or (as onnxruntime does) the largest weighted tap of the largest sample.
A region's batch index is checked, and a hostile box that would need more than MAX_ROI_SAMPLES adaptive
samples fails its request.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..errors import InvalidArgument, UnsupportedModel
from . import Node, OpDef, TensorInfo, register

MODES = {"bilinear": "linear", "linear": "linear", "nearest": "nearest", "bicubic": "cubic", "cubic": "cubic"}
A = -0.75  # Keys' cubic coefficient, as onnxruntime and the ONNX reference


def _parts(node: Node, ins) -> tuple[str, str, bool]:
    x, grid = ins
    mode = MODES.get(node.attrs.get("mode", "linear" if node.opset >= 20 else "bilinear"))
    padding = node.attrs.get("padding_mode", "zeros")
    if mode is None or padding not in ("zeros", "border", "reflection"):
        raise UnsupportedModel(f"node {node.name!r} (GridSample): mode {node.attrs.get('mode')!r} / padding_mode "
                               f"{padding!r} is not supported")
    spatial = len(x.shape) - 2
    if x.dtype.kind != "f" or not 1 <= spatial <= 3 or grid.shape[0] != x.shape[0] or \
            len(grid.shape) != spatial + 2 or grid.shape[-1] != spatial:
        raise InvalidArgument(f"node {node.name!r} (GridSample): X {x.shape} ({x.dtype}) and grid {grid.shape} must "
                              "be (N, C, *spatial) floats and (N, *out, spatial rank), 1 to 3 spatial axes")
    return mode, padding, bool(node.attrs.get("align_corners", 0))


def _infer(node, ins):
    _parts(node, ins)
    x, grid = ins
    return [TensorInfo(x.dtype, x.shape[:2] + grid.shape[1:-1])]


def _reflect(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Mirror v at lo and hi until it lies between them."""
    span = hi - lo
    if span <= 0:
        return np.full_like(v, lo)
    below, above = v < lo, v > hi
    dx = np.where(below, lo - v, np.where(above, v - hi, 0))
    n = np.floor(dx / span)
    r = dx - n * span
    even = n % 2 == 0
    low_side = np.where(even, lo + r, hi - r)
    high_side = np.where(even, hi - r, lo + r)
    return np.where(below, low_side, np.where(above, high_side, v))


def _cubic(t: np.ndarray) -> list[np.ndarray]:
    t1, t2, u = t + 1, 2 - t, 1 - t
    return [((A * t1 - 5 * A) * t1 + 8 * A) * t1 - 4 * A, ((A + 2) * t - (A + 3)) * t * t + 1,
            ((A + 2) * u - (A + 3)) * u * u + 1, ((A * t2 - 5 * A) * t2 + 8 * A) * t2 - 4 * A]


def _taps(x: np.ndarray, size: int, mode: str, padding: str, lo: float, hi: float):
    """Per tap: (index to read, weight, inside) for coordinates x along an axis of `size` pixels."""
    if mode == "nearest":
        x = np.rint(x)
    if padding == "border":
        x = np.where((x < lo) | (x > hi), np.clip(x, 0, size - 1), x)
    elif padding == "reflection":
        x = _reflect(x, lo, hi)
    if mode == "nearest":
        index, weights, offsets = [x], [np.ones_like(x)], None
    else:
        base = np.floor(x)
        t = x - base
        offsets = (0, 1) if mode == "linear" else (-1, 0, 1, 2)
        weights = [1 - t, t] if mode == "linear" else _cubic(t)
        index = [base + o for o in offsets]
    taps = []
    for i, w in zip(index, weights):
        i = i.astype(np.int64)
        if padding == "zeros":
            inside = (i >= 0) & (i < size)
            taps.append((np.clip(i, 0, size - 1), w, inside))
        else:
            if padding == "reflection":
                i = _reflect(i.astype(np.float64), lo, hi).astype(np.int64)
            taps.append((np.clip(i, 0, size - 1), w, None))
    return taps


def _build(node, ins, outs):
    mode, padding, corners = _parts(node, ins)
    dims = ins[0].shape[2:]
    bounds = [(0.0, d - 1.0) if corners else (-0.5, d - 0.5) for d in dims]

    def run(i, o):
        x, grid = i[0], i[1]
        n, c = x.shape[:2]
        positions = int(np.prod(grid.shape[1:-1]))
        for b in range(n):
            g = grid[b].reshape(positions, len(dims)).astype(np.float64)[:, ::-1]  # (x, y, z) -> axis order
            coords = [((g[:, a] + 1) / 2 * (d - 1)) if corners else (((g[:, a] + 1) * d - 1) / 2)
                      for a, d in enumerate(dims)]
            per_axis = [_taps(coords[a], d, mode, padding, *bounds[a]) for a, d in enumerate(dims)]
            total = np.zeros((c, positions), np.float64)
            for combo in itertools.product(*per_axis):
                weight = np.prod([w for _, w, _ in combo], axis=0)
                for _, _, inside in combo:
                    if inside is not None:
                        weight = weight * inside
                total += x[b][(slice(None),) + tuple(idx for idx, _, _ in combo)] * weight
            np.copyto(o[0][b].reshape(c, positions), total, casting="unsafe")

    return run


register(OpDef("GridSample", _infer, _build))


# -- RoiAlign -----------------------------------------------------------------------------------------------

MAX_ROI_SAMPLES = 1 << 24  # bilinear samples one region may take (adaptive sampling of a hostile huge box)


def _roi_infer(node, ins):
    x, rois, idx = ins
    if len(x.shape) != 4 or x.dtype.kind != "f" or rois.shape[-1:] != (4,) or len(rois.shape) != 2 \
            or idx.shape != rois.shape[:1] or idx.dtype.kind not in "iu" or rois.dtype != x.dtype:
        raise InvalidArgument(f"node {node.name!r} (RoiAlign): X {x.shape}, rois {rois.shape} and batch_indices "
                              f"{idx.shape} must be (N, C, H, W) floats, (R, 4) of X's type and (R,) integers")
    if node.attrs.get("mode", "avg") not in ("avg", "max"):
        raise UnsupportedModel(f"node {node.name!r} (RoiAlign): mode {node.attrs['mode']!r} is not supported")
    h, w = node.attrs.get("output_height", 1), node.attrs.get("output_width", 1)
    if h < 1 or w < 1 or node.attrs.get("sampling_ratio", 0) < 0:
        raise InvalidArgument(f"node {node.name!r} (RoiAlign): output sizes and sampling_ratio must be positive")
    return [TensorInfo(x.dtype, (rois.shape[0], x.shape[1], h, w))]


def _roi_samples(y: np.ndarray, x: np.ndarray, height: int, width: int):
    """The four bilinear taps of each sample: flat positions and weights, zero weight outside the image."""
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y, x = np.maximum(y, 0), np.maximum(x, 0)
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    y_edge, x_edge = y0 >= height - 1, x0 >= width - 1
    y0, x0 = np.where(y_edge, height - 1, y0), np.where(x_edge, width - 1, x0)
    y, x = np.where(y_edge, y0, y), np.where(x_edge, x0, x)
    y1, x1 = np.where(y_edge, y0, y0 + 1), np.where(x_edge, x0, x0 + 1)
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    pos = [y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1]
    weights = [hy * hx, hy * lx, ly * hx, ly * lx]
    return [np.where(outside, 0, p) for p in pos], [np.where(outside, 0.0, wt) for wt in weights]


def _build_roi(node, ins, outs):
    a = node.attrs
    oh, ow = a.get("output_height", 1), a.get("output_width", 1)
    ratio, scale = a.get("sampling_ratio", 0), a.get("spatial_scale", 1.0)
    is_max = a.get("mode", "avg") == "max"
    half = a.get("coordinate_transformation_mode", "half_pixel") == "half_pixel"
    n, c, height, width = ins[0].shape

    def run(i, o):
        x, rois, batch = i[0], i[1].astype(np.float64), i[2]
        if batch.size and (batch.min() < 0 or batch.max() >= n):
            raise InvalidArgument(f"node {node.name!r} (RoiAlign): batch index out of range [0, {n}) on this request")
        for r in range(rois.shape[0]):
            x0, y0, x1, y1 = rois[r] * scale - (0.5 if half else 0.0)
            rw, rh = x1 - x0, y1 - y0
            if not half:
                rw, rh = max(rw, 1.0), max(rh, 1.0)
            gh = ratio or int(np.ceil(rh / oh)) if np.isfinite(rh) else 0
            gw = ratio or int(np.ceil(rw / ow)) if np.isfinite(rw) else 0
            if gh * gw * oh * ow > MAX_ROI_SAMPLES or gh < 0 or gw < 0:
                raise InvalidArgument(f"node {node.name!r} (RoiAlign): region {r} needs {gh} x {gw} samples per "
                                      "bin on this request; give the model a sampling_ratio")
            by, bx = rh / oh, rw / ow
            ys = y0 + np.arange(oh)[:, None] * by + (np.arange(gh)[None, :] + 0.5) * by / max(gh, 1)  # (oh, gh)
            xs = x0 + np.arange(ow)[:, None] * bx + (np.arange(gw)[None, :] + 0.5) * bx / max(gw, 1)  # (ow, gw)
            yy = np.broadcast_to(ys[:, None, :, None], (oh, ow, gh, gw)).reshape(-1)
            xx = np.broadcast_to(xs[None, :, None, :], (oh, ow, gh, gw)).reshape(-1)
            pos, weights = _roi_samples(yy, xx, height, width)
            plane = x[int(batch[r])].reshape(c, -1).astype(np.float64)
            taps = [plane[:, p] * wt for p, wt in zip(pos, weights)]  # (C, samples) each
            if is_max:  # onnxruntime's max mode: the largest weighted tap, then the largest sample
                value = np.maximum.reduce(taps).reshape(c, oh, ow, gh * gw).max(axis=-1) if gh * gw else \
                    np.zeros((c, oh, ow))
            else:
                value = sum(taps).reshape(c, oh, ow, gh * gw).sum(axis=-1) / max(gh * gw, 1)
            np.copyto(o[0][r], value, casting="unsafe")

    return run


register(OpDef("RoiAlign", _roi_infer, _build_roi))
