"""Ops that move elements by index or by block: GatherElements, GatherND, ScatterElements, ScatterND,
TopK, OneHot, CumSum and CumProd, DepthToSpace, SpaceToDepth.

Every index a request brings is checked against its dimension before it is used, and a bad one fails
the request with the node's name (numpy would wrap a negative index past the start, or raise an
IndexError that says nothing of the model). Scatter outputs start as a copy of their data; duplicate
indices without a reduction keep the last update, as onnxruntime does on one thread.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UnsupportedModel
from . import Node, OpDef, TensorInfo, node_error, register
from .shape import check_rank, ints, norm_axis

REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}



def _check_integer(node: Node, info: TensorInfo, what: str = "indices") -> None:
    if info.dtype.kind not in "iu":
        raise node_error(node, f"{what} must be integers, got {info.dtype}")


def _in_range(node: Node, idx: np.ndarray, dim: int) -> np.ndarray:
    """idx with negatives counted from the end; any outside [-dim, dim) fails the request."""
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise node_error(node, f"index out of range [-{dim}, {dim}) on this request")
    return np.where(idx < 0, idx + dim, idx) if idx.size and idx.min() < 0 else idx


def _reduction(node: Node):
    name = node.attrs.get("reduction", "none")
    if name not in REDUCTIONS:
        raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): reduction {name!r} is not supported")
    return REDUCTIONS[name]


# -- GatherElements / ScatterElements ----------------------------------------------------------------

def _elements_check(node: Node, data: TensorInfo, idx: TensorInfo) -> int:
    _check_integer(node, idx)
    if len(idx.shape) != len(data.shape) or not data.shape:
        raise node_error(node, f"indices {idx.shape} and data {data.shape} must have the same rank, at least 1")
    axis = norm_axis(node, node.attrs.get("axis", 0), len(data.shape))
    if any(i > d for k, (i, d) in enumerate(zip(idx.shape, data.shape)) if k != axis):
        raise node_error(node, f"indices {idx.shape} exceed data {data.shape} off the axis")
    return axis


def _gather_elements_infer(node, ins):
    _elements_check(node, ins[0], ins[1])
    return [TensorInfo(ins[0].dtype, ins[1].shape)]


def _build_gather_elements(node, ins, outs):
    axis = _elements_check(node, ins[0], ins[1])
    dim = ins[0].shape[axis]
    window = tuple(slice(None) if k == axis else slice(0, n) for k, n in enumerate(ins[1].shape))

    def run(i, o):
        idx = _in_range(node, i[1], dim)
        np.copyto(o[0], np.take_along_axis(i[0][window], idx, axis=axis))

    return run


def _scatter_elements_infer(node, ins):
    data, idx, upd = ins
    _elements_check(node, data, idx)
    if upd.shape != idx.shape or upd.dtype != data.dtype:
        raise node_error(node, f"updates {upd.shape} {upd.dtype} must match indices {idx.shape} and data's type")
    return [TensorInfo(data.dtype, data.shape)]


def _build_scatter_elements(node, ins, outs):
    axis = _elements_check(node, ins[0], ins[1])
    dim = ins[0].shape[axis]
    reduce = _reduction(node)
    grid = [np.arange(n).reshape((1,) * k + (n,) + (1,) * (len(ins[1].shape) - k - 1))
            for k, n in enumerate(ins[1].shape)]

    def run(i, o):
        idx = _in_range(node, i[1], dim)
        np.copyto(o[0], i[0])
        where = tuple(idx if k == axis else g for k, g in enumerate(grid))
        if reduce is None:
            o[0][where] = i[2]
        else:
            reduce.at(o[0], where, i[2])

    return run


# -- GatherND / ScatterND ----------------------------------------------------------------------------

def _nd_check(node: Node, data: TensorInfo, idx: TensorInfo, batch: int = 0) -> int:
    _check_integer(node, idx)
    if not idx.shape or not data.shape:
        raise node_error(node, "data and indices must have at least one dimension")
    k = idx.shape[-1]
    if not 0 <= batch < min(len(data.shape), len(idx.shape)) or data.shape[:batch] != idx.shape[:batch]:
        raise node_error(node, f"batch_dims {batch} does not fit data {data.shape} and indices {idx.shape}")
    if not 1 <= k <= len(data.shape) - batch:
        raise node_error(node, f"indices' last dimension {k} must be 1 to {len(data.shape) - batch}")
    return k


def _gather_nd_infer(node, ins):
    b = node.attrs.get("batch_dims", 0)
    k = _nd_check(node, ins[0], ins[1], b)
    return [TensorInfo(ins[0].dtype, ins[1].shape[:-1] + ins[0].shape[b + k:])]


def _coords(node: Node, idx: np.ndarray, dims: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    return tuple(_in_range(node, idx[..., j], d) for j, d in enumerate(dims))


def _build_gather_nd(node, ins, outs):
    b = node.attrs.get("batch_dims", 0)
    k = _nd_check(node, ins[0], ins[1], b)
    data_shape, idx_shape = ins[0].shape, ins[1].shape
    batches = math.prod(data_shape[:b])
    dims = data_shape[b:b + k]
    lead = np.arange(batches).reshape((batches,) + (1,) * (len(idx_shape) - b - 1))

    def run(i, o):
        data = i[0].reshape((batches,) + data_shape[b:])
        idx = i[1].reshape((batches,) + idx_shape[b:])
        picked = data[(lead,) + _coords(node, idx, dims)]
        np.copyto(o[0], picked.reshape(o[0].shape))

    return run


def _scatter_nd_infer(node, ins):
    data, idx, upd = ins
    k = _nd_check(node, data, idx)
    want = idx.shape[:-1] + data.shape[k:]
    if upd.shape != want or upd.dtype != data.dtype:
        raise node_error(node, f"updates must be {data.dtype} {want}, got {upd.dtype} {upd.shape}")
    return [TensorInfo(data.dtype, data.shape)]


def _build_scatter_nd(node, ins, outs):
    k = _nd_check(node, ins[0], ins[1])
    dims = ins[0].shape[:k]
    reduce = _reduction(node)

    def run(i, o):
        where = _coords(node, i[1], dims)
        np.copyto(o[0], i[0])
        if reduce is None:
            o[0][where] = i[2]
        else:
            reduce.at(o[0], where, i[2])

    return run


# -- TopK ---------------------------------------------------------------------------------------------

def _topk_parts(node: Node, ins) -> tuple[int, int]:
    x = ins[0]
    if not x.shape:
        raise node_error(node, "input must have at least one dimension")
    axis = norm_axis(node, node.attrs.get("axis", -1), len(x.shape))
    if node.opset < 10:
        k = node.attrs.get("k", 0)
    else:
        ks = ints(ins[1])
        if len(ks) != 1:
            raise node_error(node, f"k must hold one value, got {len(ks)}")
        k = ks[0]
    if not 0 <= k <= x.shape[axis]:
        raise node_error(node, f"k {k} is outside 0..{x.shape[axis]} (the axis' size)")
    return axis, k


def _topk_infer(node, ins):
    axis, k = _topk_parts(node, ins)
    shape = ins[0].shape[:axis] + (k,) + ins[0].shape[axis + 1:]
    return [TensorInfo(ins[0].dtype, shape), TensorInfo(np.dtype(np.int64), shape)]


def _build_topk(node, ins, outs):
    axis, k = _topk_parts(node, ins)
    n = ins[0].shape[axis]
    largest = node.attrs.get("largest", 1)
    first_k = (slice(None),) * axis + (slice(0, k),)

    def run(i, o):
        x = i[0]
        if largest:  # descending, equal values by lower index: a stable ascending sort of x reversed, read backwards
            order = n - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
        else:
            order = np.argsort(x, axis=axis, kind="stable")
        np.copyto(o[1], order[first_k])
        np.copyto(o[0], np.take_along_axis(x, o[1], axis=axis))

    return run


# -- OneHot -------------------------------------------------------------------------------------------

MAX_DEPTH = 1 << 24  # a depth larger than this would make even one index's output 16M elements


def _onehot_parts(node: Node, ins) -> tuple[int, int]:
    idx, depth, values = ins
    if depth.value is None:
        raise UnsupportedModel(f"node {node.name!r} (OneHot): depth must be known when the model loads")
    d = float(np.asarray(depth.value).reshape(-1)[0]) if np.asarray(depth.value).size == 1 else None
    if d is None or not 1 <= d <= MAX_DEPTH:
        raise node_error(node, f"depth must be one value from 1 to {MAX_DEPTH}, got {depth.value!r:.64}")
    if len(values.shape) != 1 or values.shape[0] != 2:
        raise node_error(node, f"values must hold two elements [off, on], got shape {values.shape}")
    axis = norm_axis(node, node.attrs.get("axis", -1), len(idx.shape) + 1)
    return int(d), axis


def _onehot_infer(node, ins):
    depth, axis = _onehot_parts(node, ins)
    shape = ins[0].shape[:axis] + (depth,) + ins[0].shape[axis:]
    return [TensorInfo(ins[2].dtype, check_rank(node, shape))]


def _build_onehot(node, ins, outs):
    depth, axis = _onehot_parts(node, ins)

    def run(i, o):
        idx = np.asarray(i[0]).astype(np.int64)  # float indices are truncated, as onnxruntime does
        idx = np.where(idx < 0, idx + depth, idx)
        off, on = i[2][0], i[2][1]
        o[0].fill(off)
        hit = (idx >= 0) & (idx < depth)  # an index out of range leaves its row all `off`
        at = np.nonzero(hit)
        np.moveaxis(o[0], axis, -1)[at + (idx[hit],)] = on

    return run


# -- CumSum -------------------------------------------------------------------------------------------

def _cumsum_axis(node: Node, ins) -> int | None:
    """The axis, or None when it arrives with each request (a graph input: value_inputs)."""
    if math.prod(ins[1].shape) != 1:
        raise node_error(node, f"axis must be one value, got shape {ins[1].shape}")
    if ins[1].value is None:
        return None
    return norm_axis(node, ints(ins[1])[0], len(ins[0].shape))


def _cumsum_infer(node, ins):
    _cumsum_axis(node, ins)
    return [TensorInfo(ins[0].dtype, ins[0].shape)]


def _build_cumulative(node, ins, outs):
    """CumSum and CumProd: the running sum (product) along the axis, optionally reversed and exclusive."""
    known = _cumsum_axis(node, ins)
    running, identity = (np.cumsum, 0) if node.op_type == "CumSum" else (np.cumprod, 1)
    reverse, exclusive = node.attrs.get("reverse", 0), node.attrs.get("exclusive", 0)
    rank = len(ins[0].shape)

    def run(i, o):
        axis = known if known is not None else norm_axis(node, int(i[1].reshape(())), rank)
        n = o[0].shape[axis]

        def flip(a):
            return np.flip(a, axis) if reverse else a

        y = flip(o[0])
        if not exclusive:
            running(flip(i[0]), axis=axis, dtype=y.dtype, out=y)
            return
        lead = (slice(None),) * axis
        y[lead + (0,)] = identity
        if n > 1:
            running(flip(i[0])[lead + (slice(0, n - 1),)], axis=axis, dtype=y.dtype, out=y[lead + (slice(1, n),)])

    return run


# -- DepthToSpace / SpaceToDepth ------------------------------------------------------------------------

def _block(node: Node, x: TensorInfo) -> int:
    bs = node.attrs.get("blocksize", 0)
    if len(x.shape) != 4 or bs < 1:
        raise node_error(node, f"needs a 4-D input and blocksize >= 1, got {x.shape} and {bs}")
    return bs


def _d2s_infer(node, ins):
    b, c, h, w = ins[0].shape
    bs = _block(node, ins[0])
    if c % (bs * bs):
        raise node_error(node, f"channels {c} are not a multiple of blocksize^2 {bs * bs}")
    return [TensorInfo(ins[0].dtype, (b, c // (bs * bs), h * bs, w * bs))]


def _build_d2s(node, ins, outs):
    b, c, h, w = ins[0].shape
    bs = _block(node, ins[0])
    c2 = c // (bs * bs)
    if node.attrs.get("mode", "DCR") == "CRD":
        split, order = (b, c2, bs, bs, h, w), (0, 1, 4, 2, 5, 3)
    else:
        split, order = (b, bs, bs, c2, h, w), (0, 3, 4, 1, 5, 2)

    def run(i, o):
        np.copyto(o[0].reshape(b, c2, h, bs, w, bs), i[0].reshape(split).transpose(order))

    return run


def _s2d_infer(node, ins):
    b, c, h, w = ins[0].shape
    bs = _block(node, ins[0])
    if h % bs or w % bs:
        raise node_error(node, f"height {h} and width {w} must be multiples of blocksize {bs}")
    return [TensorInfo(ins[0].dtype, (b, c * bs * bs, h // bs, w // bs))]


def _build_s2d(node, ins, outs):
    b, c, h, w = ins[0].shape
    bs = _block(node, ins[0])

    crd = node.attrs.get("mode", "DCR") == "CRD"  # channel-major blocks (opset 25); DCR: block-major
    order, split = ((0, 1, 3, 5, 2, 4), (b, c, bs, bs, h // bs, w // bs)) if crd else \
        ((0, 3, 5, 1, 2, 4), (b, bs, bs, c, h // bs, w // bs))

    def run(i, o):
        np.copyto(o[0].reshape(split), i[0].reshape(b, c, h // bs, bs, w // bs, bs).transpose(order))

    return run


register(OpDef("GatherElements", _gather_elements_infer, _build_gather_elements))
register(OpDef("ScatterElements", _scatter_elements_infer, _build_scatter_elements))
register(OpDef("GatherND", _gather_nd_infer, _build_gather_nd))
register(OpDef("ScatterND", _scatter_nd_infer, _build_scatter_nd))
register(OpDef("TopK", _topk_infer, _build_topk, const_inputs=(1,)))
register(OpDef("OneHot", _onehot_infer, _build_onehot, const_inputs=(1,)))
register(OpDef("CumSum", _cumsum_infer, _build_cumulative, const_inputs=(1,), value_inputs=(1,)))
register(OpDef("CumProd", _cumsum_infer, _build_cumulative, const_inputs=(1,), value_inputs=(1,)))
register(OpDef("DepthToSpace", _d2s_infer, _build_d2s))
register(OpDef("SpaceToDepth", _s2d_infer, _build_s2d))
