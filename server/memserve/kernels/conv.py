"""Convolution and transposed convolution over 1-D, 2-D and 3-D inputs.

Conv is im2col + GEMM: for each kernel position, the input pixels it sees
are copied into a column buffer (planned scratch in the workspace), then one
matmul per group multiplies the weights, which are already in the (groups,
out/groups, in/groups * kernel) layout the GEMM wants, with it, writing
straight into the output. The column buffer covers one tile of at most
TILE_BYTES (whole samples, or output rows of one sample), so a convolution's
work memory stays small whatever the image size. A 1x1 convolution with
stride 1 and no padding skips the copy. A 2-D float32/float64 input packs
its tiles with one compiled pass (_im2col2d: padding written as it goes, no
fill first); other ranks and dtypes, or a strided input, copy one strided
slice per kernel position with numpy. A depthwise Conv takes depthwise.py's
kernel instead.

After each tile's GEMM, while that part of the output is still in cache, one
compiled pass (_epilogue) adds the bias and, when the fuser folded them into
the node (model/fuse.py), a residual (4th input) and an activation
(`activation`: Relu, Clip, HardSwish or SiLU, with `activation_params`).
The Conv declares no in-place input, so its output never shares the
residual's bytes: the GEMM writes the output before the residual is read.

Threads: BLAS runs single-threaded and a convolution with enough work splits
itself over the kernel threads (parallel.py): each tile (im2col, GEMM,
epilogue) is one task, and the planned column buffer holds one tile per
thread (its scratch is (slots, tile...), with the tile budget divided among
the slots, so work memory does not grow with --threads); a 1x1 convolution
splits its output channels. The compiled kernels themselves are serial (an
OpenMP team inside each tile would fight the team for the cores).

Pooling (pool.py) shares this module's window geometry.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgument, UnsupportedModel
from . import Node, OpDef, TensorInfo, depthwise, jit, parallel, register
from .jit import prange


# The im2col buffers of the tiles that run at once: whole samples, or rows of one sample, up to this size.
TILE_BYTES = 1 << 20
# A convolution splits over the kernel threads only when each task (a tile, or a block of a 1x1's output
# channels) has at least this many multiply-adds (~40 us at one thread): smaller tasks spent more on
# hand-offs and the GIL between them than they gained (PP-OCR det's 96 -> 24 convolutions, one output
# row per tile, ran 1.5x slower on two threads).
TASK_MACS = 4 << 20


@dataclass(frozen=True)
class Geometry:
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    out: tuple[int, ...]


def _ints(node: Node, name: str, default: list[int], lo: int) -> tuple[int, ...]:
    """An INTS attribute of the length the input's rank needs, every entry at least `lo`."""
    value = node.attrs.get(name)
    value = list(default) if value is None else [int(v) for v in value]
    if len(value) != len(default) or any(v < lo for v in value):
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): {name} {value} must have {len(default)} "
                              f"entries of at least {lo}")
    return tuple(value)


def geometry(node: Node, spatial: tuple[int, ...], kernel: tuple[int, ...], ceil_mode: bool = False) -> Geometry:
    nd = len(spatial)
    if nd == 0 or len(kernel) != nd or any(k < 1 for k in kernel):
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): kernel {list(kernel)} does not fit an input "
                              f"with {nd} spatial dimensions {list(spatial)}")
    strides = _ints(node, "strides", [1] * nd, 1)
    dilations = _ints(node, "dilations", [1] * nd, 1)
    pads = list(_ints(node, "pads", [0] * 2 * nd, 0))
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [math.ceil(i / s) for i, s in zip(spatial, strides)]
        total = [max((o - 1) * s + e - i, 0) for o, s, e, i in zip(out, strides, extent, spatial)]
        small = [t // 2 for t in total]
        begin = small if auto_pad == "SAME_UPPER" else [t - h for t, h in zip(total, small)]
        pads = begin + [t - b for t, b in zip(total, begin)]
    elif auto_pad == "VALID":
        pads = [0] * 2 * nd
    elif auto_pad != "NOTSET":
        raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): auto_pad {auto_pad!r}")
    begin, end = pads[:nd], pads[nd:]
    out = []
    for i, s, e, b, a in zip(spatial, strides, extent, begin, end):
        span = i + b + a - e
        if span < 0:
            raise InvalidArgument(f"node {node.name!r} ({node.op_type}): kernel {kernel} larger than input {spatial}")
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= i + b:  # the last window would start in the end padding
            o -= 1
        out.append(o)
    return Geometry(tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(out))


def _window(g: Geometry, axis: int, pos: int, size: int) -> tuple[slice, slice]:
    """For kernel position `pos` on `axis`: the outputs that see a real input, and those inputs."""
    s, d, b, o = g.strides[axis], g.dilations[axis], g.pads_begin[axis], g.out[axis]
    off = pos * d - b  # output j reads input j * s + off
    lo = max(0, -(off // s))
    hi = min(o, (size - 1 - off) // s + 1)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo, hi), slice(lo * s + off, (hi - 1) * s + off + 1, s)


def _positions(kernel):
    return itertools.product(*(range(k) for k in kernel))


# -- Conv -------------------------------------------------------------------------

def _conv_parts(node, ins):
    x, w = ins[0], ins[1]
    if len(x.shape) < 3 or len(w.shape) != len(x.shape):
        raise InvalidArgument(f"node {node.name!r} (Conv): input must be N x C x spatial and weights M x C/group x "
                              f"kernel, got {x.shape} and {w.shape}")
    groups = node.attrs.get("group", 1)
    kernel = tuple(node.attrs.get("kernel_shape", w.shape[2:]))
    if kernel != tuple(w.shape[2:]):  # the kernel loops run over these positions: the weights must hold them
        raise InvalidArgument(f"node {node.name!r} (Conv): kernel_shape {list(kernel)} is not the weights' "
                              f"{list(w.shape[2:])}")
    if groups < 1 or x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise InvalidArgument(f"node {node.name!r} (Conv): input {x.shape}, weights {w.shape} and group {groups} disagree")
    return x, w, groups, geometry(node, x.shape[2:], kernel)


def _pointwise(g: Geometry) -> bool:
    return all(k == 1 for k in g.kernel) and all(s == 1 for s in g.strides) and not any(g.pads_begin + g.pads_end)


def _conv_infer(node, ins):
    x, w, _, g = _conv_parts(node, ins)
    return [TensorInfo(x.dtype, (x.shape[0], w.shape[0]) + g.out)]


def _parts(x: TensorInfo, w: TensorInfo, g: Geometry) -> int:
    """How many im2col tiles of one convolution may run at once: the kernel threads (parallel.py) when
    each tile then has enough multiply-adds to pay for its hand-off, else 1."""
    parts = parallel.threads()
    if parts < 2:
        return 1
    samples, rows = (x.shape[0], 1) if _pointwise(g) else _tile(x, g, parts)
    per_position = w.shape[0] * int(np.prod(w.shape[1:]))
    if _pointwise(g):  # tasks are blocks of output channels over every position
        return parts if per_position * x.shape[0] * int(np.prod(g.out)) // (2 * parts) >= TASK_MACS else 1
    return parts if samples * rows * int(np.prod(g.out[1:])) * per_position >= TASK_MACS else 1


def _tile(x: TensorInfo, g: Geometry, parts: int) -> tuple[int, int]:
    """(samples, output rows) per im2col tile: whole samples while they fit TILE_BYTES / parts, else rows
    of one; split further so that there are at least `parts` tiles when the output has the rows."""
    budget = TILE_BYTES // parts
    per_row = x.shape[1] * int(np.prod(g.kernel)) * int(np.prod(g.out[1:])) * x.dtype.itemsize
    per_sample = per_row * g.out[0]
    if per_sample <= budget:
        samples, rows = max(1, min(x.shape[0], budget // max(per_sample, 1))), g.out[0]
    else:
        samples, rows = 1, max(1, min(g.out[0], budget // max(per_row, 1)))
    if parts > 1 and samples == 1:  # tiles of rows: as many as a multiple of parts, of even height
        count = -(-g.out[0] // rows)
        rows = max(1, -(-g.out[0] // (-(-count // parts) * parts)))
    elif -(-x.shape[0] // samples) < parts:
        samples = -(-x.shape[0] // parts)
    return samples, rows


def _conv_scratch(node, ins, outs):
    x, w, groups, g = _conv_parts(node, ins)
    if depthwise.supported(x, w, ins[2] if len(ins) > 2 else None, groups, g):
        return []  # the depthwise kernel reads the input in place
    if _pointwise(g):
        return []
    parts = _parts(x, w, g)
    samples, rows = _tile(x, g, parts)
    # One tile's columns per slot: tiles that run at once never share a buffer.
    return [TensorInfo(x.dtype, (parts, samples, x.shape[1]) + g.kernel + (rows,) + g.out[1:])]


def _rows(g: Geometry, pos: int, size: int, r0: int, r1: int) -> tuple[slice, slice]:
    """Like _window on axis 0, for output rows [r0, r1): tile-relative destination, source rows."""
    dst, src = _window(g, 0, pos, size)
    lo, hi = max(dst.start, r0), min(dst.stop, r1)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    s, off = g.strides[0], pos * g.dilations[0] - g.pads_begin[0]
    return slice(lo - r0, hi - r0), slice(lo * s + off, (hi - 1) * s + off + 1, s)


# -- compiled im2col and epilogue (2-D, float32/float64) ------------------------------

# Fused epilogues (model/fuse.py folds them into the Conv node): attribute `activation` names one, with
# `activation_params`; an optional 4th input is a residual added before the activation.
ACTIVATIONS = {"": 0, "Relu": 1, "Clip": 2, "HardSwish": 3, "SiLU": 4}
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# Inner loops index with unsigned integers: numba then drops its negative-index wraparound, and LLVM
# vectorises the copies (3x faster than signed indices, measured). `prange` stays serial: the kernels
# are compiled without parallel=True (module docstring).
_u = np.uint64

# The input and residual may be a request's bytes: read-only, maybe unaligned (jit.ro).
_COL_SIG = "void(ro({t}[:, :, :, ::1]), {t}[:, :, ::1], " + ", ".join(["int64"] * 12) + ")"


@jit.compiled(_COL_SIG.format(t="float32"), _COL_SIG.format(t="float64"))
def _im2col2d(x, cols, n0, r0, r1, ow, kh, kw, sh, sw, dh, dw, ph, pw):
    """cols[s, (c, i, j), (r - r0) * ow + q] = x[n0 + s, c, r * sh + i * dh - ph, q * sw + j * dw - pw],
    zero where that falls in the padding; output rows r in [r0, r1). One pass, no prior fill."""
    samples, channels, height, width = cols.shape[0], x.shape[1], x.shape[2], x.shape[3]
    for task in prange(samples * channels * kh):
        s = task // (channels * kh)
        c = (task // kh) % channels
        i = task % kh
        for j in range(kw):
            dst = cols[s, (c * kh + i) * kw + j]
            off = j * dw - pw  # output column q reads input column q * sw + off
            lo = 0 if off >= 0 else min(ow, (sw - 1 - off) // sw)
            hi = max(lo, min(ow, (width - 1 - off) // sw + 1))
            for r in range(r0, r1):
                base = (r - r0) * ow
                h = r * sh + i * dh - ph
                if h < 0 or h >= height:
                    for q in range(ow):
                        dst[_u(base + q)] = 0
                    continue
                src = x[n0 + s, c, h]
                for q in range(lo):
                    dst[_u(base + q)] = 0
                if sw == 1:
                    for q in range(lo, hi):
                        dst[_u(base + q)] = src[_u(q + off)]
                else:
                    for q in range(lo, hi):
                        dst[_u(base + q)] = src[_u(q * sw + off)]
                for q in range(hi, ow):
                    dst[_u(base + q)] = 0


_EPI_SIG = ("void({t}[:, :, ::1], ro({t}[::1]), ro({t}[:, :, ::1]), int64, int64, int64, boolean, boolean, "
            "{t}, {t}, {t}, {t})")


@jit.compiled(_EPI_SIG.format(t="float32"), _EPI_SIG.format(t="float64"))
def _epilogue(y, bias, res, p0, p1, act, has_bias, has_res, a, b, zero, one):
    """y[n, m, p0:p1] = act(y + bias[m] + res[n, m]), in one pass over each (sample, channel) row.
    `zero` and `one` in y's dtype keep the arithmetic in it (a Python 0 would make it float64)."""
    channels = y.shape[1]
    for task in prange(y.shape[0] * channels):
        n = task // channels
        m = task % channels
        row = y[n, m]
        bv = bias[m] if has_bias else zero
        if has_res:
            rr = res[n, m]
            for q in range(p0, p1):
                row[_u(q)] = row[_u(q)] + bv + rr[_u(q)]
        elif has_bias:
            for q in range(p0, p1):
                row[_u(q)] += bv
        if act == 1:
            for q in range(p0, p1):
                row[_u(q)] = max(row[_u(q)], zero)
        elif act == 2:
            for q in range(p0, p1):
                row[_u(q)] = min(max(row[_u(q)], a), b)
        elif act == 3:
            for q in range(p0, p1):
                v = row[_u(q)]
                row[_u(q)] = v * min(max(v * a + b, zero), one)
        elif act == 4:
            for q in range(p0, p1):
                v = row[_u(q)]
                row[_u(q)] = v * (one / (one + np.exp(-v)))


CONV_KERNELS = (_im2col2d, _epilogue)


def _finisher(node, ins, outs, bias_done: bool):
    """finish(inputs, y, n0, n1, r0, r1): bias (unless the kernel added it), residual and activation
    over samples [n0, n1) and output rows [r0, r1) (first spatial axis). None when there is nothing to do."""
    act = ACTIVATIONS[node.attrs.get("activation", "")]
    params = [float(v) for v in node.attrs.get("activation_params", [])] + [0.0, 0.0]
    has_bias = not bias_done and len(ins) > 2 and ins[2] is not None
    has_res = len(ins) > 3 and ins[3] is not None
    y = outs[0]
    if not (act or has_bias or has_res):
        return None
    n, m = y.shape[:2]
    row = math.prod(y.shape[3:])
    p = y.shape[2] * row
    bshape = (m,) + (1,) * (len(y.shape) - 2)
    if y.dtype not in _KERNEL_DTYPES:  # the fuser fuses only into float32/float64 Convs: here just a bias
        def finish_numpy(i, out, n0, n1, r0, r1):
            out[n0:n1, :, r0:r1] += i[2].reshape(bshape)

        return finish_numpy
    fn = _epilogue.ensure()
    a, b, z, one = (y.dtype.type(v) for v in (params[0], params[1], 0, 1))
    zero = np.zeros(1, y.dtype)
    zero3 = np.zeros((1, 1, 1), y.dtype)

    def finish(i, out, n0, n1, r0, r1):
        y3 = out.reshape(n, m, p)[n0:n1]
        bias, res, add_res = i[2] if has_bias else zero, zero3, has_res
        if has_res:
            if i[3].flags.c_contiguous:
                res = i[3].reshape(n, m, p)[n0:n1]
            else:  # a strided view (reshaping it would copy): bias and residual in place with numpy
                view = out[n0:n1, :, r0:r1]
                if has_bias:
                    view += i[2].reshape(bshape)
                view += i[3][n0:n1, :, r0:r1]
                bias, add_res = zero, False
        fn(y3, bias, res, r0 * row, r1 * row, act, has_bias and bias is not zero, add_res, a, b, z, one)

    return finish


def _build_conv(node, ins, outs):
    x, w, groups, g = _conv_parts(node, ins)
    if depthwise.supported(x, w, ins[2] if len(ins) > 2 else None, groups, g):  # adds the bias itself
        return depthwise.build(x, w, ins[2] if len(ins) > 2 else None, g)
    n, c = x.shape[:2]
    m = w.shape[0]
    k = int(np.prod(g.kernel))
    p = int(np.prod(g.out))
    row = int(np.prod(g.out[1:]))
    finish = _finisher(node, ins, outs, bias_done=False)
    if _pointwise(g):
        parts = _parts(x, w, g)
        mg = m // groups
        # Split over output channels: each task one block of the weights' rows, one contiguous output block.
        step = -(-mg // (2 * parts))
        blocks = [(b0, min(b0 + step, mg)) for b0 in range(0, mg, step)] if parts > 1 and mg >= 32 * parts \
            else [(0, mg)]

        def run(i, o):
            y = o[0]
            wv = i[1].reshape(groups, mg, -1)
            xv = i[0].reshape(n, groups, c // groups, p)
            yv = y.reshape(n, groups, mg, p)

            def block(t: int, slot: int) -> None:
                m0, m1 = blocks[t]
                np.matmul(wv[:, m0:m1], xv, out=yv[:, :, m0:m1])

            parallel.run(len(blocks), block, parts)
            if finish:
                finish(i, y, 0, n, 0, g.out[0])

        run.fused = True
        return run

    wg = (groups, m // groups, (c // groups) * k)
    # 2-D float32/float64: the compiled im2col packs a tile in one pass, padding included.
    im2col = _im2col2d.ensure() if len(g.out) == 2 and x.dtype in _KERNEL_DTYPES else None
    geo = (g.out[1],) + g.kernel + g.strides + g.dilations + g.pads_begin if im2col else ()
    layouts: dict[tuple, list] = {}  # scratch shape -> its tiles (one entry unless --threads changed)

    def run(i, o):
        xv, y, scratch = i[0], o[0], o[1]
        tiles = layouts.get(scratch.shape)
        if tiles is None:  # the scratch is (slots, samples, c, kernel..., rows, ...), as _conv_scratch planned
            tiles = layouts[scratch.shape] = _conv_tiles(g, x.shape, scratch.shape[1], scratch.shape[3 + len(g.kernel)])
        buf, slot_size = scratch.reshape(-1), scratch[0].size
        wv = i[1].reshape(wg)
        yv = y.reshape(n, groups, m // groups, p)
        packed = im2col is not None and xv.flags.c_contiguous

        def tile(t: int, slot: int) -> None:
            n0, n1, r0, r1, copies, pad = tiles[t]
            positions = (r1 - r0) * row
            shape = (n1 - n0, c) + g.kernel + (r1 - r0,) + g.out[1:]
            # The slot's columns, contiguous even for a last short tile.
            cols = buf[slot * slot_size: slot * slot_size + int(np.prod(shape))].reshape(shape)
            if packed:
                im2col(xv, cols.reshape(n1 - n0, c * k, positions), n0, r0, r1, *geo)
            else:
                if pad:
                    cols.fill(0)
                for dst, src in copies:
                    cols[(slice(None), slice(None)) + dst] = xv[(slice(n0, n1), slice(None)) + src]
            np.matmul(wv, cols.reshape(n1 - n0, groups, wg[2], positions),
                      out=yv[n0:n1, :, :, r0 * row: r0 * row + positions])
            if finish:  # bias, residual, activation while the tile's output is in cache
                finish(i, y, n0, n1, r0, r1)

        parallel.run(len(tiles), tile, scratch.shape[0])

    run.fused = True
    return run


def _conv_tiles(g: Geometry, x_shape: tuple[int, ...], samples: int, rows: int) -> list[tuple]:
    """Per tile: (first sample, end sample, first row, end row, [(kernel pos, dst, src)], whether it has
    padding), for the numpy copy path; the compiled im2col needs only the bounds."""
    n, size0 = x_shape[0], x_shape[2]
    inner = [tuple(_window(g, a, q, x_shape[2 + a]) for a, q in enumerate(pos[1:], start=1))
             for pos in _positions(g.kernel)]
    tiles = []
    for n0 in range(0, n, samples):
        for r0 in range(0, g.out[0], rows):
            r1 = min(r0 + rows, g.out[0])
            copies, full = [], True
            for pos, win in zip(_positions(g.kernel), inner):
                d0, s0 = _rows(g, pos[0], size0, r0, r1)
                dst = pos + (d0,) + tuple(wd[0] for wd in win)
                src = (s0,) + tuple(wd[1] for wd in win)
                full &= d0 == slice(0, r1 - r0) and all(wd[0] == slice(0, o) for wd, o in zip(win, g.out[1:]))
                copies.append((dst, src))
            tiles.append((n0, min(n0 + samples, n), r0, r1, copies, not full))
    return tiles


def _build_fused_conv(node, ins, outs):
    """_build_conv, plus the fused epilogue after any kernel that does not apply it itself."""
    run = _build_conv(node, ins, outs)
    finish = None if getattr(run, "fused", False) else _finisher(node, ins, outs, bias_done=True)
    if finish is None:
        return run
    n, rows = outs[0].shape[0], outs[0].shape[2]

    def run_fused(i, o):
        run(i, o)
        finish(i, o[0], 0, n, 0, rows)

    return run_fused


register(OpDef("Conv", _conv_infer, _build_fused_conv, scratch=_conv_scratch,
              compiled=CONV_KERNELS + depthwise.KERNELS))


# -- ConvTranspose ----------------------------------------------------------------

def _convt_parts(node, ins):
    x, w = ins[0], ins[1]
    groups = node.attrs.get("group", 1)
    nd = len(x.shape) - 2
    if nd < 1 or len(w.shape) != len(x.shape) or groups < 1 or x.shape[1] != w.shape[0] or x.shape[1] % groups:
        raise InvalidArgument(f"node {node.name!r} (ConvTranspose): input {x.shape}, weights {w.shape} and group "
                              f"{groups} disagree (input N x C x spatial, weights C x M/group x kernel)")
    kernel = tuple(node.attrs.get("kernel_shape", w.shape[2:]))
    if kernel != tuple(w.shape[2:]):
        raise InvalidArgument(f"node {node.name!r} (ConvTranspose): kernel_shape {list(kernel)} is not the "
                              f"weights' {list(w.shape[2:])}")
    strides = _ints(node, "strides", [1] * nd, 1)
    dilations = _ints(node, "dilations", [1] * nd, 1)
    out_pad = _ints(node, "output_padding", [0] * nd, 0)
    _ints(node, "pads", [0] * 2 * nd, 0)
    if "output_shape" in node.attrs and (len(node.attrs["output_shape"]) < nd
                                         or any(int(v) < 1 for v in list(node.attrs["output_shape"])[-nd:])):
        raise InvalidArgument(f"node {node.name!r} (ConvTranspose): output_shape {node.attrs['output_shape']} "
                              f"does not give {nd} positive sizes")
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    full = [s * (i - 1) + op + e for s, i, op, e in zip(strides, x.shape[2:], out_pad, extent)]
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    given = list(node.attrs["output_shape"])[-nd:] if "output_shape" in node.attrs else None
    if "pads" in node.attrs or auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        pads = list(node.attrs.get("pads", [0] * 2 * nd))
        out = given or [f - b - a for f, b, a in zip(full, pads[:nd], pads[nd:])]
    else:  # as the ONNX reference: SAME_UPPER puts the smaller half of the padding first
        out = given or [i * s for i, s in zip(x.shape[2:], strides)]
        total = [f - o for f, o in zip(full, out)]
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        pads = begin + [t - b for t, b in zip(total, begin)]
    if any(o < 1 for o in out) or any(b < 0 for b in pads):
        raise InvalidArgument(f"node {node.name!r} (ConvTranspose): output size {list(out)} (pads {pads}) is not "
                              "positive")
    # The image is accumulated at full size (or larger, when output_shape asks for more) and cropped.
    canvas = tuple(max(f, b + o) for f, b, o in zip(full, pads[:nd], out))
    return x, w, groups, kernel, strides, dilations, tuple(pads[:nd]), canvas, tuple(out)


def _convt_infer(node, ins):
    x, w, groups, *_, out = _convt_parts(node, ins)
    return [TensorInfo(x.dtype, (x.shape[0], w.shape[1] * groups) + out)]


def _convt_scratch(node, ins, outs):
    x, w, groups, kernel, _, _, _, full, _ = _convt_parts(node, ins)
    m = w.shape[1] * groups
    return [TensorInfo(x.dtype, (x.shape[0], m) + tuple(kernel) + x.shape[2:]),
            TensorInfo(x.dtype, (x.shape[0], m) + full)]


def _build_convt(node, ins, outs):
    x, w, groups, kernel, strides, dilations, begin, full, out = _convt_parts(node, ins)
    n, c = x.shape[:2]
    mg = w.shape[1]
    k = int(np.prod(kernel))
    isz = x.shape[2:]
    has_bias = len(ins) > 2 and ins[2] is not None
    crop = (slice(None), slice(None)) + tuple(slice(b, b + o) for b, o in zip(begin, out))
    bshape = (-1,) + (1,) * len(out)

    def run(i, o):
        xv, wv, y, cols, acc = i[0], i[1], o[0], o[1], o[2]
        # cols[n, g, (mg, k), pixels] = W[g]^T @ x[n, g]
        wt = wv.reshape(groups, c // groups, mg * k).transpose(0, 2, 1)
        np.matmul(wt, xv.reshape(n, groups, c // groups, -1), out=cols.reshape(n, groups, mg * k, -1))
        acc.fill(0)
        for pos in _positions(kernel):
            dst = (slice(None), slice(None)) + tuple(
                slice(q * d, q * d + s * (sz - 1) + 1, s) for q, d, s, sz in zip(pos, dilations, strides, isz))
            acc[dst] += cols[(slice(None), slice(None)) + pos]
        np.copyto(y, acc[crop])
        if has_bias:
            y += i[2].reshape(bshape)

    return run


register(OpDef("ConvTranspose", _convt_infer, _build_convt, scratch=_convt_scratch))
