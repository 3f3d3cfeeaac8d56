"""Ops whose output size depends on the data: NonZero, Compress, Unique, NonMaxSuppression.

Each is planned at the largest its outputs can be (OpDef.sized): every element non-zero, every
condition true, every value distinct, every box kept. The kernel writes each result compactly from the
start of its output's bytes and returns the actual shapes; the engine returns the outputs cut to them.
"""
from __future__ import annotations

import math

import numpy as np

from . import OpDef, TensorInfo, node_error, register
from .shape import norm_axis

I64 = np.dtype(np.int64)



def _put(out: np.ndarray, value: np.ndarray) -> tuple[int, ...]:
    out.reshape(-1)[:value.size] = value.reshape(-1)
    return value.shape


# -- NonZero --------------------------------------------------------------------------------------------

def _nonzero_infer(node, ins):
    x = ins[0]
    return [TensorInfo(I64, (max(len(x.shape), 1), math.prod(x.shape)))]


def _build_nonzero(node, ins, outs):
    def run(i, o):
        x = i[0] if i[0].ndim else i[0].reshape(1)  # a scalar counts as one element
        return [_put(o[0], np.array(np.nonzero(x), np.int64).reshape(max(i[0].ndim, 1), -1))]

    return run


# -- Compress -------------------------------------------------------------------------------------------

def _compress_infer(node, ins):
    x, cond = ins
    if cond.dtype != np.dtype(bool) or len(cond.shape) != 1:
        raise node_error(node, f"condition must be a 1-D bool tensor, got {cond.dtype} {cond.shape}")
    if "axis" not in node.attrs:
        return [TensorInfo(x.dtype, (min(cond.shape[0], math.prod(x.shape)),))]
    axis = norm_axis(node, node.attrs["axis"], len(x.shape))
    return [TensorInfo(x.dtype, x.shape[:axis] + (min(cond.shape[0], x.shape[axis]),) + x.shape[axis + 1:])]


def _build_compress(node, ins, outs):
    axis = norm_axis(node, node.attrs["axis"], len(ins[0].shape)) if "axis" in node.attrs else None

    def run(i, o):
        x, cond = i[0], i[1]
        limit = x.size if axis is None else x.shape[axis]
        picked = np.compress(cond[:limit], x, axis=axis)  # a condition longer than the axis: its tail is ignored
        return [_put(o[0], picked)]

    return run


# -- Unique ---------------------------------------------------------------------------------------------

def _unique_infer(node, ins):
    x = ins[0]
    if "axis" in node.attrs:
        axis = norm_axis(node, node.attrs["axis"], len(x.shape))
        n = x.shape[axis]
        y = x.shape[:axis] + (n,) + x.shape[axis + 1:]
    else:
        n = math.prod(x.shape)
        y = (n,)
    return [TensorInfo(x.dtype, y), TensorInfo(I64, (n,)), TensorInfo(I64, (n,)), TensorInfo(I64, (n,))][
        :len(node.outputs)]


def _build_unique(node, ins, outs):
    axis = norm_axis(node, node.attrs["axis"], len(ins[0].shape)) if "axis" in node.attrs else None
    ordered = node.attrs.get("sorted", 1)

    def run(i, o):
        x = i[0]
        values, first, inverse, counts = np.unique(x, return_index=True, return_inverse=True, return_counts=True,
                                                   axis=axis, equal_nan=False) if axis is not None else \
            np.unique(x.reshape(-1), return_index=True, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        if not ordered:  # in order of first occurrence
            order = np.argsort(first, kind="stable")
            rank = np.empty_like(order)
            rank[order] = np.arange(order.size)
            values = np.take(values, order, axis=0 if axis is None else axis)
            first, counts, inverse = first[order], counts[order], rank[inverse]
        results = [values, first, inverse, counts]
        return [_put(out, r) for out, r in zip(o[:len(node.outputs)], results)]

    return run


# -- NonMaxSuppression --------------------------------------------------------------------------------------

def _nms_infer(node, ins):
    boxes, scores = ins[0], ins[1]
    if len(boxes.shape) != 3 or boxes.shape[2] != 4 or len(scores.shape) != 3 \
            or scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        raise node_error(node, f"boxes {boxes.shape} must be (batch, boxes, 4) and scores {scores.shape} "
                          "(batch, classes, boxes)")
    b, c, n = scores.shape
    return [TensorInfo(I64, (b * c * n, 3))]


def _corners(boxes: np.ndarray, center: bool) -> np.ndarray:
    """(y1, x1, y2, x2) with y1 <= y2 and x1 <= x2, from either box format."""
    if center:
        xc, yc, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
    y1, x1, y2, x2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], axis=1)


def _keep(corners: np.ndarray, scores: np.ndarray, limit: int, iou: float, floor: float | None) -> list[int]:
    """Greedy selection: best score first; a box overlapping a kept one by more than `iou` is dropped."""
    order = np.argsort(-scores, kind="stable")
    if floor is not None:
        order = order[scores[order] > floor]
    area = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
    kept: list[int] = []
    for k in order:
        if len(kept) >= limit:
            break
        if kept:
            other = corners[kept]
            h = np.maximum(0, np.minimum(corners[k, 2], other[:, 2]) - np.maximum(corners[k, 0], other[:, 0]))
            w = np.maximum(0, np.minimum(corners[k, 3], other[:, 3]) - np.maximum(corners[k, 1], other[:, 1]))
            inter = h * w
            union = area[k] + area[kept] - inter
            overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
            if np.any(overlap > iou):
                continue
        kept.append(int(k))
    return kept


def _build_nms(node, ins, outs):
    center = node.attrs.get("center_point_box", 0)

    def scalar(i, k, default):
        return i[k].reshape(-1)[0] if len(i) > k and i[k] is not None and i[k].size else default

    def run(i, o):
        boxes, scores = i[0], i[1]
        limit = int(min(max(int(scalar(i, 2, 0)), 0), boxes.shape[1]))
        iou = float(scalar(i, 3, 0.0))
        floor = float(scalar(i, 4, 0.0)) if len(i) > 4 and i[4] is not None else None
        picked = []
        for b in range(boxes.shape[0]):
            corners = _corners(boxes[b].astype(np.float64), center)
            for c in range(scores.shape[1]):
                picked += [(b, c, k) for k in _keep(corners, scores[b, c].astype(np.float64), limit, iou, floor)]
        return [_put(o[0], np.array(picked, np.int64).reshape(-1, 3))]

    return run


register(OpDef("NonZero", _nonzero_infer, _build_nonzero, sized=True))
register(OpDef("Compress", _compress_infer, _build_compress, sized=True))
register(OpDef("Unique", _unique_infer, _build_unique, sized=True))
register(OpDef("NonMaxSuppression", _nms_infer, _build_nms, sized=True))
