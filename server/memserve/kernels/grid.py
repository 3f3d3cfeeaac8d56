"""GridSample: X (N, C, *spatial) sampled at the normalized coordinates of grid (N, *out, S) in [-1, 1].

Per spatial axis the coordinate is mapped to pixels (align_corners: -1 and 1 are the centres of the edge
pixels, else their outer edges), rounded for `nearest`, and brought back inside by `border` (clamped) or
`reflection` (mirrored at the edges) when it falls out. Interpolation is separable: per axis, 1
(nearest), 2 (linear) or 4 (cubic, Keys' kernel with a = -0.75) taps of pixel indices and weights; a tap
outside the image reads 0 (`zeros`), the edge (`border`) or its mirror (`reflection`). The output sums
every combination of taps, one gather of (C, positions) each: at most 4^3 for 3-D cubic.
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
