"""Depthwise 2-D convolution: one compiled kernel for every shape (jit.py).

A depthwise Conv (group == input channels, each output channel reading one
input channel; `mult` output channels per input channel) does K multiply-adds
per output, too few for im2col + GEMM to pay for its copy: the column buffer
is K times the input and the GEMM is K deep. This kernel reads the input in
place and writes straight into the output, with no scratch.

Per (sample, output channel), in parallel over both, one of two loops:

- flat: a stride-1 convolution whose output is as wide as its input (the
  "same" convolutions of MobileNets) on a plane of at most FLAT_PIXELS. Tap
  (kh, kw) then reads the flattened input at one constant offset from each
  flattened output, so each tap is one long axpy over the plane, however
  narrow its rows (7 wide in MobileNetV3's last blocks); the columns that
  fall in the padding, which would read the neighbouring row, are masked out
  with a select (never multiplied by zero: an Inf or NaN stays put).
- by rows: each output row starts as the bias, then every kernel row whose
  input row is real adds its taps, three at a time, over the output columns
  where all three see the input (one contiguous range, computed at build
  time: no bounds checks and no division in the loop); each tap's remaining
  columns are added one by one, and padding costs nothing. Stride 1 loads
  contiguous slices (vectorised by LLVM), stride 2 with a constant stride.

Sizes, strides, dilations and pads are int64 arguments: one compile per dtype
(float32, float64) serves every shape. The input and weights are typed
read-only and possibly unaligned, as a request's tensors decoded from protobuf
bytes are.
"""
from __future__ import annotations

import numpy as np

from .jit import compiled, helper, prange

# Unsigned indices: numba drops its negative-index wraparound for them, which would keep LLVM from
# vectorising (the indices here are never negative).
_u = np.uint64


def _sig(t: str) -> str:
    return (f"void(ro({t}[:, :, :, ::1]), ro({t}[:, :, :, ::1]), ro({t}[::1]), Array({t}, 4, 'C', aligned=False), "
            "int64[::1], int64[::1], uint8[:, ::1], int64, int64, int64, int64, int64, int64, int64, boolean, boolean)")


@compiled(_sig("float32"), _sig("float64"), parallel=True, fastmath={"contract"})  # contract: FMAs, no NaN games
def depthwise2d(x, w, b, y, lo, hi, mask, sh, sw, dh, dw, ph, pw, mult, has_bias, flat):
    """y[n, m] = b[m] + sum over (kh, kw) of w[m, 0, kh, kw] * x[n, m // mult] at
    (oh * sh - ph + kh * dh, ow * sw - pw + kw * dw), zero outside the input.

    lo[kw], hi[kw]: the output columns [lo, hi) that tap kw sees inside the input
    (columns(), computed once per node: no division on the hot path)."""
    n_, _, h, wd = x.shape
    m_, oh_, ow_ = y.shape[1], y.shape[2], y.shape[3]
    kh_, kw_ = w.shape[2], w.shape[3]
    for task in prange(n_ * m_):
        n = task // m_
        m = task - n * m_
        c = m // mult
        bias = b[m] if has_bias else 0.0
        if flat:
            _flat(x[n, c], w[m, 0], y[n, m], lo, hi, mask, dh, dw, ph, pw, bias)
            continue
        for oh in range(oh_):
            yr = y[n, m, oh]
            for ow in range(ow_):
                yr[ow] = bias
            base = oh * sh - ph
            for kh in range(kh_):
                ih = base + kh * dh
                if ih < 0 or ih >= h:
                    continue
                xr = x[n, c, ih]
                # Taps in threes: one pass over the row adds three of them where all three see the input
                # (fewer loads and stores of y per multiply-add); each tap's remaining columns one by one.
                for k0 in range(0, kw_, 3):
                    t = min(3, kw_ - k0)
                    clo, chi = lo[k0], hi[k0 + t - 1]  # lo and hi fall as kw grows
                    if chi <= clo:
                        clo = chi = 0
                    for kw in range(k0, k0 + t):
                        off = kw * dw - pw  # output column ow reads input column ow * sw + off
                        wv = w[m, 0, kh, kw]
                        for ow in range(lo[kw], min(hi[kw], clo)):
                            yr[ow] += wv * xr[ow * sw + off]
                        for ow in range(max(lo[kw], chi), hi[kw]):
                            yr[ow] += wv * xr[ow * sw + off]
                    cnt = chi - clo
                    if cnt <= 0:
                        continue
                    # Slices, so that the loops index from 0 up: numba's wraparound check on a possibly
                    # negative index would keep LLVM from vectorising them.
                    ys = yr[clo:chi]
                    s0 = clo * sw + k0 * dw - pw
                    w0 = w[m, 0, kh, k0]
                    w1 = w[m, 0, kh, k0 + 1] if t > 1 else w0
                    w2 = w[m, 0, kh, k0 + 2] if t > 2 else w0
                    if sw == 1:  # unit stride: contiguous slices, vector loads
                        c0 = xr[s0:s0 + cnt]
                        c1 = xr[s0 + dw:s0 + dw + cnt] if t > 1 else c0
                        c2 = xr[s0 + 2 * dw:s0 + 2 * dw + cnt] if t > 2 else c0
                        if t == 3:
                            for j in range(cnt):
                                ys[j] += w0 * c0[j] + w1 * c1[j] + w2 * c2[j]
                        elif t == 2:
                            for j in range(cnt):
                                ys[j] += w0 * c0[j] + w1 * c1[j]
                        else:
                            for j in range(cnt):
                                ys[j] += w0 * c0[j]
                    elif sw == 2:  # a constant stride: LLVM vectorises the loads as interleaved pairs
                        s1, s2 = s0 + dw, s0 + 2 * dw
                        if t == 3:
                            for j in range(cnt):
                                ys[j] += (w0 * xr[_u(s0 + 2 * j)] + w1 * xr[_u(s1 + 2 * j)]
                                          + w2 * xr[_u(s2 + 2 * j)])
                        elif t == 2:
                            for j in range(cnt):
                                ys[j] += w0 * xr[_u(s0 + 2 * j)] + w1 * xr[_u(s1 + 2 * j)]
                        else:
                            for j in range(cnt):
                                ys[j] += w0 * xr[_u(s0 + 2 * j)]
                    else:
                        span = (cnt - 1) * sw + 1
                        g0 = xr[s0:s0 + span:sw]
                        g1 = xr[s0 + dw:s0 + dw + span:sw] if t > 1 else g0
                        g2 = xr[s0 + 2 * dw:s0 + 2 * dw + span:sw] if t > 2 else g0
                        if t == 3:
                            for j in range(cnt):
                                ys[j] += w0 * g0[j] + w1 * g1[j] + w2 * g2[j]
                        elif t == 2:
                            for j in range(cnt):
                                ys[j] += w0 * g0[j] + w1 * g1[j]
                        else:
                            for j in range(cnt):
                                ys[j] += w0 * g0[j]

@helper
def _flat(x, w, y, lo, hi, mask, dh, dw, ph, pw, bias):
    """One plane of a stride-1 convolution whose output is as wide as its input: tap (kh, kw) reads
    x at a constant offset from each output in the flattened plane, so each tap is one long axpy
    over the rows it sees, whatever the width; columns that fall in the padding (they would read
    the neighbouring row) are masked out by a select, never multiplied by zero (Inf, NaN stay)."""
    h, wd = x.shape
    oh_, ow_ = y.shape
    kh_, kw_ = w.shape
    xf = x.reshape(h * wd)
    yf = y.reshape(oh_ * ow_)
    for p in range(oh_ * ow_):
        yf[p] = bias
    for kh in range(kh_):
        r0 = max(0, ph - kh * dh)  # output rows whose input row is real
        r1 = min(oh_, h + ph - kh * dh)
        if r1 <= r0:
            continue
        for kw in range(kw_):
            shift = (kh * dh - ph) * wd + kw * dw - pw
            pa = max(r0 * ow_, -shift)  # and whose reads stay inside the plane (the rest are padding)
            pb = min(r1 * ow_, h * wd - shift)
            cnt = pb - pa
            if cnt <= 0 or hi[kw] <= lo[kw]:
                continue
            wv = w[kh, kw]
            ys = yf[pa:pb]
            xs = xf[pa + shift:pb + shift]
            if lo[kw] == 0 and hi[kw] == ow_:
                for j in range(cnt):
                    ys[j] += wv * xs[j]
            else:
                ms = mask[kw, pa:pb]
                for j in range(cnt):
                    v = ys[j]
                    ys[j] = v + wv * xs[j] if ms[j] else v


KERNELS = (depthwise2d,)
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Planes up to this many output pixels take the flat path when they can (its column masks are this size
# per kernel column); wider ones go row by row, whose per-row work is then small beside the row.
FLAT_PIXELS = 4096


def supported(x, w, b, groups: int, g) -> bool:
    """Whether this kernel runs a Conv (TensorInfos x, w, b or None; g its conv.Geometry): 2-D,
    float32/float64 throughout, every group one input channel, a bias (if any) of one value per
    output channel, and every size, stride, dilation and pad below 2^31, so that no index the kernel
    computes can wrap an int64. Anything else takes conv.py's im2col path, which refuses what it
    cannot run as it always has."""
    if not (len(x.shape) == 4 and groups > 1 and x.shape[1] == groups and w.shape[1] == 1
            and x.dtype in _DTYPES and w.dtype == x.dtype
            and (b is None or (b.dtype == x.dtype and tuple(b.shape) == (w.shape[0],)))):
        return False
    sizes = (*x.shape, *w.shape, *g.out, *g.strides, *g.dilations, *g.pads_begin, *g.pads_end)
    return max(sizes) < 2**31


def columns(width: int, kw: int, sw: int, dw: int, pw: int, out_width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per tap k, the output columns [lo[k], hi[k]) whose input column (ow * sw + k * dw - pw) is real;
    lo == hi where there are none. Both fall (weakly) as k grows."""
    off = np.arange(kw, dtype=np.int64) * dw - pw
    lo = np.clip(-(off // sw), 0, out_width)
    hi = np.clip((width - 1 - off) // sw + 1, 0, out_width)
    return lo, np.maximum(hi, lo)


def flat_mask(g, out_width: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray | None:
    """For the flat path (stride 1, output as wide as the input, a plane of at most FLAT_PIXELS):
    mask[kw, p] = 1 where output pixel p's column sees the input through tap kw; else None."""
    if g.strides != (1, 1) or g.out[1] != out_width or g.out[0] * g.out[1] > FLAT_PIXELS:
        return None
    col = np.arange(g.out[0] * g.out[1]) % g.out[1]
    return ((col >= lo[:, None]) & (col < hi[:, None])).astype(np.uint8)


def _c(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)  # only a caller's strided array copies


def build(x, w, b, g):
    """run(inputs, outputs) for one depthwise Conv (supported() said yes; g: conv.Geometry),
    writing outputs[0], bias included."""
    fn = depthwise2d.ensure()
    sh, sw = g.strides
    dh, dw = g.dilations
    ph, pw = g.pads_begin
    lo, hi = columns(x.shape[3], w.shape[3], sw, dw, pw, g.out[1])
    mult = w.shape[0] // x.shape[1]
    has_bias = b is not None
    zero = np.zeros(1, x.dtype)
    mask = flat_mask(g, x.shape[3], lo, hi)
    flat = mask is not None
    if mask is None:
        mask = np.zeros((1, 1), np.uint8)

    def run(i, o):
        fn(_c(i[0]), _c(i[1]), _c(i[2]) if has_bias else zero, o[0], lo, hi, mask, sh, sw, dh, dw, ph, pw, mult,
           has_bias, flat)

    return run
