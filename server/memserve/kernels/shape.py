"""Data movement: views (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout)
and copies (Transpose, Concat, Split, Slice, Gather, Expand, Tile, Pad, Where, Trilu,
Cast), plus the ops that make shapes (Shape, Size, ConstantOfShape, Range)."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
from onnx import helper, numpy_helper

from ..errors import InvalidArgument, UnsupportedModel
from . import DTYPES, STORAGE_DTYPES, Node, OpDef, TensorInfo, node_error, register


def count(shape) -> int:
    return math.prod(int(d) for d in shape)  # Python ints: a hostile shape cannot wrap around


MAX_RANK = 64  # numpy's limit: a tensor of more dimensions cannot be made, so its shape is refused


def check_rank(node: Node, shape) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): {len(shape)} dimensions; at most {MAX_RANK}")
    return shape


def norm_axis(node: Node, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def ints(info: TensorInfo | None) -> list[int] | None:
    return None if info is None else [int(v) for v in np.asarray(info.value).reshape(-1)]


def attr_or_input(node: Node, ins: list, attr: str, index: int, since: int) -> list[int] | None:
    """Parameters that moved from an attribute to an input at opset `since`."""
    if node.opset < since:
        v = node.attrs.get(attr)
        return None if v is None else [int(x) for x in v]
    return ints(ins[index]) if len(ins) > index else None


def _same(node, ins):
    return [TensorInfo(ins[0].dtype, ins[0].shape)]


def _copy_kernel(fn):
    """A kernel that copies fn(inputs...) (a view or a broadcast) into the output."""
    def build(node, ins, outs):
        def run(i, o):
            np.copyto(o[0], fn(node, *i), casting="unsafe")

        return run

    return build


# -- views --------------------------------------------------------------------

def _reshape_infer(node, ins):
    x = ins[0]
    dims = ints(ins[1])
    if not node.attrs.get("allowzero", 0):  # 0 copies the input's dimension at that index
        if any(d == 0 and i >= len(x.shape) for i, d in enumerate(dims)):
            raise InvalidArgument(f"node {node.name!r} (Reshape): a 0 in {dims[:8]} past the input's rank "
                                  f"{len(x.shape)} has no dimension to copy")
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if dims.count(-1) > 1:
        raise InvalidArgument(f"node {node.name!r} (Reshape): more than one -1 in {dims}")
    if -1 in dims:
        known = count([d for d in dims if d != -1])
        if known == 0 or count(x.shape) % known:
            raise InvalidArgument(f"node {node.name!r} (Reshape): cannot reshape {x.shape} to {dims}")
        dims[dims.index(-1)] = count(x.shape) // known
    if count(dims) != count(x.shape) or any(d < 0 for d in dims):
        raise InvalidArgument(f"node {node.name!r} (Reshape): cannot reshape {x.shape} to {dims}")
    return [TensorInfo(x.dtype, check_rank(node, dims))]


def _flatten_infer(node, ins):
    x = ins[0]
    rank = len(x.shape)
    axis = node.attrs.get("axis", 1)
    if not -rank <= axis <= rank:
        raise InvalidArgument(f"node {node.name!r} (Flatten): axis {axis} out of range for {x.shape}")
    axis = axis + rank if axis < 0 else axis
    return [TensorInfo(x.dtype, (count(x.shape[:axis]), count(x.shape[axis:])))]


def _squeeze_infer(node, ins):
    x = ins[0]
    axes = attr_or_input(node, ins, "axes", 1, 13)
    if axes is None:
        shape = tuple(d for d in x.shape if d != 1)
    else:
        axes = {norm_axis(node, a, len(x.shape)) for a in axes}
        if any(x.shape[a] != 1 for a in axes):
            raise InvalidArgument(f"node {node.name!r} (Squeeze): axes {sorted(axes)} of {x.shape} are not all 1")
        shape = tuple(d for k, d in enumerate(x.shape) if k not in axes)
    return [TensorInfo(x.dtype, shape)]


def _unsqueeze_infer(node, ins):
    x = ins[0]
    axes = attr_or_input(node, ins, "axes", 1, 13)
    if axes is None:
        raise InvalidArgument(f"node {node.name!r} (Unsqueeze): no axes")
    rank = len(x.shape) + len(axes)
    check_rank(node, range(rank))
    axes = sorted(norm_axis(node, a, rank) for a in axes)
    if len(set(axes)) != len(axes):
        raise InvalidArgument(f"node {node.name!r} (Unsqueeze): axes {axes} repeat an axis")
    shape, it = [], iter(x.shape)
    for k in range(rank):
        shape.append(1 if k in axes else next(it))
    return [TensorInfo(x.dtype, tuple(shape))]


def _identity_infer(node, ins):
    return [TensorInfo(ins[0].dtype, ins[0].shape)]


register(OpDef("Reshape", _reshape_infer, alias=True, const_inputs=(1,)))
register(OpDef("Flatten", _flatten_infer, alias=True))
register(OpDef("Squeeze", _squeeze_infer, alias=True, const_inputs=(1,)))
register(OpDef("Unsqueeze", _unsqueeze_infer, alias=True, const_inputs=(1,)))
register(OpDef("Identity", _identity_infer, alias=True))
def _dropout_ratio(node, ins) -> float:
    """The ratio dropped: 0 unless in training mode (opset 12's input, or before it the is_test attribute)."""
    training = len(ins) > 2 and ins[2] is not None and bool(np.asarray(ins[2].value).reshape(-1)[0])
    if not training:
        return 0.0
    ratio = float(np.asarray(ins[1].value).reshape(-1)[0]) if len(ins) > 1 and ins[1] is not None else 0.5
    if not 0 <= ratio < 1:
        raise node_error(node, f"ratio must be in [0, 1), got {ratio}")
    return ratio


def _dropout_infer(node, ins):
    _dropout_ratio(node, ins)
    return [TensorInfo(ins[0].dtype, ins[0].shape), TensorInfo(np.dtype(bool), ins[0].shape)]


def _build_dropout(node, ins, outs):
    ratio = _dropout_ratio(node, ins)
    seed = node.attrs.get("seed")
    if not ratio:
        def run(i, o):  # output = input, mask all true
            np.copyto(o[0], i[0])
            if len(o) > 1:
                o[1].fill(True)
    else:
        def run(i, o):  # training mode: keep with probability 1 - ratio, scaled; a seed repeats the mask
            keep = np.random.RandomState(seed).uniform(0, 1.0, i[0].shape) >= ratio  # the reference's draw
            np.multiply(i[0], keep, out=o[0], casting="unsafe")
            o[0] *= o[0].dtype.type(1 / (1 - ratio))
            if len(o) > 1:
                np.copyto(o[1], keep)

    return run


register(OpDef("Dropout", _dropout_infer, _build_dropout, const_inputs=(1, 2)))


# -- shapes -------------------------------------------------------------------

def _shape_infer(node, ins):
    shape = ins[0].shape
    rank = len(shape)
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end", rank)
    start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
    v = np.array(shape[start:end], np.int64)
    return [TensorInfo(v.dtype, v.shape, v)]


def _size_infer(node, ins):
    v = np.array(count(ins[0].shape), np.int64)
    return [TensorInfo(v.dtype, (), v)]


def _cos_value(node) -> np.ndarray:
    t = node.attrs.get("value")
    if t is None:
        return np.zeros(1, np.float32)
    if t.data_location == t.EXTERNAL:  # never read a file a model names
        raise InvalidArgument(f"node {node.name!r} (ConstantOfShape): value keeps its data in an external file")
    value = numpy_helper.to_array(t).reshape(-1)
    if value.size != 1 or value.dtype not in DTYPES:
        raise InvalidArgument(f"node {node.name!r} (ConstantOfShape): value must be one element of a supported "
                              f"type, got {value.size} of {value.dtype}")
    return value


def _constant_of_shape_infer(node, ins):
    shape = check_rank(node, ints(ins[0]))
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"node {node.name!r} (ConstantOfShape): negative dimension in {shape}")
    return [TensorInfo(_cos_value(node).dtype, shape)]


def _build_constant_of_shape(node, ins, outs):
    value = _cos_value(node)[0]

    def run(i, o):
        o[0].fill(value)

    return run


def _range_infer(node, ins):
    values = [np.asarray(i.value) for i in ins]
    if any(v.size != 1 for v in values) or len({v.dtype for v in values}) != 1:
        raise InvalidArgument(f"node {node.name!r} (Range): start, limit and delta must be scalars of one type")
    if values[0].dtype.kind == "f":
        start, limit, delta = (float(v.reshape(())) for v in values)
        if not all(np.isfinite([start, limit, delta])):
            raise InvalidArgument(f"node {node.name!r} (Range): start {start}, limit {limit}, delta {delta} "
                                  "must be finite")
        with np.errstate(all="ignore"):
            steps = np.float64(limit - start) / delta if delta else 0.0
        if not np.isfinite(steps):
            raise InvalidArgument(f"node {node.name!r} (Range): from {start} to {limit} by {delta} is too many "
                                  "elements")
        n = int(np.ceil(steps))
    else:  # exactly, in Python ints: int64 arithmetic would wrap
        start, limit, delta = (int(v.reshape(())) for v in values)
        n = 0 if delta == 0 else -((start - limit) // delta)
    if delta == 0:
        raise InvalidArgument(f"node {node.name!r} (Range): delta is 0")
    return [TensorInfo(ins[0].dtype, (max(n, 0),))]


def _build_range(node, ins, outs):
    start, delta = (np.asarray(ins[k].value).reshape(()) for k in (0, 2))

    def run(i, o):
        n = o[0].shape[0]
        np.copyto(o[0], start + delta * np.arange(n, dtype=o[0].dtype), casting="unsafe")

    return run


register(OpDef("Shape", _shape_infer, shape_only=True))
register(OpDef("Size", _size_infer, shape_only=True))
register(OpDef("ConstantOfShape", _constant_of_shape_infer, _build_constant_of_shape, const_inputs=(0,)))
register(OpDef("Range", _range_infer, _build_range, const_inputs=(0, 1, 2)))


# -- copies -------------------------------------------------------------------

def _perm(node, rank):
    perm = node.attrs.get("perm")
    return list(range(rank))[::-1] if perm is None else [int(p) for p in perm]


def _transpose_infer(node, ins):
    x = ins[0]
    perm = _perm(node, len(x.shape))
    if sorted(perm) != list(range(len(x.shape))):
        raise InvalidArgument(f"node {node.name!r} (Transpose): perm {perm} is not a permutation of rank {len(x.shape)}")
    return [TensorInfo(x.dtype, tuple(x.shape[p] for p in perm))]


def _build_transpose(node, ins, outs):
    perm = _perm(node, len(ins[0].shape))

    def run(i, o):
        np.copyto(o[0], i[0].transpose(perm))

    return run


def _concat_infer(node, ins):
    first = ins[0]
    axis = norm_axis(node, node.attrs["axis"], len(first.shape))
    for t in ins[1:]:
        if len(t.shape) != len(first.shape) or any(a != b for k, (a, b) in enumerate(zip(t.shape, first.shape))
                                                    if k != axis):
            raise InvalidArgument(f"node {node.name!r} (Concat): shapes {[i.shape for i in ins]} differ off axis {axis}")
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in ins)
    return [TensorInfo(first.dtype, tuple(shape))]


def _build_concat(node, ins, outs):
    axis = norm_axis(node, node.attrs["axis"], len(ins[0].shape))

    def run(i, o):
        np.concatenate(i, axis=axis, out=o[0])

    return run


def _split_sizes(node, ins) -> tuple[int, list[int]]:
    x = ins[0]
    axis = norm_axis(node, node.attrs.get("axis", 0), len(x.shape))
    split = attr_or_input(node, ins, "split", 1, 13)
    n = len(node.outputs)
    if split is None:
        n = node.attrs.get("num_outputs", n)
        size = -(-x.shape[axis] // n)
        split = [min(size, x.shape[axis] - k * size) for k in range(n)]
    if sum(split) != x.shape[axis]:
        raise InvalidArgument(f"node {node.name!r} (Split): parts {split} do not add up to {x.shape[axis]}")
    return axis, split


def _split_infer(node, ins):
    axis, split = _split_sizes(node, ins)
    return [TensorInfo(ins[0].dtype, ins[0].shape[:axis] + (s,) + ins[0].shape[axis + 1:]) for s in split]


def _build_split(node, ins, outs):
    axis, split = _split_sizes(node, ins)
    bounds = np.cumsum([0] + split)

    def run(i, o):
        x = i[0]
        index = [slice(None)] * x.ndim
        for k, out in enumerate(o[: len(split)]):
            index[axis] = slice(bounds[k], bounds[k + 1])
            np.copyto(out, x[tuple(index)])

    return run


def _slices(node, ins) -> tuple[slice, ...]:
    shape = ins[0].shape
    if node.opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes, steps = node.attrs.get("axes"), None
    else:
        starts, ends = ints(ins[1]), ints(ins[2])
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        steps = ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    axes = list(range(len(starts))) if axes is None else [norm_axis(node, a, len(shape)) for a in axes]
    steps = steps or [1] * len(starts)
    index = [slice(None)] * len(shape)
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise InvalidArgument(f"node {node.name!r} (Slice): step 0")
        dim = shape[a]
        # ONNX clamps like Python slicing, with INT_MAX/INT_MIN as "to the end".
        s = max(min(s + dim if s < 0 else s, dim if st > 0 else dim - 1), 0 if st > 0 else -1)
        e = max(min(e + dim if e < 0 else e, dim), -1)
        index[a] = slice(s, e if e >= 0 else None, st)
    return tuple(index)


def _slice_infer(node, ins):
    index = _slices(node, ins)
    return [TensorInfo(ins[0].dtype, tuple(len(range(*sl.indices(d))) for d, sl in zip(ins[0].shape, index)))]


def _build_slice(node, ins, outs):
    index = _slices(node, ins)

    def run(i, o):
        np.copyto(o[0], i[0][index])

    return run


def _gather_infer(node, ins):
    data, idx = ins
    if not data.shape:
        raise InvalidArgument(f"node {node.name!r} (Gather): data must have at least one dimension")
    axis = norm_axis(node, node.attrs.get("axis", 0), len(data.shape))
    if not np.issubdtype(idx.dtype, np.integer):
        raise InvalidArgument(f"node {node.name!r} (Gather): indices must be integers, got {idx.dtype}")
    return [TensorInfo(data.dtype, data.shape[:axis] + idx.shape + data.shape[axis + 1:])]


def _build_gather(node, ins, outs):
    axis = norm_axis(node, node.attrs.get("axis", 0), len(ins[0].shape))
    dim = ins[0].shape[axis]
    known = ins[1].value
    if known is not None:  # checked once here; a scalar index is a view, copied in one call
        if known.size and (known.min() < -dim or known.max() >= dim):
            raise InvalidArgument(f"node {node.name!r} (Gather): index out of range [-{dim}, {dim})")
        if known.ndim == 0:
            at = (slice(None),) * axis + (int(known) % dim,)
            return lambda i, o: np.copyto(o[0], i[0][at])
        wrapped = np.asarray(known, np.int64) % dim
        return lambda i, o: np.take(i[0], wrapped, axis=axis, out=o[0])

    def run(i, o):
        idx = i[1]
        if idx.size and (idx.min() < -dim or idx.max() >= dim):
            raise InvalidArgument(f"node {node.name!r} (Gather): index out of range [-{dim}, {dim})")
        np.take(i[0], idx, axis=axis, out=o[0], mode="wrap")

    return run


def _expand_infer(node, ins):
    try:
        shape = np.broadcast_shapes(ins[0].shape, check_rank(node, ints(ins[1])))
    except ValueError:
        raise InvalidArgument(f"node {node.name!r} (Expand): {ins[0].shape} does not broadcast to {ints(ins[1])}") from None
    return [TensorInfo(ins[0].dtype, tuple(shape))]


def _tile_infer(node, ins):
    reps = ints(ins[1])
    if len(reps) != len(ins[0].shape):
        raise InvalidArgument(f"node {node.name!r} (Tile): {len(reps)} repeats for rank {len(ins[0].shape)}")
    return [TensorInfo(ins[0].dtype, tuple(d * r for d, r in zip(ins[0].shape, reps)))]


def _build_tile(node, ins, outs):
    reps = ints(ins[1])
    shape = ins[0].shape

    def run(i, o):
        # View the output as (r0, d0, r1, d1, ...) and broadcast the input into it.
        tiled = o[0].reshape([v for pair in zip(reps, shape) for v in pair])
        np.copyto(tiled, i[0].reshape([v for d in shape for v in (1, d)]))

    return run


def _pads(node, ins) -> tuple[list[int], str, object]:
    mode = node.attrs.get("mode", "constant")
    rank = len(ins[0].shape)
    if node.opset < 11:
        pads, value = list(node.attrs["pads"]), node.attrs.get("value", 0.0)
    else:
        pads = ints(ins[1])
        value = 0
        if len(ins) > 2 and ins[2] is not None:
            if count(ins[2].shape) != 1:
                raise InvalidArgument(f"node {node.name!r} (Pad): constant_value must be one value, got shape "
                                      f"{ins[2].shape}")
            # A graph input (value_inputs) arrives with each request: None here, read by the kernel.
            value = None if ins[2].value is None else np.asarray(ins[2].value).reshape(-1)[0]
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        if axes is not None:
            full = [0] * (2 * rank)
            for k, a in enumerate(axes):
                a = norm_axis(node, a, rank)
                full[a], full[a + rank] = pads[k], pads[k + len(axes)]
            pads = full
    if len(pads) != 2 * rank:
        raise InvalidArgument(f"node {node.name!r} (Pad): {len(pads)} pads for rank {rank}")
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise UnsupportedModel(f"node {node.name!r} (Pad): mode {mode!r} is not supported")
    return pads, mode, value


def _pad_infer(node, ins):
    pads, _, _ = _pads(node, ins)
    rank = len(ins[0].shape)
    shape = tuple(d + pads[k] + pads[k + rank] for k, d in enumerate(ins[0].shape))
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"node {node.name!r} (Pad): negative output shape {shape}")
    return [TensorInfo(ins[0].dtype, shape)]


def _build_pad(node, ins, outs):
    pads, mode, value = _pads(node, ins)
    rank = len(ins[0].shape)
    before, after = pads[:rank], pads[rank:]
    if mode == "constant":
        # Negative pads crop: clip the source and destination windows separately.
        src = tuple(slice(max(-b, 0), d - max(-a, 0)) for b, a, d in zip(before, after, ins[0].shape))
        dst = tuple(slice(max(b, 0), max(b, 0) + s.stop - s.start) for b, s in zip(before, src))

        def run(i, o):
            o[0].fill(value if value is not None else i[2].reshape(-1)[0])
            o[0][dst] = i[0][src]

        return run
    width = [(b, a) for b, a in zip(before, after)]
    np_mode = {"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[mode]

    def run(i, o):  # np.pad allocates: edge/reflect/wrap pads are rare outside image pre-processing
        np.copyto(o[0], np.pad(i[0], width, mode=np_mode))

    return run


def _where_infer(node, ins):
    c, x, y = ins
    if c.dtype != np.bool_ or x.dtype != y.dtype:
        raise InvalidArgument(f"node {node.name!r} (Where): needs a bool condition and two inputs of one type, "
                              f"got {c.dtype}, {x.dtype} and {y.dtype}")
    try:
        shape = np.broadcast_shapes(c.shape, x.shape, y.shape)
    except ValueError:
        raise InvalidArgument(f"node {node.name!r} (Where): shapes do not broadcast") from None
    return [TensorInfo(x.dtype, tuple(shape))]


def _build_where(node, ins, outs):
    def run(i, o):
        np.copyto(o[0], i[2])
        np.copyto(o[0], i[1], where=i[0])

    return run


def _trilu_mask(node, ins, shape) -> np.ndarray:
    k = int(np.asarray(ins[1].value).reshape(())) if len(ins) > 1 and ins[1] is not None else 0
    rows, cols = shape[-2:]
    tri = np.triu if node.attrs.get("upper", 1) else np.tril
    return tri(np.ones((rows, cols), bool), k)


def _build_trilu(node, ins, outs):
    if len(ins) > 1 and ins[1] is not None and ins[1].value is None:  # k arrives with each request
        if count(ins[1].shape) != 1:
            raise InvalidArgument(f"node {node.name!r} (Trilu): k must be one value, got shape {ins[1].shape}")
        rows, cols = ins[0].shape[-2:]
        tri = np.triu if node.attrs.get("upper", 1) else np.tril

        def late(i, o):
            o[0].fill(0)
            k = int(np.clip(i[1].reshape(()), -rows - cols, rows + cols))  # beyond the matrix: all or nothing
            np.copyto(o[0], i[0], where=tri(np.ones((rows, cols), bool), k))

        return late
    mask = _trilu_mask(node, ins, ins[0].shape)

    def run(i, o):
        o[0].fill(0)
        np.copyto(o[0], i[0], where=mask)

    return run


def _cast_infer(node, ins):
    to = node.attrs.get("to")
    if node.op_type == "CastLike":
        return [TensorInfo(ins[1].dtype, ins[0].shape)]
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    except (KeyError, ValueError, TypeError):
        dtype = None
    if dtype not in STORAGE_DTYPES:
        raise UnsupportedModel(f"node {node.name!r} (Cast): target type {to} is not supported")
    return [TensorInfo(dtype, ins[0].shape)]


FLOAT8 = frozenset(np.dtype(getattr(ml_dtypes, t)) for t in (
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz"))
E8M0 = np.dtype(ml_dtypes.float8_e8m0fnu)


def _build_cast(node, ins, outs):
    to = outs[0].dtype
    saturate = bool(node.attrs.get("saturate", 1))
    if to in FLOAT8 and saturate:  # out of range goes to the largest finite value, not to inf or NaN
        def run(i, o):
            np.copyto(o[0], numpy_helper.saturate_cast(i[0], to))
    elif to == E8M0:  # a power of two: the reference's rounding (up by default) and saturation
        mode = node.attrs.get("round_mode", "up")
        if mode not in ("up", "down", "nearest"):
            raise node_error(node, f"round_mode must be up, down or nearest, got {str(mode)[:32]!r}")

        def run(i, o):
            np.copyto(o[0], numpy_helper.to_float8e8m0(i[0], saturate, mode))
    else:
        def run(i, o):
            np.copyto(o[0], i[0], casting="unsafe")

    return run


register(OpDef("Transpose", _transpose_infer, _build_transpose))
register(OpDef("Concat", _concat_infer, _build_concat))
register(OpDef("Split", _split_infer, _build_split, const_inputs=(1,)))
register(OpDef("Slice", _slice_infer, _build_slice, const_inputs=(1, 2, 3, 4)))
register(OpDef("Gather", _gather_infer, _build_gather))
register(OpDef("Expand", _expand_infer, _copy_kernel(lambda node, x, shape: x), const_inputs=(1,)))
register(OpDef("Tile", _tile_infer, _build_tile, const_inputs=(1,)))
register(OpDef("Pad", _pad_infer, _build_pad, const_inputs=(1, 2, 3), value_inputs=(2,)))
register(OpDef("Where", _where_infer, _build_where))
register(OpDef("Trilu", _same, _build_trilu, const_inputs=(1,), value_inputs=(1,)))
register(OpDef("Cast", _cast_infer, _build_cast))
register(OpDef("CastLike", _cast_infer, _build_cast))


def _eyelike_infer(node, ins):
    x = ins[0]
    if len(x.shape) != 2:
        raise InvalidArgument(f"node {node.name!r} (EyeLike): input must be 2-D, got {x.shape}")
    to = node.attrs.get("dtype")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to)) if to is not None else x.dtype
    if dtype not in DTYPES:
        raise UnsupportedModel(f"node {node.name!r} (EyeLike): dtype {dtype} is not supported")
    return [TensorInfo(dtype, x.shape)]


def _build_eyelike(node, ins, outs):
    rows, cols = ins[0].shape
    eye = np.eye(rows, cols, node.attrs.get("k", 0), dtype=outs[0].dtype)  # k beyond the matrix: all zeros

    def run(i, o):
        np.copyto(o[0], eye)

    return run


register(OpDef("EyeLike", _eyelike_infer, _build_eyelike))


def _crop_pad_parts(node, ins) -> tuple[tuple[int, ...], list[int]]:
    x = ins[0]
    sizes = ints(ins[1])
    axes = [norm_axis(node, a, len(x.shape)) for a in node.attrs.get("axes", range(len(x.shape)))]
    if len(sizes) != len(axes) or len(set(axes)) != len(axes) or min(sizes, default=0) < 0:
        raise InvalidArgument(f"node {node.name!r} (CenterCropPad): {len(sizes)} sizes for axes {axes}")
    shape = list(x.shape)
    for a, size in zip(axes, sizes):
        shape[a] = size
    return check_rank(node, shape), axes


def _crop_pad_infer(node, ins):
    shape, _ = _crop_pad_parts(node, ins)
    return [TensorInfo(ins[0].dtype, shape)]


def _build_crop_pad(node, ins, outs):
    shape, _ = _crop_pad_parts(node, ins)
    src, dst = [], []
    for d, s in zip(ins[0].shape, shape):  # the centred window: crop the input or pad around it
        if s <= d:
            start = (d - s) // 2
            src.append(slice(start, start + s))
            dst.append(slice(0, s))
        else:
            start = (s - d) // 2
            src.append(slice(0, d))
            dst.append(slice(start, start + d))
    src, dst = tuple(src), tuple(dst)

    def run(i, o):
        o[0].fill(0)
        o[0][dst] = i[0][src]

    return run


register(OpDef("CenterCropPad", _crop_pad_infer, _build_crop_pad, const_inputs=(1,)))


def _bitcast_infer(node, ins):
    x = ins[0]
    to = node.attrs.get("to")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    except (KeyError, TypeError, ValueError):
        dtype = None
    # Bytes other than 0 and 1 are no bool: only a bool may become one.
    if dtype not in DTYPES or dtype.itemsize != x.dtype.itemsize or (dtype == np.dtype(bool) and x.dtype != dtype):
        raise UnsupportedModel(f"node {node.name!r} (BitCast): {x.dtype} cannot be reinterpreted as type {to}: both "
                               "must be types memserve computes with, of one width, and only a bool becomes one")
    return [TensorInfo(dtype, x.shape)]


def _build_bitcast(node, ins, outs):
    def run(i, o):
        np.copyto(o[0].view(i[0].dtype), i[0])  # the same bytes, read as the new type

    return run


register(OpDef("BitCast", _bitcast_infer, _build_bitcast))
