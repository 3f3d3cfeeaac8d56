"""Reductions over axes: ReduceX, ArgMax/ArgMin, Softmax/LogSoftmax, LayerNormalization."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from . import Node, OpDef, TensorInfo, jit, node_error, register
from .shape import norm_axis


def reduce_axes(node: Node, ins: list[TensorInfo | None]) -> tuple[int, ...] | None:
    """The axes to reduce; None means the reduction is the identity (noop_with_empty_axes)."""
    rank = len(ins[0].shape)
    moved = 13 if node.op_type == "ReduceSum" else 18
    if node.opset < moved:
        axes = node.attrs.get("axes")
    else:
        axes = [int(v) for v in np.asarray(ins[1].value).reshape(-1)] if len(ins) > 1 and ins[1] is not None else None
    if not axes:
        return None if node.attrs.get("noop_with_empty_axes", 0) and node.opset >= moved else tuple(range(rank))
    return tuple(sorted({norm_axis(node, a, rank) for a in axes}))


def _reduce_infer(node, ins):
    x = ins[0]
    axes = reduce_axes(node, ins)
    if axes is None:
        return [TensorInfo(x.dtype, x.shape)]
    keep = node.attrs.get("keepdims", 1)
    shape = tuple(1 if k in axes else d for k, d in enumerate(x.shape) if keep or k not in axes)
    return [TensorInfo(x.dtype, shape)]


# op -> (function over (x, axes, keepdims, out), value of an empty reduction)
REDUCERS = {
    # ufunc.reduce directly: np.sum and friends add a Python wrapper of several us per call.
    "ReduceSum": (lambda x, a, k, out: np.add.reduce(x, axis=a, keepdims=k, out=out), 0),
    "ReduceMean": (lambda x, a, k, out: np.mean(x, axis=a, keepdims=k, out=out), np.nan),
    "ReduceMax": (lambda x, a, k, out: np.maximum.reduce(x, axis=a, keepdims=k, out=out), -np.inf),
    "ReduceMin": (lambda x, a, k, out: np.min(x, axis=a, keepdims=k, out=out), np.inf),
    "ReduceProd": (lambda x, a, k, out: np.prod(x, axis=a, keepdims=k, out=out), 1),
    "ReduceL1": (lambda x, a, k, out: np.sum(np.abs(x), axis=a, keepdims=k, out=out), 0),
    "ReduceL2": (lambda x, a, k, out: np.sqrt(np.sum(np.square(x), axis=a, keepdims=k), out=out), 0),
    "ReduceSumSquare": (lambda x, a, k, out: np.sum(np.square(x), axis=a, keepdims=k, out=out), 0),
    "ReduceLogSum": (lambda x, a, k, out: np.log(np.sum(x, axis=a, keepdims=k), out=out), -np.inf),
    "ReduceLogSumExp": (lambda x, a, k, out: np.copyto(out, _logsumexp(x, a, k), casting="unsafe"), -np.inf),
}


def _logsumexp(x, axes, keep):
    m = np.max(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    r = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return r if keep else np.squeeze(r, axis=axes)


def _empty_value(empty: float, dtype: np.dtype):
    """The reduction of nothing, in the output's type (the -inf of an int is its minimum)."""
    if dtype == np.bool_:
        return empty > 0
    if np.issubdtype(dtype, np.integer) and not np.isfinite(empty):
        return np.iinfo(dtype).min if empty < 0 else np.iinfo(dtype).max
    return empty


def _build_reduce(node, ins, outs):
    axes = reduce_axes(node, ins)
    keep = bool(node.attrs.get("keepdims", 1))
    fn, empty = REDUCERS[node.op_type]
    is_int = np.issubdtype(outs[0].dtype, np.integer)
    empty = _empty_value(empty, outs[0].dtype)

    def run(i, o):
        x, y = i[0], o[0]
        if axes is None:
            np.copyto(y, x)
        elif x.size == 0 or any(x.shape[a] == 0 for a in axes):
            y.fill(empty)
        elif is_int and node.op_type == "ReduceMean":
            np.copyto(y, np.mean(x, axis=axes, keepdims=keep), casting="unsafe")
        else:
            fn(x, axes, keep, y)

    return run


for _name in REDUCERS:
    register(OpDef(_name, _reduce_infer, _build_reduce, const_inputs=(1,)))


def _arg_infer(node, ins):
    x = ins[0]
    if not x.shape:
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): input must have at least one dimension")
    axis = norm_axis(node, node.attrs.get("axis", 0), len(x.shape))
    keep = node.attrs.get("keepdims", 1)
    shape = tuple(1 if k == axis else d for k, d in enumerate(x.shape) if keep or k != axis)
    return [TensorInfo(np.dtype(np.int64), shape)]


def _build_arg(node, ins, outs):
    axis = norm_axis(node, node.attrs.get("axis", 0), len(ins[0].shape))
    last = node.attrs.get("select_last_index", 0)
    fn = np.argmax if node.op_type == "ArgMax" else np.argmin

    def run(i, o):
        x = i[0]
        out = o[0].reshape(tuple(d for k, d in enumerate(x.shape) if k != axis))
        if last:
            fn(np.flip(x, axis), axis=axis, out=out)
            np.subtract(x.shape[axis] - 1, out, out=out)
        else:
            fn(x, axis=axis, out=out)

    return run


register(OpDef("ArgMax", _arg_infer, _build_arg))
register(OpDef("ArgMin", _arg_infer, _build_arg))


_JIT_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))  # the compiled kernels' dtypes


# -- softmax ----------------------------------------------------------------------

def _softmax_axis(node: Node, rank: int) -> int:
    return norm_axis(node, node.attrs.get("axis", -1 if node.opset >= 13 else 1), rank)


def _rows_view(x: np.ndarray, node: Node, axis: int) -> tuple[np.ndarray, int]:
    """Opsets before 13 flatten to 2-D at `axis` and normalise each row."""
    if node.opset >= 13:
        return x, axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1), 1


def _softmax_infer(node, ins):
    x = ins[0]
    if not np.issubdtype(x.dtype, np.floating):
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): needs a float input, got {x.dtype}")
    _softmax_axis(node, len(x.shape))
    return [TensorInfo(x.dtype, x.shape)]


def _softmax_scratch(node, ins, outs):
    x = ins[0]
    axis = _softmax_axis(node, len(x.shape))
    if node.opset >= 13:
        shape = tuple(1 if d == axis else s for d, s in enumerate(x.shape))
    else:
        shape = (int(np.prod(x.shape[:axis], dtype=np.int64)), 1)
    return [TensorInfo(x.dtype, shape)]


# numba's exp is the C library's scalar one, numpy's is SIMD: the compiled softmax wins on small tensors
# (1x4x16x16: 4.6 us against 10.1) and loses from a few thousand elements on (1x8x40x40: 51 us against 40;
# 1x40x6625: 1.1 ms against 0.26).
SOFTMAX_COMPILED_MAX = 4096

_ROWS = "void(ro({t}[:, ::1]), {t}[:, ::1], boolean)"


@jit.compiled(_ROWS.format(t="float32"), _ROWS.format(t="float64"))
def softmax_rows(x, y, log):
    """Softmax (or LogSoftmax) of each row; y may be x. Sums in float64."""
    rows, cols = x.shape
    for r in range(rows):
        top = x[r, 0]
        for c in range(1, cols):
            top = max(top, x[r, c])
        total = 0.0
        if log:
            for c in range(cols):
                total += np.exp(x[r, c] - top)
            shift = top + np.log(total)
            for c in range(cols):
                y[r, c] = x[r, c] - shift
        else:
            for c in range(cols):
                e = np.exp(x[r, c] - top)
                y[r, c] = e
                total += e
            for c in range(cols):
                y[r, c] = y[r, c] / total


def _build_softmax(node, ins, outs):
    axis = _softmax_axis(node, len(ins[0].shape))
    log = node.op_type == "LogSoftmax"
    shape = ins[0].shape
    small = 0 < int(np.prod(shape, dtype=np.int64)) <= SOFTMAX_COMPILED_MAX
    if (node.opset < 13 or axis == len(shape) - 1) and ins[0].dtype in _JIT_FLOATS and small:
        # Rows are contiguous: one compiled call instead of numpy's five.
        cols = int(np.prod(shape[axis:] if node.opset < 13 else shape[-1:], dtype=np.int64))
        fn = softmax_rows.ensure()
        return lambda i, o: fn(i[0].reshape(-1, cols), o[0].reshape(-1, cols), log)

    def run(i, o):
        x, ax = _rows_view(i[0], node, axis)
        y, _ = _rows_view(o[0], node, axis)
        red = o[1]
        if x.size == 0:
            return
        np.maximum.reduce(x, axis=ax, keepdims=True, out=red)
        np.subtract(x, red, out=y)
        if log:  # y = (x - max) - log(sum(exp(x - max)))
            np.add.reduce(np.exp(y), axis=ax, keepdims=True, out=red)
            np.log(red, out=red)
            y -= red
            return
        np.exp(y, out=y)
        np.add.reduce(y, axis=ax, keepdims=True, out=red)
        y /= red

    return run


register(OpDef("Softmax", _softmax_infer, _build_softmax, scratch=_softmax_scratch, inplace=(0,),
               compiled=(softmax_rows,)))
register(OpDef("LogSoftmax", _softmax_infer, _build_softmax, scratch=_softmax_scratch, inplace=(0,),
               compiled=(softmax_rows,)))


# -- normalization ----------------------------------------------------------------

def _ln_split(node, shape) -> tuple[int, int]:
    axis = norm_axis(node, node.attrs.get("axis", -1), len(shape))
    return int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64))


def _ln_infer(node, ins):
    x = ins[0]
    axis = norm_axis(node, node.attrs.get("axis", -1), len(x.shape))
    stat = tuple(d if k < axis else 1 for k, d in enumerate(x.shape))
    outs = [TensorInfo(x.dtype, x.shape)]
    outs += [TensorInfo(np.dtype(np.float32), stat)] * (len(node.outputs) - 1)
    return outs


def _ln_scratch(node, ins, outs):
    rows, _ = _ln_split(node, ins[0].shape)
    return [TensorInfo(ins[0].dtype, (rows, 1)), TensorInfo(ins[0].dtype, (rows, 1))]


_LN = "void(ro({t}[:, ::1]), ro({t}[::1]), ro({t}[::1]), boolean, float64, {t}[:, ::1], {t}[::1], {t}[::1])"


@jit.compiled(_LN.format(t="float32"), _LN.format(t="float64"))
def layer_norm_rows(x, scale, bias, has_bias, eps, y, mean, inv):
    """y = (x - mean) / sqrt(var + eps) * scale [+ bias] per row; y may be x. Sums in float64."""
    rows, cols = x.shape
    for r in range(rows):
        total = 0.0
        for c in range(cols):
            total += x[r, c]
        m = total / cols
        var = 0.0
        for c in range(cols):
            d = x[r, c] - m
            var += d * d
        iv = 1.0 / np.sqrt(var / cols + eps)
        for c in range(cols):
            v = (x[r, c] - m) * iv * scale[c]
            y[r, c] = v + bias[c] if has_bias else v
        mean[r] = m
        inv[r] = iv


def _build_ln(node, ins, outs):
    rows, cols = _ln_split(node, ins[0].shape)
    eps = node.attrs.get("epsilon", 1e-5)
    n_out = len(outs)
    has_bias = len(ins) > 2 and ins[2] is not None
    params = [p.shape for p in ins[1:3] if p is not None]
    if ins[0].dtype in _JIT_FLOATS and all(int(np.prod(p, dtype=np.int64)) == cols for p in params) and cols:
        fn = layer_norm_rows.ensure()

        def compiled(i, o):
            x, scale = i[0].reshape(-1, cols), i[1].reshape(-1)
            n = x.shape[0]
            mean, inv = o[-2].reshape(-1)[:n], o[-1].reshape(-1)[:n]
            fn(x, scale, i[2].reshape(-1) if has_bias else scale, has_bias, eps, o[0].reshape(-1, cols), mean, inv)
            if n_out > 1:
                np.copyto(o[1].reshape(-1), mean, casting="unsafe")
            if n_out > 2:
                np.copyto(o[2].reshape(-1), inv, casting="unsafe")

        return compiled

    def run(i, o):
        x, scale, bias = i[0], i[1], i[2] if len(i) > 2 else None
        y, mean, inv = o[0], o[-2], o[-1]
        x2, y2 = x.reshape(-1, cols), y.reshape(-1, cols)
        m = mean[: x2.shape[0]]
        np.add.reduce(x2, axis=1, keepdims=True, out=m)
        m /= cols
        np.subtract(x2, m, out=y2)
        v = inv[: x2.shape[0]]
        np.einsum("ij,ij->i", y2, y2, out=v[:, 0])
        v /= cols
        v += eps
        np.sqrt(v, out=v)
        np.reciprocal(v, out=v)
        y2 *= v
        y *= scale
        if bias is not None:
            y += bias
        if n_out > 1:
            np.copyto(o[1].reshape(-1), m.reshape(-1), casting="unsafe")
        if n_out > 2:
            np.copyto(o[2].reshape(-1), v.reshape(-1), casting="unsafe")

    return run


register(OpDef("LayerNormalization", _ln_infer, _build_ln, scratch=_ln_scratch, inplace=(0,),
               compiled=(layer_norm_rows,)))


def _bn_infer(node, ins):
    x = ins[0]
    if len(x.shape) < 2:
        raise node_error(node, f"input must have a channel axis, got shape {x.shape}")
    stats = TensorInfo(x.dtype, (x.shape[1],))
    return [TensorInfo(x.dtype, x.shape)] + [stats] * min(len(node.outputs) - 1, 2)


def bn_affine(node: Node, scale, bias, mean, var) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization as y = a * x + b per channel."""
    a = scale / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
    return a, bias - mean * a


def _build_bn(node, ins, outs):
    rank = len(ins[0].shape)
    bshape = (-1,) + (1,) * (rank - 2)
    if node.attrs.get("training_mode", 0):
        return _bn_training(node, rank, bshape, len(outs))

    def run(i, o):
        a, b = bn_affine(node, *i[1:5])
        np.multiply(i[0], a.reshape(bshape).astype(o[0].dtype, copy=False), out=o[0])
        o[0] += b.reshape(bshape).astype(o[0].dtype, copy=False)

    return run


def _bn_training(node: Node, rank: int, bshape: tuple, n_out: int):
    """Normalized by the batch's own statistics; the running ones move towards them by 1 - momentum."""
    axes = (0,) + tuple(range(2, rank))
    momentum = node.attrs.get("momentum", 0.9)

    def run(i, o):
        x = i[0]
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        a, b = bn_affine(node, i[1], i[2], mean, var)
        if n_out > 1:
            np.copyto(o[1], i[3] * momentum + mean * (1 - momentum), casting="unsafe")
        if n_out > 2:
            np.copyto(o[2], i[4] * momentum + var * (1 - momentum), casting="unsafe")
        np.multiply(x, a.reshape(bshape).astype(o[0].dtype, copy=False), out=o[0])
        o[0] += b.reshape(bshape).astype(o[0].dtype, copy=False)

    return run


# In place in training mode too: the batch's statistics are read before the output is written.
register(OpDef("BatchNormalization", _bn_infer, _build_bn, inplace=(0,)))


def _build_instance_norm(node, ins, outs):
    eps = node.attrs.get("epsilon", 1e-5)
    rank = len(ins[0].shape)
    spatial = tuple(range(2, rank))
    bshape = (-1,) + (1,) * (rank - 2)

    def run(i, o):
        x, scale, bias = i
        mean = x.mean(axis=spatial, keepdims=True)
        var = x.var(axis=spatial, keepdims=True)
        np.subtract(x, mean, out=o[0])
        o[0] /= np.sqrt(var + eps)
        o[0] *= scale.reshape(bshape)
        o[0] += bias.reshape(bshape)

    return run


register(OpDef("InstanceNormalization", lambda n, i: [TensorInfo(i[0].dtype, i[0].shape)], _build_instance_norm))


def _hardmax_infer(node, ins):
    x = ins[0]
    if not x.shape:
        raise InvalidArgument(f"node {node.name!r} (Hardmax): input must have at least one dimension")
    norm_axis(node, node.attrs.get("axis", -1 if node.opset >= 13 else 1), len(x.shape))
    return [TensorInfo(x.dtype, x.shape)]


def _build_hardmax(node, ins, outs):
    shape = ins[0].shape
    axis = norm_axis(node, node.attrs.get("axis", -1 if node.opset >= 13 else 1), len(shape))
    # Below opset 13 the input is seen as 2-D, (dimensions before axis) x (axis and after).
    view = shape if node.opset >= 13 else (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))
    along = axis if node.opset >= 13 else 1

    def run(i, o):
        x, y = i[0].reshape(view), o[0].reshape(view)
        y.fill(0)
        first = np.expand_dims(np.argmax(x, axis=along), along)  # the first of equal maxima
        np.put_along_axis(y, first, 1, axis=along)

    return run


def _lp_infer(node, ins):
    if node.attrs.get("p", 2) not in (1, 2):
        raise InvalidArgument(f"node {node.name!r} (LpNormalization): p must be 1 or 2, got {node.attrs['p']}")
    norm_axis(node, node.attrs.get("axis", -1), len(ins[0].shape))
    return [TensorInfo(ins[0].dtype, ins[0].shape)]


def _build_lp(node, ins, outs):
    axis = norm_axis(node, node.attrs.get("axis", -1), len(ins[0].shape))
    p = node.attrs.get("p", 2)

    def run(i, o):
        x = i[0]
        norm = np.sum(np.abs(x), axis=axis, keepdims=True) if p == 1 else \
            np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True))
        np.divide(x, np.where(norm == 0, 1, norm), out=o[0], casting="unsafe")  # a zero vector stays zero

    return run


register(OpDef("Hardmax", _hardmax_infer, _build_hardmax))
register(OpDef("LpNormalization", _lp_infer, _build_lp))


# -- NegativeLogLikelihoodLoss / SoftmaxCrossEntropyLoss ------------------------------------------------

def _loss_infer(node, ins):
    x, target = ins[0], ins[1]
    weight = ins[2] if len(ins) > 2 else None
    if x.dtype.kind != "f" or len(x.shape) < 2 or target.dtype.kind not in "iu" \
            or target.shape != x.shape[:1] + x.shape[2:]:
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): input {x.shape} must be float (N, C, ...) and "
                              f"target {target.shape} integers of shape (N, ...)")
    if weight is not None and weight.shape != (x.shape[1],):
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): weight {weight.shape} must hold C = "
                              f"{x.shape[1]} values")
    reduction = node.attrs.get("reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): reduction {reduction!r} is not none/sum/mean")
    loss = TensorInfo(x.dtype, target.shape if reduction == "none" else ())
    return [loss, TensorInfo(x.dtype, x.shape)][:max(len(node.outputs), 1)]


def _nll(node: Node, logp: np.ndarray, target: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
    """-logp[n, target, ...] times the target's weight; ignore_index contributes nothing."""
    c = logp.shape[1]
    ignore = node.attrs.get("ignore_index")
    kept = np.ones(target.shape, bool) if ignore is None else target != ignore
    t = np.where(kept, target, 0).astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= c):
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): a target is outside [0, {c}) on this request")
    picked = -np.take_along_axis(logp, t[:, None], axis=1)[:, 0]
    w = (weight[t] if weight is not None else np.ones(t.shape, logp.dtype)) * kept
    loss = picked * w
    reduction = node.attrs.get("reduction", "mean")
    if reduction == "sum":
        return np.asarray(loss.sum())
    if reduction == "mean":
        total = w.sum()
        return np.asarray(loss.sum() / total if total else 0.0)
    return loss


def _build_loss(node, ins, outs):
    softmax = node.op_type == "SoftmaxCrossEntropyLoss"

    def run(i, o):
        x = i[0].astype(np.float64)
        weight = i[2] if len(i) > 2 and i[2] is not None else None
        logp = x - x.max(axis=1, keepdims=True) if softmax else x
        if softmax:
            logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
        np.copyto(o[0], _nll(node, logp, i[1], weight), casting="unsafe")
        if softmax and len(node.outputs) > 1:
            np.copyto(o[1], logp, casting="unsafe")

    return run


register(OpDef("NegativeLogLikelihoodLoss", _loss_infer, _build_loss))
register(OpDef("SoftmaxCrossEntropyLoss", _loss_infer, _build_loss))
