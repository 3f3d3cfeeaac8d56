"""Depthwise 2-D convolution: one compiled kernel for every shape (jit.py).

A depthwise Conv (group == input channels, each output channel reading one
input channel; `mult` output channels per input channel) does K multiply-adds
per output, too few for im2col + GEMM to pay for its copy: the column buffer
is K times the input and the GEMM is K deep. This kernel reads the input in
place and writes straight into the output, with no scratch.

Per (sample, output channel), in parallel over both, one of three loops
(path() picks; each was the fastest on the MobileNet and PP-OCR shapes it
takes). None has a bounds check in its inner loop or multiplies padding:

- flat: a stride-1 convolution whose output is as wide as its input (the
  "same" convolutions of MobileNets) on a plane of at most FLAT_PIXELS. Tap
  (kh, kw) then reads the flattened input at one constant offset from each
  flattened output, so each tap is one long contiguous axpy over the plane,
  however narrow its rows (7 wide in MobileNetV3's last blocks); the columns
  that fall in the padding, which would read the neighbouring row, are
  masked out with a select (never multiplied by zero: Inf and NaN stay put).
- taps: every other stride-1 convolution, and strided ones with narrow
  outputs. Each tap adds itself over exactly the outputs that see the input
  through it: its rows, and the columns [lo, hi) computed once per node.
- rows: strided 3 x 3 convolutions with outputs at least ROWS_WIDTH wide.
  Per output row, all nine taps in one pass over the columns where they all
  see the input (fewer loads and stores of the output per multiply-add),
  each tap's remaining columns one by one. (The loop takes any kernel, in
  blocks of up to 3 x 3, but smaller blocks ran slower than tap by tap.)

Indices are unsigned where they are never negative: numba then drops its
negative-index wraparound, which keeps LLVM from vectorising. A strided
input is read with scalar loads: LLVM's gathers ran slower on AMD Zen.

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
            "int64[::1], int64[::1], uint8[:, ::1], int64, int64, int64, int64, int64, int64, int64, boolean, int64)")


@compiled(_sig("float32"), _sig("float64"), parallel=True, fastmath={"contract"})  # contract: FMAs, no NaN games
def depthwise2d(x, w, b, y, lo, hi, mask, sh, sw, dh, dw, ph, pw, mult, has_bias, mode):
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
        if mode == 1:
            _flat(x[n, c], w[m, 0], y[n, m], lo, hi, mask, dh, dw, ph, pw, bias)
        elif mode == 2:
            _taps(x[n, c], w[m, 0], y[n, m], lo, hi, sh, sw, dh, dw, ph, pw, bias)
        else:
            _rows(x[n, c], w[m, 0], y[n, m], lo, hi, sh, sw, dh, dw, ph, pw, bias)


@helper
def _rows(x, w, y, lo, hi, sh, sw, dh, dw, ph, pw, bias):
    """One plane, row by row: the taps in blocks of up to 3 x 3, each block one pass over the
    output columns where all its taps see the input, every tap's remaining columns one by one.
    Flat indices into the plane, not row slices: slicing costs more than a short row's work."""
    h, wd = x.shape
    oh_, ow_ = y.shape
    kh_, kw_ = w.shape
    xf = x.reshape(h * wd)
    yf = y.reshape(oh_ * ow_)
    for oh in range(oh_):
        yo = oh * ow_
        for ow in range(ow_):
            yf[_u(yo + ow)] = bias
        base = oh * sh - ph
        k_lo = 0  # the kernel rows whose input row is real: [k_lo, k_hi)
        while k_lo < kh_ and base + k_lo * dh < 0:
            k_lo += 1
        k_hi = k_lo
        while k_hi < kh_ and base + k_hi * dh < h:
            k_hi += 1
        for kh0 in range(k_lo, k_hi, 3):
            th = min(3, k_hi - kh0)
            o0 = (base + kh0 * dh) * wd  # where the block's input rows start in the plane
            o1 = (base + (kh0 + 1) * dh) * wd if th > 1 else o0
            o2 = (base + (kh0 + 2) * dh) * wd if th > 2 else o0
            for k0 in range(0, kw_, 3):
                tw = min(3, kw_ - k0)
                clo, chi = lo[k0], hi[k0 + tw - 1]  # lo and hi fall as kw grows
                if chi <= clo:
                    clo = chi = 0
                for kh in range(kh0, kh0 + th):
                    xo = (base + kh * dh) * wd
                    for kw in range(k0, k0 + tw):
                        off = xo + kw * dw - pw  # output column ow reads xf[off + ow * sw]
                        wv = w[kh, kw]
                        for ow in range(lo[kw], min(hi[kw], clo)):
                            yf[_u(yo + ow)] += wv * xf[_u(off + ow * sw)]
                        for ow in range(max(lo[kw], chi), hi[kw]):
                            yf[_u(yo + ow)] += wv * xf[_u(off + ow * sw)]
                if chi > clo:  # a literal stride, once inlined: LLVM vectorises unit stride
                    if sw == 1:
                        _block(yf, yo, xf, o0, o1, o2, w, kh0, k0, th, tw, clo, chi - clo, 1, dw, pw)
                    else:  # scalar loads: LLVM's gathers for a constant stride of 2 ran slower on AMD Zen
                        _block(yf, yo, xf, o0, o1, o2, w, kh0, k0, th, tw, clo, chi - clo, sw, dw, pw)


@helper
def _block(yf, yo, xf, o0, o1, o2, w, kh0, k0, th, tw, clo, cnt, sw, dw, pw):
    """Output row yo's columns [clo, clo + cnt) += the taps of kernel rows kh0.. (th of them, input
    rows at o0, o1, o2) and columns k0.. (tw of them), every one of which sees the input over these
    columns. A block smaller than 3 x 3 still loads nine values, of real taps only (a missing row or
    column repeats the first), and drops the missing ones with a select: never a multiply by zero,
    which would turn Inf into NaN."""
    y0 = yo + clo
    s0 = clo * sw + k0 * dw - pw
    d1 = dw if tw > 1 else 0
    d2 = 2 * dw if tw > 2 else 0
    a0_, a1_, a2_ = o0 + s0, o1 + s0, o2 + s0
    w00, w01, w02 = w[kh0, k0], w[kh0, k0 + d1 // dw], w[kh0, k0 + d2 // dw]
    r1, r2 = kh0 + (1 if th > 1 else 0), kh0 + (2 if th > 2 else 0)
    w10, w11, w12 = w[r1, k0], w[r1, k0 + d1 // dw], w[r1, k0 + d2 // dw]
    w20, w21, w22 = w[r2, k0], w[r2, k0 + d1 // dw], w[r2, k0 + d2 // dw]
    if th == 3 and tw == 3:
        for j in range(cnt):
            q = sw * j
            yf[_u(y0 + j)] += (w00 * xf[_u(a0_ + q)] + w01 * xf[_u(a0_ + q + d1)] + w02 * xf[_u(a0_ + q + d2)]
                               + w10 * xf[_u(a1_ + q)] + w11 * xf[_u(a1_ + q + d1)] + w12 * xf[_u(a1_ + q + d2)]
                               + w20 * xf[_u(a2_ + q)] + w21 * xf[_u(a2_ + q + d1)] + w22 * xf[_u(a2_ + q + d2)])
    else:
        c1, c2, t1, t2 = tw > 1, tw > 2, th > 1, th > 2
        for j in range(cnt):
            q = sw * j
            r0v = w00 * xf[_u(a0_ + q)]
            r1v = w10 * xf[_u(a1_ + q)]
            r2v = w20 * xf[_u(a2_ + q)]
            v = w01 * xf[_u(a0_ + q + d1)]
            r0v = r0v + v if c1 else r0v
            v = w02 * xf[_u(a0_ + q + d2)]
            r0v = r0v + v if c2 else r0v
            v = w11 * xf[_u(a1_ + q + d1)]
            r1v = r1v + v if c1 else r1v
            v = w12 * xf[_u(a1_ + q + d2)]
            r1v = r1v + v if c2 else r1v
            v = w21 * xf[_u(a2_ + q + d1)]
            r2v = r2v + v if c1 else r2v
            v = w22 * xf[_u(a2_ + q + d2)]
            r2v = r2v + v if c2 else r2v
            r0v = r0v + r1v if t1 else r0v
            yf[_u(y0 + j)] += r0v + r2v if t2 else r0v


@helper
def _taps(x, w, y, lo, hi, sh, sw, dh, dw, ph, pw, bias):
    """One plane, tap by tap: each tap adds itself over exactly the outputs that see the input
    through it (rows from its kernel row, columns [lo, hi)), with no border work and a few cycles
    of setup per row. For strided convolutions with narrow outputs, whose rows are too short for
    _rows' blocks to pay for themselves."""
    h = x.shape[0]
    oh_, ow_ = y.shape
    kh_, kw_ = w.shape
    for oh in range(oh_):
        yr = y[oh]
        for ow in range(ow_):
            yr[ow] = bias
    wd = x.shape[1]
    xf = x.reshape(h * wd)
    yf = y.reshape(oh_ * ow_)
    for kh in range(kh_):
        off_h = kh * dh - ph  # output row oh reads input row oh * sh + off_h
        r0 = max(0, -(off_h // sh))
        r1 = max(r0, min(oh_, (h - 1 - off_h) // sh + 1))
        for kw in range(kw_):
            a, e = lo[kw], hi[kw]
            wv = w[kh, kw]
            for oh in range(r0, r1):
                yo = oh * ow_
                xo = (oh * sh + off_h) * wd + kw * dw - pw  # output column ow reads xo + ow * sw
                for ow in range(a, e):
                    yf[_u(yo + ow)] += wv * xf[_u(xo + ow * sw)]


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
            if lo[kw] == 0 and hi[kw] == ow_:
                for p in range(pa, pb):
                    yf[_u(p)] += wv * xf[_u(p + shift)]
            else:
                mk = mask[kw]
                for p in range(pa, pb):
                    v = yf[_u(p)]
                    yf[_u(p)] = v + wv * xf[_u(p + shift)] if mk[_u(p)] else v

KERNELS = (depthwise2d,)
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Planes up to this many output pixels take the flat path when they can (its column masks are this size
# per kernel column); wider ones go row by row, whose per-row work is then small beside the row.
FLAT_PIXELS = 1 << 14
# What the flat path cannot take goes tap by tap (_taps), but strided 3 x 3 convolutions with outputs at
# least this wide, which go row by row (_rows). Both measured on MobileNet and PP-OCR shapes.
ROWS_WIDTH = 32


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


PATHS = {"rows": 0, "flat": 1, "taps": 2}


def path(width: int, g) -> str:
    """Which loop runs a plane (the module's docstring): input width, conv.Geometry."""
    if g.strides == (1, 1) and g.out[1] == width and g.out[0] * g.out[1] <= FLAT_PIXELS:
        return "flat"
    return "rows" if g.kernel == (3, 3) and g.strides[1] > 1 and g.out[1] >= ROWS_WIDTH else "taps"


def flat_mask(g, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """For the flat path: mask[kw, p] = 1 where output pixel p's column sees the input through tap kw."""
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
    way = path(x.shape[3], g)
    mode = PATHS[way]
    mask = flat_mask(g, lo, hi) if way == "flat" else np.zeros((1, 1), np.uint8)

    def run(i, o):
        fn(_c(i[0]), _c(i[1]), _c(i[2]) if has_bias else zero, o[0], lo, hi, mask, sh, sw, dh, dw, ph, pw, mult,
           has_bias, mode)

    return run
