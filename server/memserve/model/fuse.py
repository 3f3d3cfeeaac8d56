"""Plan-time rewrites of the node list, before storage is assigned.

Each pattern is matched on RUN nodes whose intermediate results have no other
reader, and replaced by one node computing the same thing:

- Conv -> BatchNormalization (constant parameters): the normalization is
  folded into the convolution's weights and bias, W' = W * a, B' = B * a + b
  with a = scale / sqrt(var + eps), b = bias - mean * a.
- The decomposed LayerNormalization exporters emit below opset 17,
  ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div
  [-> Mul(gamma) -> Add(beta)], becomes one LayerNormalization.
- The decomposed exact Gelu, x * 0.5 * (1 + Erf(x / sqrt 2)) in any order of
  its multiplications, becomes one Gelu.
"""
from __future__ import annotations

import bisect
import collections
import math

import numpy as np

from ..kernels import Node, TensorInfo, lookup
from ..kernels.reduce import bn_affine


class Rewriter:
    def __init__(self, walk, outputs: list[str]):
        self.walk = walk
        self.outputs = set(outputs)
        self.readers: dict[str, int] = collections.Counter(
            n for node, _, _ in walk.nodes for n in node.inputs if n)
        self.producer = {o: k for k, (node, _, phase) in enumerate(walk.nodes) if phase == "run" for o in node.outputs}
        self.dropped: set[int] = set()
        # name -> positions of the nodes that read it, ascending; a superset once nodes are replaced,
        # so `reading` checks each against the node now there.
        self.positions: dict[str, list[int]] = {}
        for k, (node, _, _) in enumerate(walk.nodes):
            for n in dict.fromkeys(node.inputs):
                if n:
                    self.positions.setdefault(n, []).append(k)

    def run(self) -> None:
        for k, (node, _, phase) in enumerate(self.walk.nodes):
            if phase != "run" or k in self.dropped:
                continue
            if node.op_type == "BatchNormalization":
                self._conv_bn(k, node)
            elif node.op_type == "ReduceMean":
                self._layer_norm(k, node)
            elif node.op_type == "Erf":
                self._gelu(k, node)
        self.walk.nodes = [n for k, n in enumerate(self.walk.nodes) if k not in self.dropped]

    # -- helpers --------------------------------------------------------------------

    def const(self, name: str) -> np.ndarray | None:
        return self.walk.consts.get(name) if name and name not in self.walk.dynamic else None

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def private(self, name: str) -> bool:
        """Read by exactly one node and not a graph output: safe to fuse away."""
        return self.readers[name] == 1 and name not in self.outputs

    def made_by(self, name: str, op_type: str) -> tuple[int, Node] | None:
        k = self.producer.get(name)
        if k is None or k in self.dropped:
            return None
        node = self.walk.nodes[k][0]
        return (k, node) if node.op_type == op_type else None

    def reading(self, name: str) -> list[tuple[int, Node]]:
        """The nodes that read `name` now, in graph order."""
        nodes = self.walk.nodes
        return [(k, nodes[k][0]) for k in self.positions.get(name, ())
                if k not in self.dropped and name in nodes[k][0].inputs]

    def only_reader(self, name: str, op_type: str) -> tuple[int, Node] | None:
        if not self.private(name):
            return None
        for k, node in self.reading(name):
            return (k, node) if node.op_type == op_type and self.walk.nodes[k][2] == "run" else None
        return None

    def add_const(self, name: str, value: np.ndarray) -> str:
        self.walk.consts[name] = value
        self.walk.infos[name] = TensorInfo(value.dtype, value.shape, value)
        return name

    def replace(self, drop: list[int], at: int, node: Node) -> None:
        """Drop nodes `drop` and put `node` at position `at` (whose node is also replaced)."""
        self.dropped.update(d for d in drop if d != at)
        self.walk.nodes[at] = (node, lookup(node.domain, node.op_type), "run")
        for n in dict.fromkeys(node.inputs):
            if n and at not in self.positions.setdefault(n, []):
                bisect.insort(self.positions[n], at)

    # -- patterns -------------------------------------------------------------------

    def _conv_bn(self, k: int, bn: Node) -> None:
        conv = self.made_by(bn.inputs[0], "Conv")
        if conv is None or not self.private(bn.inputs[0]) or len([o for o in bn.outputs if o]) != 1:
            return
        ck, cnode = conv
        w = self.const(cnode.inputs[1])
        params = [self.const(n) for n in bn.inputs[1:5]]
        has_bias = len(cnode.inputs) > 2 and cnode.inputs[2]
        b = self.const(cnode.inputs[2]) if has_bias else np.zeros(w.shape[0] if w is not None else 0, np.float32)
        if w is None or b is None or any(p is None for p in params):
            return
        a, shift = bn_affine(bn, *(p.astype(np.float64) for p in params))
        w2 = (w * a.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        b2 = (b * a + shift).astype(w.dtype)
        inputs = [cnode.inputs[0], self.add_const(f"{cnode.name}:W+bn", w2), self.add_const(f"{cnode.name}:B+bn", b2)]
        fused = Node("Conv", cnode.name, inputs, [bn.outputs[0]], dict(cnode.attrs), cnode.opset)
        self.replace([ck], k, fused)

    def _layer_norm(self, k: int, mean: Node) -> None:
        x = mean.inputs[0]
        axes = mean.attrs.get("axes") if mean.opset < 18 else (
            self.const(mean.inputs[1]).tolist() if len(mean.inputs) > 1 and self.const(mean.inputs[1]) is not None
            else None)
        if not axes or len(axes) != 1 or axes[0] != -1 or not mean.attrs.get("keepdims", 1):
            return
        sub = self.only_reader(mean.outputs[0], "Sub")
        if sub is None or sub[1].inputs != [x, mean.outputs[0]] or self.readers[sub[1].outputs[0]] != 2:
            return
        d = sub[1].outputs[0]
        readers = self.reading(d)
        pow_ = next(((j, n) for j, n in readers if n.op_type == "Pow" and n.inputs[0] == d
                     and self.scalar(n.inputs[1]) == 2.0), None)
        div = next(((j, n) for j, n in readers if n.op_type == "Div" and n.inputs[0] == d), None)
        if pow_ is None or div is None:
            return
        mean2 = self.only_reader(pow_[1].outputs[0], "ReduceMean")
        add = mean2 and self.only_reader(mean2[1].outputs[0], "Add")
        sqrt = add and self.only_reader(add[1].outputs[0], "Sqrt")
        if not sqrt or div[1].inputs[1] != sqrt[1].outputs[0] or self.private(sqrt[1].outputs[0]) is False:
            return
        eps = self.scalar(add[1].inputs[1])
        if eps is None:
            return
        chain = [k, sub[0], pow_[0], mean2[0], add[0], sqrt[0], div[0]]
        out, dtype = div[1].outputs[0], self.walk.infos[x].dtype
        width = self.walk.infos[x].shape[-1]
        gamma, beta = np.ones(width, dtype), None
        mul = self.only_reader(out, "Mul")
        if mul and self.const(mul[1].inputs[1]) is not None and self.const(mul[1].inputs[1]).shape[-1:] == (width,):
            gamma = self.const(mul[1].inputs[1]).reshape(-1).astype(dtype)
            chain.append(mul[0])
            out = mul[1].outputs[0]
            plus = self.only_reader(out, "Add")
            if plus and self.const(plus[1].inputs[1]) is not None:
                beta = self.const(plus[1].inputs[1]).reshape(-1).astype(dtype)
                chain.append(plus[0])
                out = plus[1].outputs[0]
        name = mean.name + ":layernorm"
        inputs = [x, self.add_const(name + ":scale", gamma)]
        if beta is not None:
            inputs.append(self.add_const(name + ":bias", beta))
        fused = Node("LayerNormalization", name, inputs, [out], {"axis": -1, "epsilon": eps}, 17)
        self.replace(chain, chain[-1], fused)

    def _gelu(self, k: int, erf: Node) -> None:
        div = self.made_by(erf.inputs[0], "Div")
        if div is None or not self.private(erf.inputs[0]):
            return
        x = div[1].inputs[0]
        if not math.isclose(self.scalar(div[1].inputs[1]) or 0, math.sqrt(2), rel_tol=1e-4):
            return
        add = self.only_reader(erf.outputs[0], "Add")
        if add is None or self.scalar(add[1].inputs[1]) != 1.0:
            return
        # x * (1 + erf) * 0.5, multiplied in either order.
        m1 = self.only_reader(add[1].outputs[0], "Mul")
        if m1 is None:
            return
        other = [i for i in m1[1].inputs if i != add[1].outputs[0]]
        if other == [x]:
            m2 = self.only_reader(m1[1].outputs[0], "Mul")
            if m2 is None or self.scalar(next(i for i in m2[1].inputs if i != m1[1].outputs[0])) != 0.5:
                return
            chain, out = [div[0], k, add[0], m1[0], m2[0]], m2[1].outputs[0]
        else:
            half = self.made_by(other[0], "Mul") if other else None
            if half is None or not self.private(other[0]) or x not in half[1].inputs or \
                    self.scalar(next(i for i in half[1].inputs if i != x)) != 0.5:
                return
            chain, out = [div[0], k, add[0], half[0], m1[0]], m1[1].outputs[0]
        self.replace(chain, max(chain), Node("Gelu", erf.name + ":gelu", [x], [out], {}, 20))


def fuse(walk, outputs: list[str]) -> None:
    Rewriter(walk, outputs).run()



