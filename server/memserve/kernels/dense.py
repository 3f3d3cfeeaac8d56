"""Dense: y = act(x @ W + b), the fused form of MatMul/Gemm -> Add(bias) -> Relu (model/fuse.py).

W is a constant (K, N) matrix, b a constant of N values (or none), x any
tensor whose last dimension is K, seen as M = x.size / K rows.

Small products run in one compiled pass (`dense`): four rows at a time, each
output row starts as the bias, gets x[i, p] * W[p, :] added for every p (the
inner loop runs along W's contiguous rows, in vector lanes), and is
activated while it is still in cache. A BLAS call costs ~1-2 us before it
computes anything, and at one to four rows it streams W as this loop does,
so up to SMALL_MACS multiply-adds (ROW_MACS at four rows or fewer) this is
faster; above, numpy's BLAS sgemm writes y and one compiled pass
(`bias_act`) adds the bias and activates (bench/dense_kernels.py measures
both). Either way nothing is allocated per request.

Which path a node takes depends on its rows, so the same row can round
differently at another batch size (as BLAS's own kernels do).
"""
from __future__ import annotations

import math

import numpy as np

from . import INTERNAL_DOMAIN, OpDef, TensorInfo, register
from .jit import compiled

# Crossovers measured against OpenBLAS sgemm + the compiled epilogue (bench/dense_kernels.py).
SMALL_MACS = 1 << 14  # compiled up to here at any row count
SMALL_ROWS, ROW_MACS = 4, 1 << 17  # and up to ROW_MACS at SMALL_ROWS rows or fewer
ACTIVATIONS = {"": 0, "Relu": 1}

_SIG = "void(ro({t}[:, ::1]), ro({t}[:, ::1]), ro({t}[::1]), int64, {t}[:, ::1])"
_EPI = "void({t}[:, ::1], ro({t}[::1]), int64)"


@compiled(_SIG.format(t="float32"), _SIG.format(t="float64"), fastmath={"contract"})
def dense(x, w, b, act, y):
    """y = act(x @ w + b); b may be empty (no bias)."""
    m, k = x.shape
    n = w.shape[1]
    i = 0
    while i < m:
        r = min(4, m - i)
        for q in range(r):
            row = y[i + q]
            if b.size:
                for j in range(n):
                    row[j] = b[j]
            else:
                for j in range(n):
                    row[j] = 0
        if r == 4:  # each row of W read once for four rows of y
            y0, y1, y2, y3 = y[i], y[i + 1], y[i + 2], y[i + 3]
            for p in range(k):
                a0, a1, a2, a3 = x[i, p], x[i + 1, p], x[i + 2, p], x[i + 3, p]
                wp = w[p]
                for j in range(n):
                    v = wp[j]
                    y0[j] += a0 * v
                    y1[j] += a1 * v
                    y2[j] += a2 * v
                    y3[j] += a3 * v
        else:
            for q in range(r):
                row = y[i + q]
                for p in range(k):
                    a = x[i + q, p]
                    wp = w[p]
                    for j in range(n):
                        row[j] += a * wp[j]
        if act == 1:
            for q in range(r):
                row = y[i + q]
                for j in range(n):
                    if row[j] < 0:  # NaN stays NaN, as np.maximum keeps it
                        row[j] = 0
        i += r


@compiled(_EPI.format(t="float32"), _EPI.format(t="float64"))
def bias_act(y, b, act):
    """y = act(y + b) in one pass; b may be empty."""
    m, n = y.shape
    for i in range(m):
        row = y[i]
        if b.size:
            for j in range(n):
                row[j] += b[j]
        if act == 1:
            for j in range(n):
                if row[j] < 0:
                    row[j] = 0


def compiled_path(m: int, k: int, n: int) -> bool:
    """Whether an (m x k) @ (k x n) product runs in `dense` rather than BLAS + `bias_act`."""
    macs = m * k * n
    return macs <= SMALL_MACS or (m <= SMALL_ROWS and macs <= ROW_MACS)


def _infer(node, ins):
    x, w = ins[0], ins[1]
    return [TensorInfo(x.dtype, x.shape[:-1] + (w.shape[1],))]


def _build(node, ins, outs):
    k, n = ins[1].shape
    m = math.prod(ins[0].shape[:-1])
    act = ACTIVATIONS[node.attrs.get("activation", "")]
    none = np.zeros(0, outs[0].dtype)
    has_bias = len(ins) > 2 and ins[2] is not None
    if compiled_path(m, k, n):
        fn = dense.ensure()

        def run(i, o):
            fn(i[0].reshape(m, k), i[1], i[2].reshape(-1) if has_bias else none, act, o[0].reshape(m, n))
    else:
        epilogue = bias_act.ensure()

        def run(i, o):
            y = o[0].reshape(m, n)
            np.matmul(i[0].reshape(m, k), i[1], out=y)
            epilogue(y, i[2].reshape(-1) if has_bias else none, act)

    return run


DENSE = register(OpDef("Dense", _infer, _build, compiled=(dense, bias_act)), domain=INTERNAL_DOMAIN)
