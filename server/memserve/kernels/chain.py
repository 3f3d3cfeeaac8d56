"""ElementwiseChain: a run of elementwise nodes computed in one pass over memory.

The compiler's chain pass (model/chains.py) replaces a linear run of
elementwise nodes (each result read only by the next; every operand either a
tensor of the output's shape and dtype or a scalar constant) by one node of
this op. Its `program` attribute lists instructions (op, dst, a, b):

- `a` is an array operand: 0-3 the node's inputs, 4+ a register;
- `b` is an array operand like `a`, or a constant when negative (-1 is
  consts[0]); unary ops with parameters read consts[-b-1] and the next one.
  consts[0] and consts[1] are always 0 and 1 (the kernel's zero and one in
  the tensor's dtype);
- `dst` is a register (4+), or -1 for the node's output (the last instruction).

The kernel walks the output in blocks of BLOCK elements; for each block it
runs the program over registers that hold one block each, so every
intermediate stays in the L1 cache and each input and the output cross memory
once. A constant operand is spread over the last register first, so that each
op has one loop. The registers are planned scratch (registers + 1 rows of
BLOCK), so nothing is allocated per request.

Only ops that compile to a few vector instructions are chained. Measured on
1M floats: Mul(0.5) -> Add -> Relu in one pass took 0.27 ms against numpy's
0.65 ms for the three calls; with Sigmoid in the chain, 3.7 ms against 1.1 ms,
since numba calls the C library's scalar expf where numpy has SIMD exp. The
kernel is serial: a parallel version took three times as long to compile
(10 s cold) and these passes are bound by memory, not by a core.

Arithmetic stays in the tensor's dtype, constants included, as numpy's does;
the formulas are elementwise.py's, so a chain's answer matches the unfused
nodes' to rounding.
"""
from __future__ import annotations

import numpy as np
from ..errors import InvalidArgument
from . import INTERNAL_DOMAIN, OpDef, TensorInfo, jit, register

BLOCK = 1024
MAX_INPUTS = 4
REG0 = MAX_INPUTS  # operands from here on are registers

ADD, SUB, RSUB, MUL, DIV, RDIV, MAX, MIN, POW = range(9)  # binary
RELU, NEG, SQRT, ABS, RECIP, HARDSIGMOID, HARDSWISH, LEAKYRELU, CLIP = range(16, 25)  # unary
UNARY_FROM = RELU


@jit.helper
def _operand(k, x0, x1, x2, x3, r, lo, m):
    if k == 0:
        return x0[lo:lo + m]
    if k == 1:
        return x1[lo:lo + m]
    if k == 2:
        return x2[lo:lo + m]
    if k == 3:
        return x3[lo:lo + m]
    return r[k - REG0, :m]


@jit.helper
def _binary(op, d, a, b, m):
    if op == ADD:
        for j in range(m):
            d[j] = a[j] + b[j]
    elif op == SUB:
        for j in range(m):
            d[j] = a[j] - b[j]
    elif op == RSUB:
        for j in range(m):
            d[j] = b[j] - a[j]
    elif op == MUL:
        for j in range(m):
            d[j] = a[j] * b[j]
    elif op == DIV:
        for j in range(m):
            d[j] = a[j] / b[j]
    elif op == RDIV:
        for j in range(m):
            d[j] = b[j] / a[j]
    elif op == MAX:
        for j in range(m):
            d[j] = max(a[j], b[j])
    elif op == MIN:
        for j in range(m):
            d[j] = min(a[j], b[j])
    elif op == POW:
        for j in range(m):
            d[j] = a[j] ** b[j]


@jit.helper
def _unary(op, d, a, p, q, zero, one, m):
    if op == RELU:
        for j in range(m):
            d[j] = max(a[j], zero)
    elif op == NEG:
        for j in range(m):
            d[j] = -a[j]
    elif op == SQRT:
        for j in range(m):
            d[j] = np.sqrt(a[j])
    elif op == ABS:
        for j in range(m):
            d[j] = abs(a[j])
    elif op == RECIP:
        for j in range(m):
            d[j] = one / a[j]
    elif op == HARDSIGMOID:
        for j in range(m):
            d[j] = min(max(a[j] * p + q, zero), one)
    elif op == HARDSWISH:
        for j in range(m):
            d[j] = a[j] * min(max(a[j] * p + q, zero), one)
    elif op == LEAKYRELU:
        for j in range(m):
            d[j] = a[j] if a[j] > zero else a[j] * p
    elif op == CLIP:
        for j in range(m):
            d[j] = min(max(a[j], p), q)


_SIG = "void(ro(int64[:, ::1]), ro({t}[::1]), ro({t}[::1]), ro({t}[::1]), ro({t}[::1]), ro({t}[::1]), {t}[::1], {t}[:, ::1])"


@jit.compiled(_SIG.format(t="float32"), _SIG.format(t="float64"))
def run_chain(code, consts, x0, x1, x2, x3, out, r):
    n = out.shape[0]
    spread = r.shape[0] - 1  # the register a constant operand is spread over
    for lo in range(0, n, BLOCK):
        m = min(BLOCK, n - lo)
        for i in range(code.shape[0]):
            op, dst, ia, ib = code[i, 0], code[i, 1], code[i, 2], code[i, 3]
            d = out[lo:lo + m] if dst < 0 else r[dst - REG0, :m]
            a = _operand(ia, x0, x1, x2, x3, r, lo, m)
            if op >= UNARY_FROM:
                c = -ib - 1 if ib < 0 else 0
                _unary(op, d, a, consts[c], consts[c + 1], consts[0], consts[1], m)
            else:
                if ib < 0:
                    r[spread, :m] = consts[-ib - 1]
                    b = r[spread, :m]
                else:
                    b = _operand(ib, x0, x1, x2, x3, r, lo, m)
                _binary(op, d, a, b, m)


def _parts(node, ins):
    program = np.asarray(node.attrs["program"], dtype=np.int64).reshape(-1, 4)
    registers = int(node.attrs["registers"])
    return program, registers


def _infer(node, ins):
    shapes = {(i.dtype, i.shape) for i in ins}
    if len(shapes) != 1:  # the chain pass saw one shape at the largest batch; another batch broke it
        raise InvalidArgument(f"node {node.name!r} (ElementwiseChain): operands {sorted(map(str, shapes))} "
                              "differ at this batch size")
    return [TensorInfo(ins[0].dtype, ins[0].shape)]


def _scratch(node, ins, outs):
    _, registers = _parts(node, ins)
    return [TensorInfo(outs[0].dtype, (registers + 1, BLOCK))]


def _build(node, ins, outs):
    program, _ = _parts(node, ins)
    dtype = outs[0].dtype
    consts = np.asarray(node.attrs["consts"], dtype=dtype)
    fn = run_chain.ensure()
    n_in = len(ins)

    def run(i, o):
        y = o[0].reshape(-1)
        xs = [x.reshape(-1) for x in i] + [y] * (MAX_INPUTS - n_in)
        fn(program, consts, xs[0], xs[1], xs[2], xs[3], y, o[1])

    return run


CHAIN = register(OpDef("ElementwiseChain", _infer, _build, scratch=_scratch, inplace=(0, 1, 2, 3),
                       compiled=(run_chain,)), domain=INTERNAL_DOMAIN)
