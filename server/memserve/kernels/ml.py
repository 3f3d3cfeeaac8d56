"""The ai.onnx.ml ops scikit-learn models export to (through skl2onnx).

Tree ensembles run compiled (jit.py): the trees are checked and flattened
once while the model loads, and a numba kernel walks each sample down each
tree until it reaches a leaf (see "tree ensembles" below). Outputs follow
onnxruntime's conventions, including the binary-classifier special cases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper
from scipy import special

from .. import budget
from ..errors import InvalidArgument, UnsupportedModel
from . import Node, OpDef, TensorInfo, jit, register
from .jit import prange

ML = "ai.onnx.ml"
F32, I64 = np.dtype(np.float32), np.dtype(np.int64)


def _features(node: Node, x: TensorInfo) -> tuple[int, int]:
    if len(x.shape) == 1:
        return 1, x.shape[0]
    if len(x.shape) != 2:
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): input must be 2-D (samples x features), got {x.shape}")
    return x.shape


def _labels(node: Node) -> list[int]:
    if "classlabels_strings" in node.attrs:
        raise UnsupportedModel(f"node {node.name!r} ({node.op_type}): string class labels are not supported; "
                               "train with integer labels")
    return [int(v) for v in node.attrs.get("classlabels_ints", node.attrs.get("classlabels_int64s", []))]


def post_transform(name: str, scores: np.ndarray) -> np.ndarray:
    if name in ("NONE", None):
        return scores
    if name == "LOGISTIC":
        return special.expit(scores)
    if name == "SOFTMAX":
        return special.softmax(scores, axis=1)
    if name == "SOFTMAX_ZERO":  # softmax that leaves exact zeros at zero
        e = np.where(scores == 0, 0, np.exp(scores - scores.max(axis=1, keepdims=True)))
        s = e.sum(axis=1, keepdims=True)
        return np.where(s == 0, 0.5, e / np.where(s == 0, 1, s))
    if name == "PROBIT":
        return np.sqrt(2) * special.erfinv(2 * scores - 1)
    raise UnsupportedModel(f"post_transform {name!r} is not supported")


def _store(o, labels, scores) -> None:
    np.copyto(o[0], labels.reshape(o[0].shape), casting="unsafe")
    if len(o) > 1:
        np.copyto(o[1], scores.reshape(o[1].shape), casting="unsafe")


# -- Scaler, Normalizer, ArrayFeatureExtractor -------------------------------------

def _scaler_infer(node, ins):
    return [TensorInfo(F32, ins[0].shape)]


def _build_scaler(node, ins, outs):
    offset = np.asarray(node.attrs.get("offset", [0.0]), np.float32)
    scale = np.asarray(node.attrs.get("scale", [1.0]), np.float32)

    def run(i, o):
        np.subtract(i[0], offset, out=o[0], casting="unsafe")
        o[0] *= scale

    return run


def _build_normalizer(node, ins, outs):
    norm = node.attrs.get("norm", "MAX")

    def run(i, o):
        x = np.asarray(i[0], np.float32).reshape(o[0].shape[0] if o[0].ndim > 1 else 1, -1)
        if norm == "MAX":
            d = np.abs(x).max(axis=1, keepdims=True)
        elif norm == "L1":
            d = np.abs(x).sum(axis=1, keepdims=True)
        elif norm == "L2":
            d = np.sqrt((x * x).sum(axis=1, keepdims=True))
        else:
            raise UnsupportedModel(f"node {node.name!r} (Normalizer): norm {norm!r}")
        np.divide(x, np.where(d == 0, 1, d), out=o[0].reshape(x.shape))

    return run


def _afe_infer(node, ins):
    x, idx = ins
    picked = int(np.prod(idx.shape, dtype=np.int64))
    shape = x.shape[:-1] + (picked,) if len(x.shape) > 1 else (1, picked)
    return [TensorInfo(x.dtype, shape)]


def _build_afe(node, ins, outs):
    def run(i, o):
        x = i[0] if i[0].ndim > 1 else i[0].reshape(1, -1)
        np.take(x, i[1].reshape(-1), axis=-1, out=o[0])

    return run


register(OpDef("Scaler", _scaler_infer, _build_scaler), ML)
register(OpDef("Normalizer", _scaler_infer, _build_normalizer), ML)
register(OpDef("ArrayFeatureExtractor", _afe_infer, _build_afe), ML)


# -- linear models ------------------------------------------------------------------

def _linear_classifier_infer(node, ins):
    n, _ = _features(node, ins[0])
    labels = _labels(node)
    rows = len(node.attrs["coefficients"]) // _features(node, ins[0])[1]
    classes = 2 if rows == 1 and len(labels) == 2 else rows
    return [TensorInfo(I64, (n,)), TensorInfo(F32, (n, classes))]


_LINEAR_SIG = ("void(ro(float32[:, ::1]), ro(float32[:, ::1]), ro(float32[::1]), ro(int64[::1]), int64, "
               "boolean, int64[::1], float32[:, ::1])")
_LINEAR_TRANSFORMS = {"NONE": 0, "LOGISTIC": 1, "SOFTMAX": 2}


@jit.compiled(_LINEAR_SIG)
def _linear_classify(x, coef, intercepts, labels, transform, binary, label, scores):
    """Scores, post_transform and label of each row in one pass: as the numpy path below, without its
    temporaries (a logistic regression's whole execution was five numpy calls of ~1 us)."""
    n, f = x.shape
    c = coef.shape[1]
    for i in range(n):
        out = scores[i]
        for j in range(c):
            s = intercepts[j]
            for p in range(f):
                s += x[i, p] * coef[p, j]
            if binary:  # one score s stands for the two classes as [-s, s]
                out[0], out[1] = -s, s
            else:
                out[j] = s
        width = out.shape[0]
        if transform == 1:
            for j in range(width):
                out[j] = 1.0 / (1.0 + np.exp(-out[j]))
        elif transform == 2:
            top = out[0]
            for j in range(1, width):
                top = max(top, out[j])
            total = 0.0
            for j in range(width):
                out[j] = np.exp(out[j] - top)
                total += out[j]
            for j in range(width):
                out[j] = out[j] / total
        best = 0  # np.argmax's: the first maximum, or the first NaN
        if out[0] == out[0]:
            for j in range(1, width):
                v = out[j]
                if v != v:
                    best = j
                    break
                if v > out[best]:
                    best = j
        label[i] = labels[best]


def _build_linear_classifier(node, ins, outs):
    _, f = _features(node, ins[0])
    coef = np.asarray(node.attrs["coefficients"], np.float32).reshape(-1, f).T
    intercepts = np.asarray(node.attrs.get("intercepts", [0.0] * coef.shape[1]), np.float32)
    labels = np.asarray(_labels(node) or range(coef.shape[1]), np.int64)
    transform = node.attrs.get("post_transform", "NONE")
    binary = coef.shape[1] == 1 and len(labels) == 2
    if ins[0].dtype == F32 and transform in _LINEAR_TRANSFORMS and (binary or coef.shape[1] > 1) \
            and len(outs) == 2 and len(labels) >= outs[1].shape[-1]:
        fn, code, coef = _linear_classify.ensure(), _LINEAR_TRANSFORMS[transform], np.ascontiguousarray(coef)

        def run(i, o):
            fn(i[0].reshape(-1, f), coef, intercepts, labels, code, binary, o[0].reshape(-1),
               o[1].reshape(o[1].shape[0] if o[1].ndim > 1 else 1, -1))

        return run

    def run(i, o):
        x = np.asarray(i[0], np.float32).reshape(-1, f)
        scores = x @ coef + intercepts
        if binary:  # one score s stands for the two classes as [-s, s]
            scores = np.concatenate([-scores, scores], axis=1)
        scores = post_transform(transform, scores)
        if scores.shape[1] > 1:
            label = labels[np.argmax(scores, axis=1)]
        else:
            label = np.where(scores[:, 0] >= (0 if transform == "NONE" else 0.5), labels[0], 0)
        _store(o, label, scores)

    return run


def _linear_regressor_infer(node, ins):
    n, _ = _features(node, ins[0])
    return [TensorInfo(F32, (n, node.attrs.get("targets", 1)))]


def _build_linear_regressor(node, ins, outs):
    _, f = _features(node, ins[0])
    coef = np.asarray(node.attrs["coefficients"], np.float32).reshape(-1, f).T
    intercepts = np.asarray(node.attrs.get("intercepts", [0.0] * coef.shape[1]), np.float32)
    transform = node.attrs.get("post_transform", "NONE")

    def run(i, o):
        x = np.asarray(i[0], np.float32).reshape(-1, f)
        np.copyto(o[0], post_transform(transform, x @ coef + intercepts), casting="unsafe")

    return run


register(OpDef("LinearClassifier", _linear_classifier_infer, _build_linear_classifier,
              compiled=(_linear_classify,)), ML)
register(OpDef("LinearRegressor", _linear_regressor_infer, _build_linear_regressor), ML)


# -- tree ensembles -------------------------------------------------------------------
#
# A model's trees are checked and flattened once, while it loads (`forest()`, cached on the node, its bytes
# charged to the load): each node as four uint32s (feature, false and true child offsets, float32 threshold),
# a leaf being its own child; each leaf's weights as a sparse row (Leaves). A compiled kernel (`_walk`) goes
# tree by tree (its nodes stay in cache) and walks the samples down it until they reach a leaf, four at a
# time when every test is BRANCH_LEQ, adding the leaf's weights into a float64 row per sample (planned
# scratch); `_classify` and `_regress` add the base values, apply post_transform and write the outputs.
# Each tree's walk is bounded by its longest root-to-leaf path, measured at load, where a cycle, a branch
# to a missing node, a feature the input lacks, a duplicate node or ragged attributes are refused.

MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5, "LEAF": 6}
LEAF, NAN_TRUE = 6, 8  # mode codes; NAN_TRUE is or-ed in when a missing value (NaN) takes the true branch
AGGREGATES = {"SUM": 0, "AVERAGE": 1, "MIN": 2, "MAX": 3}
TRANSFORMS = {"NONE": 0, "LOGISTIC": 1, "SOFTMAX": 2, "SOFTMAX_ZERO": 3, "PROBIT": 4}
MAX_TREE_NODES = 1 << 26  # nodes (and leaf weights) in one ensemble; indices are int32
_X_TYPES = ("float32", "float64", "int64", "int32")  # the input types ONNX allows for tree ensembles


# (input, threshold): float thresholds are compared with float32 inputs in float32, as onnxruntime does; other
# inputs (integers; float32 against double thresholds) are copied to float64 scratch first: two compiles.
_WALK_TYPES = (("float32", "float32"), ("float64", "float64"))
F64 = np.dtype(np.float64)


_BLOCK = 16  # samples per task of the parallel walk
_ROWS = 64  # samples the serial walk takes through every tree at a time


@jit.helper
def _add_leaf(acc, s, q, leaf_ptr, leaf_col, leaf_w, agg):
    """Add leaf q's weights into acc[s] (agg: SUM/AVERAGE 0/1, MIN 2, MAX 3; NaN: no weight yet)."""
    for k in range(leaf_ptr[q], leaf_ptr[q + 1]):
        j = leaf_col[k]
        if agg < 2:
            acc[s, j] += leaf_w[k]
        elif agg == 2:
            if not acc[s, j] <= leaf_w[k]:  # also while acc is NaN
                acc[s, j] = leaf_w[k]
        elif not acc[s, j] >= leaf_w[k]:
            acc[s, j] = leaf_w[k]


@jit.helper
def _walk_rows(x, lo, hi, nodes, thr, mode, plain, roots, depth, leaf_ptr, leaf_col, leaf_w, agg, acc):
    """_walk for samples lo to hi, tree by tree (a tree's nodes stay in cache while its samples go down)."""
    # Unsigned offsets: no negative-index wraparound. A child is chosen by masks, not a branch: which way a
    # sample goes is data, and mispredicted branches cost more than the walk itself (measured 2.3x).
    zero, one, two, three = np.uint64(0), np.uint64(1), np.uint64(2), np.uint64(3)
    fill = 0.0 if agg < 2 else np.nan
    for i in range(lo, hi):
        for j in range(acc.shape[1]):
            acc[i, j] = fill
    for t in range(roots.shape[0]):
        r = np.uint64(roots[t])
        steps = depth[t]
        i = lo
        if plain:  # eight (then four) independent walks at a time: their loads overlap
            while i + 8 <= hi:
                x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
                x4, x5, x6, x7 = x[i + 4], x[i + 5], x[i + 6], x[i + 7]
                a = b = c = d = e = f = g = h = r
                for _ in range(steps):
                    if ((nodes[a + one] == a) & (nodes[b + one] == b) & (nodes[c + one] == c)
                            & (nodes[d + one] == d) & (nodes[e + one] == e) & (nodes[f + one] == f)
                            & (nodes[g + one] == g) & (nodes[h + one] == h)):
                        break
                    fa, ta = np.uint64(nodes[a + one]), np.uint64(nodes[a + two])
                    a = fa ^ ((ta ^ fa) & (zero - np.uint64(x0[np.uint64(nodes[a])] <= thr[a + three])))
                    fb, tb = np.uint64(nodes[b + one]), np.uint64(nodes[b + two])
                    b = fb ^ ((tb ^ fb) & (zero - np.uint64(x1[np.uint64(nodes[b])] <= thr[b + three])))
                    fc, tc = np.uint64(nodes[c + one]), np.uint64(nodes[c + two])
                    c = fc ^ ((tc ^ fc) & (zero - np.uint64(x2[np.uint64(nodes[c])] <= thr[c + three])))
                    fd, td = np.uint64(nodes[d + one]), np.uint64(nodes[d + two])
                    d = fd ^ ((td ^ fd) & (zero - np.uint64(x3[np.uint64(nodes[d])] <= thr[d + three])))
                    fe, te = np.uint64(nodes[e + one]), np.uint64(nodes[e + two])
                    e = fe ^ ((te ^ fe) & (zero - np.uint64(x4[np.uint64(nodes[e])] <= thr[e + three])))
                    ff, tf = np.uint64(nodes[f + one]), np.uint64(nodes[f + two])
                    f = ff ^ ((tf ^ ff) & (zero - np.uint64(x5[np.uint64(nodes[f])] <= thr[f + three])))
                    fg, tg = np.uint64(nodes[g + one]), np.uint64(nodes[g + two])
                    g = fg ^ ((tg ^ fg) & (zero - np.uint64(x6[np.uint64(nodes[g])] <= thr[g + three])))
                    fh, th = np.uint64(nodes[h + one]), np.uint64(nodes[h + two])
                    h = fh ^ ((th ^ fh) & (zero - np.uint64(x7[np.uint64(nodes[h])] <= thr[h + three])))
                _add_leaf(acc, i, a >> two, leaf_ptr, leaf_col, leaf_w, agg)
                _add_leaf(acc, i + 1, b >> two, leaf_ptr, leaf_col, leaf_w, agg)
                _add_leaf(acc, i + 2, c >> two, leaf_ptr, leaf_col, leaf_w, agg)
                _add_leaf(acc, i + 3, d >> two, leaf_ptr, leaf_col, leaf_w, agg)
                _add_leaf(acc, i + 4, e >> two, leaf_ptr, leaf_col, leaf_w, agg)
                _add_leaf(acc, i + 5, f >> two, leaf_ptr, leaf_col, leaf_w, agg)
                _add_leaf(acc, i + 6, g >> two, leaf_ptr, leaf_col, leaf_w, agg)
                _add_leaf(acc, i + 7, h >> two, leaf_ptr, leaf_col, leaf_w, agg)
                i += 8
            while i + 4 <= hi:
                x0, x1, x2, x3 = x[i], x[i + 1], x[i + 2], x[i + 3]
                a = b = c = d = r
                for _ in range(steps):
                    if (nodes[a + one] == a) & (nodes[b + one] == b) & (nodes[c + one] == c) & (nodes[d + one] == d):
                        break
                    fa, ta = np.uint64(nodes[a + one]), np.uint64(nodes[a + two])
                    a = fa ^ ((ta ^ fa) & (zero - np.uint64(x0[np.uint64(nodes[a])] <= thr[a + three])))
                    fb, tb = np.uint64(nodes[b + one]), np.uint64(nodes[b + two])
                    b = fb ^ ((tb ^ fb) & (zero - np.uint64(x1[np.uint64(nodes[b])] <= thr[b + three])))
                    fc, tc = np.uint64(nodes[c + one]), np.uint64(nodes[c + two])
                    c = fc ^ ((tc ^ fc) & (zero - np.uint64(x2[np.uint64(nodes[c])] <= thr[c + three])))
                    fd, td = np.uint64(nodes[d + one]), np.uint64(nodes[d + two])
                    d = fd ^ ((td ^ fd) & (zero - np.uint64(x3[np.uint64(nodes[d])] <= thr[d + three])))
                _add_leaf(acc, i, a >> two, leaf_ptr, leaf_col, leaf_w, agg)
                _add_leaf(acc, i + 1, b >> two, leaf_ptr, leaf_col, leaf_w, agg)
                _add_leaf(acc, i + 2, c >> two, leaf_ptr, leaf_col, leaf_w, agg)
                _add_leaf(acc, i + 3, d >> two, leaf_ptr, leaf_col, leaf_w, agg)
                i += 4
        while i < hi:  # one sample at a time, any test
            xi = x[i]
            node = r
            for _ in range(steps):
                no = np.uint64(nodes[node + one])
                if no == node:
                    break
                v = xi[np.uint64(nodes[node])]
                limit = thr[node + three]
                m = mode[node >> two]
                test = m & 7
                if test == 0:
                    go = v <= limit
                elif test == 1:
                    go = v < limit
                elif test == 2:
                    go = v >= limit
                elif test == 3:
                    go = v > limit
                elif test == 4:
                    go = v == limit
                else:
                    go = v != limit
                if m & 8 and v != v:
                    go = True
                yes = np.uint64(nodes[node + two])
                node = no ^ ((yes ^ no) & (zero - np.uint64(go)))
            _add_leaf(acc, i, node >> two, leaf_ptr, leaf_col, leaf_w, agg)
            i += 1


# The input may be a request's bytes: read-only, maybe unaligned (jit.ro).
_WALK_SIGS = [f"void(ro({x}[:, ::1]), uint32[::1], {t}[::1], uint8[::1], boolean, uint32[::1], int64[::1], "
              "int64[::1], int32[::1], float64[::1], int64, float64[:, ::1])" for x, t in _WALK_TYPES]


@jit.compiled(*_WALK_SIGS)
def _walk(x, nodes, thr, mode, plain, roots, depth, leaf_ptr, leaf_col, leaf_w, agg, acc):
    """acc[i] = the aggregate (agg: SUM/AVERAGE 0/1, MIN 2, MAX 3) over trees of the weights of the leaf
    sample i reaches in each tree; MIN and MAX leave NaN where no leaf had a weight.

    Node g lives at offset o = 4g of `nodes`: the feature it tests, the offsets of its false and true
    children, and (thr[o + 3]) its threshold; a leaf is its own false child. mode[g] is the test
    (MODES, | NAN_TRUE); `plain` says every test is BRANCH_LEQ without missing-value tracks, the case
    walked four samples at a time. Tree t's walk stops at its leaf, after depth[t] tests at most.
    Samples go in blocks of _ROWS, whose inputs stay in cache while every tree is walked."""
    n = x.shape[0]
    for lo in range(0, n, _ROWS):
        _walk_rows(x, lo, min(n, lo + _ROWS), nodes, thr, mode, plain, roots, depth, leaf_ptr, leaf_col, leaf_w,
                   agg, acc)


@jit.compiled(*_WALK_SIGS, parallel=True)
def _walk_parallel(x, nodes, thr, mode, plain, roots, depth, leaf_ptr, leaf_col, leaf_w, agg, acc):
    """_walk with blocks of _BLOCK samples spread over the kernel's threads (batches of 2 blocks and more)."""
    n = x.shape[0]
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        lo = b * _BLOCK
        _walk_rows(x, lo, min(n, lo + _BLOCK), nodes, thr, mode, plain, roots, depth, leaf_ptr, leaf_col, leaf_w,
                   agg, acc)


@jit.compiled("void(float64[:, ::1], float64[::1], int64, int64, int64, int64[::1], int64[::1], float32[:, ::1])")
def _classify(acc, base, width, binary, transform, labels, label, scores):
    """Per sample: scores = post_transform(acc + base) in float32 and label = labels[argmax] over the first
    `width` columns of acc. binary (one class scored, onnxruntime's binary case): the score s stands for
    [1 - s, s] when every weight is positive (binary 1) and no transform applies, else for [-s, s]; the
    label is the second class when s passes 0.5 (weights all positive) or 0. PROBIT is left to numpy."""
    for i in range(acc.shape[0]):
        row = acc[i]
        for j in range(width):
            row[j] = np.float32(row[j] + base[j])
        s = row[0]
        if binary:
            row[1] = s
            row[0] = np.float32(1.0 - s) if (binary == 1 and (transform == 0 or transform == 4)) else -s
        if transform == 1:
            for j in range(width):
                row[j] = np.float32(1.0 / (1.0 + np.exp(-row[j])))
        elif transform == 2 or transform == 3:
            top = row[0]
            for j in range(1, width):
                top = max(top, row[j])
            total = 0.0
            for j in range(width):
                e = 0.0 if (transform == 3 and row[j] == 0.0) else np.exp(row[j] - top)
                row[j] = e
                total += e
            for j in range(width):
                row[j] = np.float32(0.5 if total == 0.0 else row[j] / total)
        best = 0
        if binary:
            best = 1 if s > (0.5 if binary == 1 else 0.0) else 0
        else:
            for j in range(1, width):
                if row[j] > row[best]:
                    best = j
        if labels.shape[0] == 1:
            label[i] = labels[0] if best == 1 else 0
        else:
            label[i] = labels[best]
        for j in range(scores.shape[1]):
            scores[i, j] = row[j]


@jit.compiled("void(float64[:, ::1], float64[::1], float64, int64, float32[:, ::1])")
def _regress(acc, base, scale, transform, out):
    """out = post_transform(acc * scale + base) (MIN/MAX rows: NaN, no weight, counts 0)."""
    for i in range(acc.shape[0]):
        row = acc[i]
        n = out.shape[1]
        for j in range(n):
            v = row[j]
            row[j] = (0.0 if v != v else v * scale) + base[j]
        if transform == 1:
            for j in range(n):
                row[j] = 1.0 / (1.0 + np.exp(-row[j]))
        elif transform == 2 or transform == 3:
            top = row[0]
            for j in range(1, n):
                top = max(top, row[j])
            total = 0.0
            for j in range(n):
                e = 0.0 if (transform == 3 and row[j] == 0.0) else np.exp(row[j] - top)
                row[j] = e
                total += e
            for j in range(n):
                row[j] = 0.5 if total == 0.0 else row[j] / total
        for j in range(n):
            out[i, j] = row[j]


@dataclass
class Forest:
    nodes: np.ndarray  # uint32 (4 * nodes): feature, false child's offset, true child's offset, threshold bits
    threshold: np.ndarray  # float64 per node
    doubles: bool  # thresholds came as doubles (nodes_values_as_tensor): compared in float64
    mode: np.ndarray  # uint8 per node: MODES, | NAN_TRUE
    plain: bool  # every test is BRANCH_LEQ, no missing-value track
    roots: np.ndarray  # uint32 offset (4g) of each tree's root, by tree id
    depths: np.ndarray  # int64 longest root-to-leaf path of each tree: its walk's bound
    depth: int  # the longest of them
    features: int  # 1 + the largest feature a test reads (0 if none)
    lookup: Callable  # (tree ids, node ids) -> global indices, -1 where there is no such node
    _thr64: np.ndarray | None = None

    def thresholds(self, x: np.dtype) -> np.ndarray:
        """The threshold array _walk reads at offset 4g + 3, for inputs of type x."""
        if x == F32 and not self.doubles:
            return self.nodes.view(np.float32)
        if self._thr64 is None:
            t = np.zeros(len(self.nodes))
            t[3::4] = self.threshold
            self._thr64 = t
        return self._thr64


def _values(node: Node, name: str):
    v = node.attrs.get(name)
    if v is None:
        v = node.attrs.get(f"{name}_as_tensor")
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
    return v


def _bad(node: Node, why: str) -> InvalidArgument:
    return InvalidArgument(f"node {node.name!r} ({node.op_type}): {why}")


def _int_attr(node: Node, name: str, n: int | None, default=None) -> np.ndarray:
    v = node.attrs.get(name, default)
    if v is None:
        raise _bad(node, f"attribute {name!r} is missing")
    a = np.asarray(v)
    if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
        raise _bad(node, f"attribute {name!r} must be a list of integers")
    if n is not None and a.size != n:
        raise _bad(node, f"attribute {name!r} has {a.size} entries, not {n} like the others of its kind")
    if a.size > MAX_TREE_NODES:
        raise _bad(node, f"attribute {name!r} has {a.size} entries; memserve accepts at most {MAX_TREE_NODES}")
    return a.astype(np.int64)


def _float_attr(node: Node, name: str, n: int | None) -> np.ndarray:
    v = _values(node, name)
    a = np.asarray([] if v is None else v, np.float64).reshape(-1)
    if n is not None and v is not None and a.size != n:
        raise _bad(node, f"attribute {name!r} has {a.size} entries, not {n}")
    return a


def forest(node: Node) -> Forest:
    """The node's trees, checked and flattened (once per node: cached on it)."""
    cached = node.__dict__.get("_forest")
    if cached is None:
        cached = node.__dict__["_forest"] = _forest(node)
    return cached


def _forest(node: Node) -> Forest:
    a = node.attrs
    ids = _int_attr(node, "nodes_nodeids", None)
    n = ids.size
    trees = _int_attr(node, "nodes_treeids", n)
    features = _int_attr(node, "nodes_featureids", n)
    budget.charge(64 * n, f"node {node.name!r} ({node.op_type})")  # the arrays below and their temporaries
    modes_in = a.get("nodes_modes")
    if modes_in is None or len(modes_in) != n:
        raise _bad(node, f"attribute 'nodes_modes' must have one entry per node ({n})")
    names, inverse = np.unique(np.asarray([m.decode() if isinstance(m, bytes) else str(m) for m in modes_in],
                                          dtype=object).astype(str), return_inverse=True)
    unknown = [m for m in names.tolist() if m not in MODES]
    if unknown:
        raise _bad(node, f"unknown node mode {unknown[0][:40]!r}; modes are {', '.join(MODES)}")
    mode = np.asarray([MODES[m] for m in names.tolist()], np.uint8)[inverse.reshape(-1)] if n else np.zeros(0, np.uint8)
    inner = mode != LEAF
    thresholds = _float_attr(node, "nodes_values", n)
    threshold = thresholds if thresholds.size else np.zeros(n)
    if "nodes_values_as_tensor" not in a:  # float attributes: compared as float32, as onnxruntime does
        threshold = threshold.astype(np.float32).astype(np.float64)
    nan_true = _int_attr(node, "nodes_missing_value_tracks_true", n, [0] * n) != 0
    mode = mode | np.where(nan_true & inner, NAN_TRUE, 0).astype(np.uint8)

    # (tree id, node id) -> global index, by sorting: no per-node Python objects.
    tree_ids, tree_rank = np.unique(trees, return_inverse=True)
    node_ids, node_rank = np.unique(ids, return_inverse=True)
    keys = tree_rank.reshape(-1).astype(np.int64) * max(len(node_ids), 1) + node_rank.reshape(-1)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if n and (sorted_keys[1:] == sorted_keys[:-1]).any():
        k = int(order[1:][sorted_keys[1:] == sorted_keys[:-1]][0])
        raise _bad(node, f"tree {trees[k]} has node id {ids[k]} twice")

    def lookup(t: np.ndarray, m: np.ndarray) -> np.ndarray:
        tr = np.clip(np.searchsorted(tree_ids, t), 0, max(len(tree_ids) - 1, 0))
        nr = np.clip(np.searchsorted(node_ids, m), 0, max(len(node_ids) - 1, 0))
        if not n:
            return np.full(len(t), -1, np.int64)
        key = tr * max(len(node_ids), 1) + nr
        pos = np.clip(np.searchsorted(sorted_keys, key), 0, n - 1)
        found = (tree_ids[tr] == t) & (node_ids[nr] == m) & (sorted_keys[pos] == key)
        return np.where(found, order[pos], -1)

    child = np.zeros((n, 2), np.int64)
    for col, name in ((1, "nodes_truenodeids"), (0, "nodes_falsenodeids")):
        target = lookup(trees, _int_attr(node, name, n))
        missing = inner & (target < 0)
        if missing.any():
            k = int(np.flatnonzero(missing)[0])
            raise _bad(node, f"node {ids[k]} of tree {trees[k]} branches to node "
                             f"{int(_int_attr(node, name, n)[k])}, which the tree does not have")
        child[:, col] = np.where(inner, target, np.arange(n))
    _, first = np.unique(trees, return_index=True)  # a tree's root: its first node
    roots = np.asarray(first, np.int64)
    if inner.any():
        lo, hi = int(features[inner].min()), int(features[inner].max())
        if lo < 0:
            raise _bad(node, f"a node tests feature {lo}")
        width = hi + 1
    else:
        width = 0
    depths = _depth(node, inner, child[:, 1], child[:, 0], roots)
    packed = np.zeros((n, 4), np.uint32)
    packed[:, 0] = np.where(inner, features, 0)
    packed[:, 1:3] = 4 * child  # a leaf's children are itself
    packed.view(np.float32)[:, 3] = threshold
    return Forest(packed.reshape(-1), np.ascontiguousarray(threshold), "nodes_values_as_tensor" in a, mode,
                  bool((mode[inner] == MODES["BRANCH_LEQ"]).all()), (4 * roots).astype(np.uint32), depths,
                  int(depths.max(initial=0)), width, lookup)


def _depth(node: Node, inner: np.ndarray, tnext: np.ndarray, fnext: np.ndarray, roots: np.ndarray) -> np.ndarray:
    """Each tree's longest root-to-leaf path, visiting each tree node once (a hostile chain of 10^5 nodes stays linear);
    a cycle is refused."""
    depth = np.zeros(len(inner), np.int64)
    state = np.zeros(len(inner), np.int8)  # 0 unseen, 1 on the path, 2 done
    inner_l, tnext_l, fnext_l = inner.tolist(), tnext.tolist(), fnext.tolist()
    for root in roots.tolist():
        stack = [root]
        while stack:
            g = stack[-1]
            if state[g] == 2:
                stack.pop()
                continue
            if not inner_l[g]:
                state[g] = 2
                stack.pop()
                continue
            children = (tnext_l[g], fnext_l[g])
            if state[g] == 0:
                state[g] = 1
                for c in children:
                    if state[c] == 1 or c == g:
                        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): the trees have a cycle")
                    if state[c] == 0:
                        stack.append(c)
                continue
            depth[g] = 1 + max(depth[c] for c in children)
            state[g] = 2
            stack.pop()
    return depth[roots]


@dataclass
class Leaves:
    ptr: np.ndarray  # int64 (nodes + 1): node g's weights are col/w[ptr[g]:ptr[g + 1]]
    col: np.ndarray  # int32 class or target
    w: np.ndarray  # float64


def _leaves(node: Node, f: Forest, prefix: str, width: int) -> Leaves:
    """Each node's weights as a sparse row, in attribute order (onnxruntime's order of summation)."""
    cached = node.__dict__.get("_leaves")
    if cached is not None:
        return cached
    ids = _int_attr(node, f"{prefix}_ids", None)
    m = ids.size
    budget.charge(48 * m, f"node {node.name!r} ({node.op_type})")
    trees, nodes = _int_attr(node, f"{prefix}_treeids", m), _int_attr(node, f"{prefix}_nodeids", m)
    w = _float_attr(node, f"{prefix}_weights", m)
    if w.size != m:
        raise _bad(node, f"attribute '{prefix}_weights' must have one entry per weight ({m})")
    if m and (ids.min() < 0 or ids.max() >= width):
        bad = int(ids.max() if ids.max() >= width else ids.min())
        raise _bad(node, f"{prefix}_ids must be 0 to {width - 1}, got {bad}")
    g = f.lookup(trees, nodes)
    if (g < 0).any():
        k = int(np.flatnonzero(g < 0)[0])
        raise _bad(node, f"a weight is for node {nodes[k]} of tree {trees[k]}, which the model does not have")
    order = np.argsort(g, kind="stable")
    ptr = np.zeros(len(f.mode) + 1, np.int64)
    np.cumsum(np.bincount(g, minlength=len(f.mode)), out=ptr[1:])
    leaves = Leaves(ptr, ids[order].astype(np.int32), np.ascontiguousarray(w[order]))
    node.__dict__["_leaves"] = leaves
    return leaves


def _base(node: Node, width: int) -> np.ndarray:
    base = _float_attr(node, "base_values", None)
    if base.size == 0:
        return np.zeros(width)
    if base.size == 1:
        return np.full(width, base[0])
    if base.size < width:
        raise _bad(node, f"base_values has {base.size} entries for {width} classes or targets")
    return np.ascontiguousarray(base[:width])


def _transform(node: Node) -> int:
    name = node.attrs.get("post_transform", "NONE")
    if name not in TRANSFORMS:
        raise UnsupportedModel(f"post_transform {name!r} is not supported")
    return TRANSFORMS[name]


def _tree_input(node: Node, x: TensorInfo) -> tuple[int, int]:
    n, features = _features(node, x)
    if x.dtype.name not in _X_TYPES:
        raise _bad(node, f"input type {x.dtype} is not one of {', '.join(_X_TYPES)}")
    f = forest(node)
    if f.features > features:
        raise _bad(node, f"the trees test feature {f.features - 1} but the input has {features}")
    f.thresholds(_walk_type(node, x))  # made now, while the model loads
    if _parallel(n):
        _walk_parallel.ensure()  # compiled while the model loads (its planned batch), never on a request
    return n, features


def _parallel(n: int) -> bool:
    """Whether a batch of n is walked in parallel: the kernels may use threads (--threads) and the
    batch has blocks to share."""
    return jit.threads() > 1 and n >= 2 * _BLOCK


def _walk_type(node: Node, x: TensorInfo) -> np.dtype:
    """float32 inputs are walked as they are against float thresholds; anything else as float64."""
    return F32 if x.dtype == F32 and not forest(node).doubles else F64


def _x_scratch(node: Node, x: TensorInfo) -> list[TensorInfo]:
    """The float64 copy of an input _walk does not take as it is."""
    n, features = _features(node, x)
    return [] if x.dtype == _walk_type(node, x) else [TensorInfo(F64, (n, features))]


def _walker(x: TensorInfo):
    """The parallel walk for batches it serves (compiled at load by _tree_input), else the serial one."""
    n, _ = _features(None, x)
    return _walk_parallel.fn if _parallel(n) and _walk_parallel.fn is not None else _walk.ensure()


def _x(i, o, k: int, features: int) -> np.ndarray:
    """The input as _walk takes it: itself, or copied into its scratch o[k]."""
    x = i[0].reshape(-1, features)
    if len(o) > k:
        np.copyto(o[k], x, casting="unsafe")
        return o[k]
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


def _classes(node: Node) -> tuple[np.ndarray, list, int]:
    labels = np.asarray(_labels(node), np.int64)
    if not len(labels):
        raise _bad(node, "the classifier has no class labels")
    ids = _int_attr(node, "class_ids", None)
    if ids.size and (ids.min() < 0 or ids.max() >= max(len(labels), 2)):  # bounds the score rows
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): class_ids must index its "
                              f"{len(labels)} class labels, got {int(ids.max() if ids.max() >= 0 else ids.min())}")
    classes = max(len(labels), int(ids.max()) + 1 if ids.size else 0)
    return labels, ids, classes


def _tree_classifier_infer(node, ins):
    n, _ = _tree_input(node, ins[0])
    labels, _, classes = _classes(node)
    _leaves(node, forest(node), "class", classes)
    return [TensorInfo(I64, (n,)), TensorInfo(F32, (n, len(labels)))]


def _tree_classifier_scratch(node, ins, outs):
    n, _ = _features(node, ins[0])
    return [TensorInfo(F64, (n, max(_classes(node)[2], 2)))] + _x_scratch(node, ins[0])


def _build_tree_classifier(node, ins, outs):
    _, features = _tree_input(node, ins[0])
    f = forest(node)
    labels, ids, classes = _classes(node)
    leaf = _leaves(node, f, "class", classes)
    weights = _float_attr(node, "class_weights", None)
    binary = 0 if len(np.unique(ids)) != 1 else 1 if (weights >= 0).all() else 2
    width = max(classes, 2) if binary else classes
    base = np.zeros(width)
    base[:classes] = _base(node, classes)
    transform = _transform(node)
    walk, classify = _walker(ins[0]), _classify.ensure()
    n_out = len(node.outputs)
    no_scores = np.empty((1, 0), np.float32)
    args = (f.nodes, f.thresholds(_walk_type(node, ins[0])), f.mode, f.plain, f.roots, f.depths, leaf.ptr, leaf.col,
            leaf.w, 0)

    def run(i, o):
        acc = o[n_out]
        walk(_x(i, o, n_out + 1, features), *args, acc)
        scores = o[1] if n_out > 1 else no_scores
        label = o[0].reshape(-1)
        classify(acc, base, width, binary, transform, labels, label, scores)
        if transform == TRANSFORMS["PROBIT"] and n_out > 1:
            scores[...] = post_transform("PROBIT", scores)

    return run


def _tree_regressor_infer(node, ins):
    n, _ = _tree_input(node, ins[0])
    targets = node.attrs.get("n_targets", 1)
    if not 1 <= targets <= MAX_TREE_NODES:
        raise _bad(node, f"n_targets must be 1 to {MAX_TREE_NODES}, got {targets}")
    _leaves(node, forest(node), "target", targets)
    if node.attrs.get("aggregate_function", "SUM") not in AGGREGATES:
        raise UnsupportedModel(f"node {node.name!r}: aggregate_function {node.attrs['aggregate_function']!r}")
    _transform(node)
    return [TensorInfo(F32, (n, targets))]


def _tree_regressor_scratch(node, ins, outs):
    n, _ = _features(node, ins[0])
    return [TensorInfo(F64, (n, node.attrs.get("n_targets", 1)))] + _x_scratch(node, ins[0])


def _build_tree_regressor(node, ins, outs):
    _, features = _tree_input(node, ins[0])
    f = forest(node)
    targets = node.attrs.get("n_targets", 1)
    leaf = _leaves(node, f, "target", targets)
    base = _base(node, targets)
    agg = AGGREGATES[node.attrs.get("aggregate_function", "SUM")]
    scale = 1.0 / max(len(f.roots), 1) if agg == AGGREGATES["AVERAGE"] else 1.0
    transform = _transform(node)
    walk, regress = _walker(ins[0]), _regress.ensure()
    args = (f.nodes, f.thresholds(_walk_type(node, ins[0])), f.mode, f.plain, f.roots, f.depths, leaf.ptr, leaf.col,
            leaf.w, agg)

    def run(i, o):
        acc, out = o[1], o[0].reshape(-1, targets)
        walk(_x(i, o, 2, features), *args, acc)
        regress(acc, base, scale, 0 if transform == TRANSFORMS["PROBIT"] else transform, out)
        if transform == TRANSFORMS["PROBIT"]:
            out[...] = post_transform("PROBIT", out)

    return run


register(OpDef("TreeEnsembleClassifier", _tree_classifier_infer, _build_tree_classifier,
               scratch=_tree_classifier_scratch, compiled=(_walk, _classify)), ML)
register(OpDef("TreeEnsembleRegressor", _tree_regressor_infer, _build_tree_regressor,
               scratch=_tree_regressor_scratch, compiled=(_walk, _regress)), ML)
