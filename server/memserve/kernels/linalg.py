"""MatMul and Gemm through numpy's BLAS-backed matmul, written into `out`."""
from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from . import Node, OpDef, TensorInfo, register


def matmul_shape(node: Node, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """np.matmul's shape rule: 1-D operands are promoted, then dropped."""
    if not a or not b:
        raise InvalidArgument(f"node {node.name!r} (MatMul): scalar operands are not allowed")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise InvalidArgument(
            f"node {node.name!r} ({node.op_type}): inner dimensions differ, {a} x {b}"
        )
    try:
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    except ValueError:
        raise InvalidArgument(f"node {node.name!r}: batch dimensions of {a} and {b} do not broadcast") from None
    shape = tuple(batch) + (a2[-2], b2[-1])
    if len(a) == 1:
        shape = shape[:-2] + shape[-1:]
    if len(b) == 1:
        shape = shape[:-1]
    return shape


def _matmul_infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    a, b = ins
    return [TensorInfo(a.dtype, matmul_shape(node, a.shape, b.shape))]


def _build_matmul(node, ins, outs):
    def run(i, o):
        np.matmul(i[0], i[1], out=o[0])

    return run


def _gemm_infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    a, b = ins[0], ins[1]
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise InvalidArgument(f"node {node.name!r} (Gemm): A and B must be 2-D, got {a.shape} and {b.shape}")
    m, k = a.shape[::-1] if node.attrs.get("transA", 0) else a.shape
    k2, n = b.shape[::-1] if node.attrs.get("transB", 0) else b.shape
    if k != k2:
        raise InvalidArgument(f"node {node.name!r} (Gemm): inner dimensions differ, {a.shape} x {b.shape}")
    c = ins[2] if len(ins) > 2 else None
    if c is not None:
        try:
            np.broadcast_shapes(c.shape, (m, n))
        except ValueError:
            raise InvalidArgument(f"node {node.name!r} (Gemm): C {c.shape} does not broadcast to {(m, n)}") from None
    return [TensorInfo(a.dtype, (m, n))]


def _gemm_scratch(node, ins, outs):
    c = ins[2] if len(ins) > 2 else None
    if c is not None and node.attrs.get("beta", 1.0) != 1.0:
        return [TensorInfo(c.dtype, c.shape)]
    return []


def _build_gemm(node, ins, outs):
    alpha = node.attrs.get("alpha", 1.0)
    beta = node.attrs.get("beta", 1.0)
    ta, tb = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
    has_c = len(ins) > 2 and ins[2] is not None

    def run(i, o):
        a = i[0].T if ta else i[0]
        b = i[1].T if tb else i[1]
        y = o[0]
        np.matmul(a, b, out=y)
        if alpha != 1.0:
            y *= alpha
        if has_c:
            if beta == 1.0:
                y += i[2]
            else:
                np.multiply(i[2], beta, out=o[1])
                y += o[1]

    return run


register(OpDef("MatMul", _matmul_infer, _build_matmul))
register(OpDef("Gemm", _gemm_infer, _build_gemm, scratch=_gemm_scratch))


def _einsum_infer(node: Node, ins: list[TensorInfo | None]) -> list[TensorInfo]:
    eq = node.attrs["equation"].replace(" ", "")
    try:  # syntax and ranks, on size-1 operands: costs nothing whatever the real sizes
        np.einsum(eq, *(np.zeros((1,) * len(i.shape), i.dtype) for i in ins))
        shape = _einsum_shape(eq, [i.shape for i in ins])
    except ValueError as exc:
        raise InvalidArgument(f"node {node.name!r} (Einsum): {exc}") from None
    return [TensorInfo(ins[0].dtype, shape)]


def _einsum_shape(eq: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The output shape from the letters' sizes (running einsum to find it costs the product of them all)."""
    lhs, _, out = eq.partition("->")
    sizes: dict[str, int] = {}
    ellipsis: tuple[int, ...] = ()
    counts: dict[str, int] = {}
    for term, shape in zip(lhs.split(","), shapes):
        pre, dots, post = term.partition("...")
        n = len(shape) - len(pre) - len(post) if dots else 0
        if n < 0 or (not dots and len(term) != len(shape)):
            raise ValueError(f"term {term!r} does not match an operand of rank {len(shape)}")
        if dots:
            ellipsis = tuple(np.broadcast_shapes(ellipsis, tuple(shape[len(pre):len(pre) + n])))
        for letter, d in zip(pre + post, shape[:len(pre)] + shape[len(pre) + n:]):
            if sizes.get(letter, d) not in (d, 1) and d != 1:
                raise ValueError(f"letter {letter!r} has sizes {sizes[letter]} and {d}")
            sizes[letter] = max(sizes.get(letter, d), d)
            counts[letter] = counts.get(letter, 0) + 1
    if not _:  # implicit output: the ellipsis, then the letters used once, in order
        return ellipsis + tuple(sizes[c] for c in sorted(c for c, k in counts.items() if k == 1))
    pre, dots, post = out.partition("...")
    return tuple(sizes[c] for c in pre) + (ellipsis if dots else ()) + tuple(sizes[c] for c in post)


def _build_einsum(node, ins, outs):
    eq = node.attrs["equation"].replace(" ", "")
    many = len(ins) >= 2

    def run(i, o):
        if many:  # optimize=True contracts pairwise (BLAS for two operands; "i,j,k->" is not L^3 work)
            np.copyto(o[0], np.einsum(eq, *i, optimize=True))
        else:
            np.einsum(eq, *i, out=o[0])

    return run


register(OpDef("Einsum", _einsum_infer, _build_einsum))
