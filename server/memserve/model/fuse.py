"""Plan-time rewrites of the node list, before storage is assigned.

Each pattern is matched on RUN nodes whose intermediate results have no other
reader, and replaced by one node computing the same thing:

- Conv -> BatchNormalization (constant parameters): the normalization is
  folded into the convolution's weights and bias, W' = W * a, B' = B * a + b
  with a = scale / sqrt(var + eps), b = bias - mean * a.
- Conv -> Mul / Add by a per-channel constant (how some exporters write a
  BatchNormalization) is folded into the weights and bias the same way.
- Conv -> Add of another tensor of the output's shape (a residual) and Conv ->
  Relu / Clip (constant bounds) / HardSwish / x * HardSigmoid(x) / x *
  Sigmoid(x) (SiLU), in that order, become attributes of the Conv
  (`activation`, `activation_params`, the residual as a 4th input): the conv
  kernel adds bias and residual and applies the activation in one pass right
  after its GEMM. Only float32/float64 Convs, the dtypes its compiled
  epilogue runs. The Conv moves to the Add's place; it declares no in-place
  input, so its output never shares the residual's bytes (the residual is
  read after the GEMM has written the output).
- MatMul by a constant 2-D W, or Gemm (alpha = beta = 1, constant B, a
  bias C of N values or none), -> Add of a constant bias of N values ->
  Relu, each of the last two optional, becomes one Dense (kernels/dense.py)
  with W as (K, N): a Gemm's transposed B is transposed once here when no
  other node reads it (weight memory stays the same).
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

from ..kernels import INTERNAL_DOMAIN, Node, TensorInfo, lookup
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
            if phase != "run" or k in self.dropped or node.guard:
                continue
            if node.op_type == "BatchNormalization":
                self._conv_bn(k, node)
            elif node.op_type == "ReduceMean":
                self._layer_norm(k, node)
            elif node.op_type == "Erf":
                self._gelu(k, node)
            elif node.op_type in ("MatMul", "Gemm"):
                self._dense(k, node)
            elif node.op_type in ("Relu", "Clip", "HardSwish"):
                self._conv_activation(k, node)
            elif node.op_type == "Add":
                self._conv_add(k, node)
            elif node.op_type == "Mul":
                self._conv_mul(k, node)
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
        return (k, node) if node.op_type == op_type and not node.guard else None

    def reading(self, name: str) -> list[tuple[int, Node]]:
        """The nodes that read `name` now, in graph order; a node in an If's guarded branch is never fused
        with one outside it (it may not run), so patterns do not see it."""
        nodes = self.walk.nodes
        return [(k, nodes[k][0]) for k in self.positions.get(name, ())
                if k not in self.dropped and name in nodes[k][0].inputs and not nodes[k][0].guard]

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
        if conv is None or not self.private(bn.inputs[0]) or len([o for o in bn.outputs if o]) != 1 \
                or bn.attrs.get("training_mode", 0):  # the batch's own statistics: no constant affine
            return
        ck, cnode = conv
        if "activation" in cnode.attrs or len(cnode.inputs) > 3:  # an epilogue fused already: BN comes after it
            return
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

    # -- Conv epilogues ---------------------------------------------------------------

    def _fusable_conv(self, name: str, plain: bool = False) -> tuple[int, Node] | None:
        """The float32/float64 Conv making `name`, with no activation yet (`plain`: and no residual,
        and constant weights, for folding a per-channel affine)."""
        conv = self.made_by(name, "Conv")
        if conv is None or self.walk.nodes[conv[0]][2] != "run" or "activation" in conv[1].attrs:
            return None
        info = self.walk.infos.get(name)
        if info is None or np.dtype(info.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
            return None
        if plain and (len(conv[1].inputs) > 3 or self.const(conv[1].inputs[1]) is None):
            return None
        return conv

    def _pointwise(self, cnode: Node) -> bool:
        """A 1x1 Conv with unit strides and no padding: a residual is not fused into it (in pp-ocr cls's
        blocks that made the planner pack the work area 7% above its lower bound; the gain is one pass)."""
        w = self.walk.infos.get(cnode.inputs[1])
        a = cnode.attrs
        return (w is not None and all(k == 1 for k in w.shape[2:]) and all(v == 1 for v in a.get("strides", [1]))
                and not any(a.get("pads", [0])) and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"))

    def _conv_with(self, cnode: Node, output: str, inputs: list[str] | None = None, **attrs) -> Node:
        return Node("Conv", cnode.name, inputs or list(cnode.inputs), [output], {**cnode.attrs, **attrs},
                    cnode.opset)

    def _conv_activation(self, k: int, node: Node) -> None:
        x = node.inputs[0]
        conv = self._fusable_conv(x)
        if conv is None or not self.private(x):
            return
        if node.op_type == "Relu":
            act, params = "Relu", []
        elif node.op_type == "HardSwish":
            act, params = "HardSwish", [1 / 6, 0.5]
        else:  # Clip: constant bounds only
            if node.opset < 11:
                lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
            else:
                bounds = []
                for j in (1, 2):
                    name = node.inputs[j] if len(node.inputs) > j else ""
                    if not name:
                        bounds.append(None)
                    elif self.scalar(name) is None:
                        return
                    else:
                        bounds.append(self.scalar(name))
                lo = -np.inf if bounds[0] is None else bounds[0]
                hi = np.inf if bounds[1] is None else bounds[1]
            act, params = "Clip", [float(lo), float(hi)]
        self.replace([conv[0]], k, self._conv_with(conv[1], node.outputs[0], activation=act,
                                                   activation_params=params))

    def _conv_add(self, k: int, add: Node) -> None:
        if len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
            return
        infos = [self.walk.infos.get(n) for n in add.inputs]
        out = self.walk.infos.get(add.outputs[0])
        cands = []
        for j in (0, 1):
            conv = self._fusable_conv(add.inputs[j])
            if conv is not None and self.private(add.inputs[j]) and len(conv[1].inputs) <= 3:
                shift = self.const(add.inputs[1 - j])
                if shift is not None and self._fold_affine(k, conv[0], conv[1], add.outputs[0], None, shift):
                    return
                if not self._pointwise(conv[1]):
                    cands.append((conv[0], j, conv))
        if not cands:
            return
        ck, j, (_, cnode) = max(cands)  # the later Conv: its input lives on the shortest
        other = add.inputs[1 - j]
        if infos[0] is None or infos[1] is None or out is None or not (
                infos[0].shape == infos[1].shape == out.shape and infos[0].dtype == infos[1].dtype == out.dtype):
            return
        inputs = list(cnode.inputs) + [""] * (3 - len(cnode.inputs)) + [other]
        self.replace([ck], k, self._conv_with(cnode, add.outputs[0], inputs))

    def _conv_mul(self, k: int, mul: Node) -> None:
        if len(mul.inputs) != 2:
            return
        a, b = mul.inputs
        for y, g in ((a, b), (b, a)):
            conv = self._fusable_conv(y)
            if conv is None:
                continue
            scale = self.const(g)
            if scale is not None and self.private(y):
                if self._fold_affine(k, conv[0], conv[1], mul.outputs[0], scale, None):
                    return
                continue
            # x * Sigmoid(x) (SiLU) and x * HardSigmoid(x) (HardSwish): y is read by the gate and by us.
            gate = self.made_by(g, "Sigmoid") or self.made_by(g, "HardSigmoid")
            if gate is None or gate[1].inputs[0] != y or self.readers[y] != 2 or y in self.outputs \
                    or not self.private(g):
                continue
            if gate[1].op_type == "Sigmoid":
                act, params = "SiLU", []
            else:
                gattrs = gate[1].attrs
                act, params = "HardSwish", [float(gattrs.get("alpha", 0.2)), float(gattrs.get("beta", 0.5))]
            self.replace([conv[0], gate[0]], k, self._conv_with(conv[1], mul.outputs[0], activation=act,
                                                                activation_params=params))
            return

    def _fold_affine(self, k: int, ck: int, cnode: Node, output: str, scale, shift) -> bool:
        """Conv -> Mul(scale) or Add(shift) by a constant that is a scalar or per output channel."""
        if len(cnode.inputs) > 3 or "activation" in cnode.attrs:
            return False
        w = self.const(cnode.inputs[1])
        if w is None:
            return False
        has_bias = len(cnode.inputs) > 2 and cnode.inputs[2]
        b = self.const(cnode.inputs[2]) if has_bias else np.zeros(w.shape[0], w.dtype)
        value = scale if scale is not None else shift
        if b is None or value.dtype != w.dtype or value.ndim > w.ndim:
            return False
        m = w.shape[0]
        shape = (1,) * (w.ndim - value.ndim) + value.shape
        if any(d != 1 for j, d in enumerate(shape) if j != 1) or shape[1] not in (1, m):
            return False
        v = np.broadcast_to(value.reshape(-1), (m,))
        if scale is not None:
            w2 = (w * v.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
            b2 = (b * v).astype(w.dtype)
            tag = "mul"
        else:
            w2, b2, tag = w, (b + v).astype(w.dtype), "add"
        inputs = [cnode.inputs[0], self.add_const(f"{cnode.name}:W+{tag}{k}", w2),
                  self.add_const(f"{cnode.name}:B+{tag}{k}", b2)]
        self.replace([ck], k, self._conv_with(cnode, output, inputs))
        return True

    # -- Dense ------------------------------------------------------------------------

    def _dense(self, k: int, node: Node) -> None:
        w = self._dense_weight(node)
        if w is None:
            return
        x, out = node.inputs[0], node.outputs[0]
        info = self.walk.infos.get(out)
        if info is None or self.walk.infos.get(x) is None or self.walk.infos[x].dtype != w.dtype \
                or not self.walk.infos[x].shape:
            return
        n = w.shape[1]
        bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] else ""
        if bias and not self._is_bias(bias, n, w.dtype):
            return
        chain = [k]
        add = None if bias else self.only_reader(out, "Add")
        if add is not None:
            other = next((i for i in add[1].inputs if i != out), "")
            summed = self.walk.infos.get(add[1].outputs[0])
            if len(add[1].inputs) == 2 and self._is_bias(other, n, w.dtype) and summed is not None \
                    and summed.shape == info.shape:
                bias, out = other, add[1].outputs[0]
                chain.append(add[0])
        act = ""
        relu = self.only_reader(out, "Relu")
        if relu is not None:
            act, out = "Relu", relu[1].outputs[0]
            chain.append(relu[0])
        if len(chain) == 1 and node.op_type == "MatMul":  # nothing fused: numpy's matmul as it is
            return
        name = node.inputs[1]
        if node.op_type == "Gemm" and node.attrs.get("transB", 0):
            name = self.add_const(f"{node.name}:W^T", np.ascontiguousarray(w))
        inputs = [x, name] + ([bias] if bias else [])
        self.replace(chain, chain[-1], Node("Dense", node.name, inputs, [out], {"activation": act}, 1,
                                            INTERNAL_DOMAIN))

    def _dense_weight(self, node: Node) -> np.ndarray | None:
        """W as (K, N) for a MatMul or Gemm that Dense can compute, else None."""
        if len(node.inputs) < 2 or len(node.outputs) != 1:
            return None
        w = self.const(node.inputs[1])
        if w is None or w.ndim != 2 or w.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            return None
        if node.op_type == "MatMul":
            return w
        a = node.attrs
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 \
                or len(self.walk.infos[node.inputs[0]].shape) != 2:
            return None
        if a.get("transB", 0):
            # Transposed into a new constant: only when the original is read by no other node, so that
            # the weights are not held twice.
            return w.T if self.readers[node.inputs[1]] == 1 else None
        return w

    def _is_bias(self, name: str, n: int, dtype: np.dtype) -> bool:
        """A constant of n values along the last axis only ((n,), (1, n), ...)."""
        b = self.const(name)
        return b is not None and b.dtype == dtype and b.size == n and b.shape[-1:] == (n,)

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



