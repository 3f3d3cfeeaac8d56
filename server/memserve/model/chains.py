"""Plan-time rewrite: runs of cheap elementwise nodes become one ElementwiseChain.

1. Walk the RUN nodes in graph order. A node can start a chain when it is one
   of CHAINABLE, computes float32 or float64, and each of its operands is a
   scalar constant or a tensor of its output's shape and dtype that is not a
   weight (weights keep their own shape at every batch size).
2. Extend the chain while the last result is read by exactly one node (and is
   not a graph output), and that node can join under the same rule.
3. A chain of two or more nodes with at most four distinct tensor operands
   becomes one node at the last node's position, computing the same values in
   one pass over memory (kernels/chain.py): each step's result goes to one of
   two registers that alternate, the last step writes the output.

The intermediate tensors disappear from the plan, so work memory can only
shrink. Fusions made earlier (model/fuse.py) run first and keep their nodes.
"""
from __future__ import annotations

import numpy as np

from ..kernels import INTERNAL_DOMAIN, Node, TensorInfo
from ..kernels import chain as K
from ..kernels.elementwise import _clip_bounds
from .fuse import Rewriter

BINARY = {"Add": K.ADD, "Sub": K.SUB, "Mul": K.MUL, "Div": K.DIV, "Max": K.MAX, "Min": K.MIN, "Pow": K.POW}
COMMUTES = {K.ADD, K.MUL, K.MAX, K.MIN}
SWAPPED = {K.SUB: K.RSUB, K.DIV: K.RDIV}
UNARY = {"Relu": K.RELU, "Neg": K.NEG, "Sqrt": K.SQRT, "Abs": K.ABS, "Reciprocal": K.RECIP,
         "HardSigmoid": K.HARDSIGMOID, "HardSwish": K.HARDSWISH, "LeakyRelu": K.LEAKYRELU, "Clip": K.CLIP}
FLOATS = (np.dtype("float32"), np.dtype("float64"))


class _Program:
    """The instructions, constants and tensor operands of one chain under construction."""

    def __init__(self) -> None:
        self.code: list[list[int]] = []
        self.consts: list[float] = [0.0, 1.0]
        self.tensors: list[str] = []

    def const(self, *values: float) -> int:
        self.consts.extend(values)
        return -(len(self.consts) - len(values)) - 1

    def tensor(self, name: str) -> int | None:
        if name not in self.tensors:
            if len(self.tensors) == K.MAX_INPUTS:
                return None
            self.tensors.append(name)
        return self.tensors.index(name)


class _Chainer(Rewriter):
    def run(self) -> None:
        for k, (node, _, phase) in enumerate(self.walk.nodes):
            if phase == "run" and k not in self.dropped and not node.guard:
                self._chain_from(k, node)
        self.walk.nodes = [n for k, n in enumerate(self.walk.nodes) if k not in self.dropped]

    def _chain_from(self, k: int, first: Node) -> None:
        out = self.walk.infos.get(first.outputs[0]) if first.outputs else None  # "" : an output left out
        if out is None or out.dtype not in FLOATS:
            return
        prog, members, value = _Program(), [], None
        node, at = first, k
        while True:
            saved = (len(prog.code), len(prog.consts), list(prog.tensors))
            if not self._emit(prog, node, value, out, len(members)):
                prog.code, prog.consts, prog.tensors = prog.code[:saved[0]], prog.consts[:saved[1]], saved[2]
                break
            members.append((at, node))
            value = node.outputs[0]
            nxt = self._next(value)
            if nxt is None:
                break
            at, node = nxt
        if len(members) < 2:
            return
        prog.code[-1][1] = -1  # the last step writes the output
        last_at, last = members[-1]
        fused = Node("ElementwiseChain", f"{first.name}..{last.name}", list(prog.tensors), [last.outputs[0]],
                     {"program": [v for ins in prog.code for v in ins], "registers": 2, "consts": prog.consts},
                     domain=INTERNAL_DOMAIN)
        self.replace([m for m, _ in members], last_at, fused)

    def _next(self, name: str) -> tuple[int, Node] | None:
        if not self.private(name):
            return None
        readers = self.reading(name)
        if len(readers) != 1 or self.walk.nodes[readers[0][0]][2] != "run":
            return None
        return readers[0]

    def _operand(self, prog: _Program, name: str, value: str | None, out: TensorInfo, step: int):
        """('reg', index) for the chain's value, ('const', v) for a scalar constant, ('array', index) for a
        tensor operand, None when the name cannot be an operand."""
        if name == value:
            return "array", K.REG0 + (step - 1) % 2
        c = self.const(name)
        if c is not None:
            return ("const", float(c.reshape(-1)[0])) if c.size == 1 else None
        info = self.walk.infos.get(name)
        if info is None or info.shape != out.shape or info.dtype != out.dtype or info.value is not None:
            return None
        idx = prog.tensor(name)
        return None if idx is None else ("array", idx)

    def _emit(self, prog: _Program, node: Node, value: str | None, out: TensorInfo, step: int) -> bool:
        """Append `node` as step `step` of the chain; False when it cannot join."""
        if len(node.outputs) != 1 or node.domain not in ("", "ai.onnx"):
            return False
        info = self.walk.infos.get(node.outputs[0])
        if info is None or info.shape != out.shape or info.dtype != out.dtype:
            return False
        dst = K.REG0 + step % 2
        if node.op_type in BINARY and len(node.inputs) == 2:
            return self._binary(prog, node, value, out, step, dst)
        if node.op_type in UNARY and node.inputs:
            return self._unary(prog, node, value, out, step, dst)
        return False

    def _binary(self, prog, node, value, out, step, dst) -> bool:
        op = BINARY[node.op_type]
        a = self._operand(prog, node.inputs[0], value, out, step)
        b = self._operand(prog, node.inputs[1], value, out, step)
        if a is None or b is None or (a[0] == "const" and b[0] == "const"):
            return False
        if op == K.POW:  # only squares: x ** 2 is x * x; other powers stay with numpy
            if a[0] != "array" or b != ("const", 2.0):
                return False
            prog.code.append([K.MUL, dst, a[1], a[1]])
            return True
        if a[0] == "const":
            a, b = b, a
            if op not in COMMUTES:
                op = SWAPPED.get(op)
                if op is None:
                    return False
        ib = prog.const(b[1]) if b[0] == "const" else b[1]
        prog.code.append([op, dst, a[1], ib])
        return True

    def _unary(self, prog, node, value, out, step, dst) -> bool:
        a = self._operand(prog, node.inputs[0], value, out, step)
        if a is None or a[0] != "array":
            return False
        op = UNARY[node.op_type]
        if op == K.CLIP:
            ins = [self.walk.infos.get(n) if n else None for n in node.inputs]
            if any(i is not None and i.value is None for i in ins[1:]):
                return False
            lo, hi = _clip_bounds(node, ins)
            params = (-np.inf if lo is None else float(lo), np.inf if hi is None else float(hi))
        elif op == K.HARDSIGMOID:
            params = (node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5))
        elif op == K.HARDSWISH:
            params = (1 / 6, 0.5)
        elif op == K.LEAKYRELU:
            params = (node.attrs.get("alpha", 0.01), 0.0)
        else:
            params = ()
        prog.code.append([op, dst, a[1], prog.const(*params) if params else 0])
        return True


def chain_elementwise(walk, outputs: list[str]) -> None:
    _Chainer(walk, outputs).run()
