"""The ai.onnx.ml ops scikit-learn models export to (through skl2onnx).

Trees are evaluated for all samples and all trees at once: every tree's
nodes live in flat arrays, a (samples, trees) array of node indices steps
down one level per iteration, and a dense (nodes, classes) matrix of leaf
weights turns the final indices into scores. Outputs follow onnxruntime's
conventions, including the binary-classifier special cases.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from ..errors import InvalidArgument, UnsupportedModel
from . import Node, OpDef, TensorInfo, register

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


def _build_linear_classifier(node, ins, outs):
    _, f = _features(node, ins[0])
    coef = np.asarray(node.attrs["coefficients"], np.float32).reshape(-1, f).T
    intercepts = np.asarray(node.attrs.get("intercepts", [0.0] * coef.shape[1]), np.float32)
    labels = np.asarray(_labels(node) or range(coef.shape[1]), np.int64)
    transform = node.attrs.get("post_transform", "NONE")
    binary = coef.shape[1] == 1 and len(labels) == 2

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


register(OpDef("LinearClassifier", _linear_classifier_infer, _build_linear_classifier), ML)
register(OpDef("LinearRegressor", _linear_regressor_infer, _build_linear_regressor), ML)


# -- tree ensembles -------------------------------------------------------------------

MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4, "BRANCH_NEQ": 5, "LEAF": 6}
COMPARE = (np.less_equal, np.less, np.greater_equal, np.greater, np.equal, np.not_equal)


@dataclass
class Forest:
    feature: np.ndarray  # per node
    threshold: np.ndarray
    mode: np.ndarray
    true_next: np.ndarray  # global index of the child taken when the test holds
    false_next: np.ndarray
    nan_true: np.ndarray  # a missing value (NaN) takes the true branch
    roots: np.ndarray  # global index of each tree's root
    depth: int
    key: dict[tuple[int, int], int]  # (tree id, node id) -> global index
    single_mode: int | None = None  # the one test all branches use, if they do
    any_nan_true: bool = False

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """(samples, trees) global indices of the leaf each sample reaches in each tree."""
        idx = np.broadcast_to(self.roots, (x.shape[0], len(self.roots))).copy()
        rows = np.arange(x.shape[0])[:, None]
        for _ in range(self.depth):
            leaf = self.mode[idx] == MODES["LEAF"]
            if leaf.all():  # every sample reached a leaf in every tree
                break
            v = x[rows, self.feature[idx]]
            t = self.threshold[idx]
            if self.single_mode is not None:  # scikit-learn trees: every test is BRANCH_LEQ
                go = COMPARE[self.single_mode](v, t)
            else:
                m = self.mode[idx]
                go = np.select([m == k for k in range(6)], [f(v, t) for f in COMPARE], False)
            if self.any_nan_true:
                go |= np.isnan(v) & self.nan_true[idx]
            idx = np.where(leaf, idx, np.where(go, self.true_next[idx], self.false_next[idx]))
        return idx


def _values(node: Node, name: str):
    return node.attrs.get(name, node.attrs.get(f"{name}_as_tensor"))


def forest(node: Node) -> Forest:
    a = node.attrs
    trees, ids = np.asarray(a["nodes_treeids"]), np.asarray(a["nodes_nodeids"])
    key = {(int(t), int(n)): g for g, (t, n) in enumerate(zip(trees, ids))}
    modes = np.array([MODES[m.decode() if isinstance(m, bytes) else m] for m in a["nodes_modes"]], np.int8)
    tnext = np.array([key.get((int(t), int(n)), g) for g, (t, n) in enumerate(zip(trees, a["nodes_truenodeids"]))])
    fnext = np.array([key.get((int(t), int(n)), g) for g, (t, n) in enumerate(zip(trees, a["nodes_falsenodeids"]))])
    nan_true = np.asarray(a.get("nodes_missing_value_tracks_true", [0] * len(ids)), bool)
    tree_list = sorted(set(int(t) for t in trees))
    first: dict[int, int] = {}
    for g, t in enumerate(trees.tolist()):
        first.setdefault(int(t), g)
    roots = np.array([first[tid] for tid in tree_list])
    threshold = np.asarray(_values(node, "nodes_values"), np.float64)
    if "nodes_values_as_tensor" not in a:
        threshold = threshold.astype(np.float32)
    f = Forest(np.asarray(a["nodes_featureids"], np.int64), threshold, modes, tnext, fnext, nan_true, roots, 0, key)
    # Depth: the longest path from a root, so that evaluation knows when to stop.
    f.depth = _depth(node, modes != MODES["LEAF"], tnext, fnext, roots)
    tests = set(np.unique(modes[modes != MODES["LEAF"]]).tolist())
    f.single_mode = tests.pop() if len(tests) == 1 else None
    f.any_nan_true = bool(nan_true.any())
    return f


def _depth(node: Node, inner: np.ndarray, tnext: np.ndarray, fnext: np.ndarray, roots: np.ndarray) -> int:
    """Longest root-to-leaf path, visiting each tree node once (a hostile chain of 10^5 nodes stays linear);
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
    return int(depth[roots].max(initial=0))


def _leaf_matrix(node: Node, f: Forest, prefix: str, width: int) -> np.ndarray:
    """Dense (nodes, width) weights: what each leaf adds to each class or target."""
    w = np.zeros((len(f.feature), width), np.float64)
    weights = _values(node, f"{prefix}_weights")
    for t, n, c, v in zip(node.attrs[f"{prefix}_treeids"], node.attrs[f"{prefix}_nodeids"],
                          node.attrs[f"{prefix}_ids"], weights):
        w[f.key[int(t), int(n)], int(c)] += v
    return w


def _tree_classifier_infer(node, ins):
    n, _ = _features(node, ins[0])
    return [TensorInfo(I64, (n,)), TensorInfo(F32, (n, len(_labels(node))))]


def _build_tree_classifier(node, ins, outs):
    f = forest(node)
    labels = np.asarray(_labels(node), np.int64)
    ids = node.attrs["class_ids"]
    if min(ids) < 0 or max(ids) >= max(len(labels), 2):  # the leaf matrix is (nodes, classes): bound it
        raise InvalidArgument(f"node {node.name!r} ({node.op_type}): class_ids must index its "
                              f"{len(labels)} class labels, got {max(ids)}")
    classes = max(len(labels), int(max(ids)) + 1)
    leaf = _leaf_matrix(node, f, "class", classes)
    base = np.asarray(_values(node, "base_values") or [0.0] * classes, np.float64)
    transform = node.attrs.get("post_transform", "NONE")
    binary = len(set(node.attrs["class_ids"])) == 1

    def run(i, o):
        x = np.asarray(i[0], np.float32).reshape(-1, ins[0].shape[-1])
        scores = (base + leaf[f.leaves(x)].sum(axis=1)).astype(np.float32)
        if binary:  # one score column stands for both classes
            scores = np.stack([scores[:, 0], scores[:, 0]], 1) if scores.shape[1] == 1 else scores
            scores[:, 1] = scores[:, 0]
            scores[:, 0] = 1 - scores[:, 1] if transform in ("NONE", "PROBIT") else -scores[:, 1]
        scores = post_transform(transform, scores)
        if len(labels) == 1:
            label = np.where(np.argmax(scores, axis=1) == 1, labels[0], 0)
        else:
            label = labels[np.argmax(scores, axis=1)]
        _store(o, label, scores[:, : o[1].shape[1]] if len(o) > 1 else scores)

    return run


def _tree_regressor_infer(node, ins):
    n, _ = _features(node, ins[0])
    return [TensorInfo(F32, (n, node.attrs.get("n_targets", 1)))]


def _build_tree_regressor(node, ins, outs):
    f = forest(node)
    targets = node.attrs.get("n_targets", 1)
    leaf = _leaf_matrix(node, f, "target", targets)
    base = np.asarray(_values(node, "base_values") or [0.0] * targets, np.float64)
    agg = node.attrs.get("aggregate_function", "SUM")
    transform = node.attrs.get("post_transform", "NONE")

    def run(i, o):
        x = np.asarray(i[0], np.float32).reshape(-1, ins[0].shape[-1])
        per_tree = leaf[f.leaves(x)]  # (samples, trees, targets)
        if agg == "SUM":
            r = per_tree.sum(axis=1)
        elif agg == "AVERAGE":
            r = per_tree.mean(axis=1)
        elif agg == "MIN":
            r = per_tree.min(axis=1)
        elif agg == "MAX":
            r = per_tree.max(axis=1)
        else:
            raise UnsupportedModel(f"node {node.name!r}: aggregate_function {agg!r}")
        np.copyto(o[0], post_transform(transform, r + base), casting="unsafe")

    return run


register(OpDef("TreeEnsembleClassifier", _tree_classifier_infer, _build_tree_classifier), ML)
register(OpDef("TreeEnsembleRegressor", _tree_regressor_infer, _build_tree_regressor), ML)
