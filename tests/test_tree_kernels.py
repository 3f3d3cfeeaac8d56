"""Tree ensembles (ai.onnx.ml TreeEnsembleClassifier/Regressor, the compiled walk in kernels/ml.py)
against onnxruntime: scikit-learn models through skl2onnx, and hand-built trees for the modes,
missing-value tracks, aggregates and transforms scikit-learn does not emit; then hostile trees,
refused when the model loads."""
import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper

from models import ort_run, run_local

ML = "ai.onnx.ml"
DTYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.int64: TensorProto.INT64,
          np.int32: TensorProto.INT32}
BATCHES = [1, 3, 4, 7, 64]  # the walk goes four samples at a time: tails and a single sample


def model(op: str, attrs: dict, features: int, dtype=np.float32, outputs=None, ml_opset=3, graph_outputs=None) -> bytes:
    if outputs is None:
        outputs = [("label", TensorProto.INT64, ["N"]), ("scores", TensorProto.FLOAT, ["N", None])] \
            if op == "TreeEnsembleClassifier" else [("y", TensorProto.FLOAT, ["N", None])]
    node = helper.make_node(op, ["x"], [n for n, _, _ in outputs], domain=ML, **attrs)
    g = helper.make_graph([node], "trees", [helper.make_tensor_value_info("x", DTYPES[dtype], ["N", features])],
                          [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs[:graph_outputs]])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ML, ml_opset)])
    m.ir_version = 8
    return m.SerializeToString()


def check(data: bytes, x: np.ndarray, rtol=1e-5, atol=1e-6):
    got = run_local(data, {"x": x}, max_batch=max(len(x), 1))
    want = ort_run(data, {"x": x})
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if g.dtype.kind == "i":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


# -- scikit-learn -----------------------------------------------------------------------------------

sklearn = pytest.importorskip("sklearn")
from skl2onnx import to_onnx  # noqa: E402
from sklearn import ensemble, tree  # noqa: E402

rng = np.random.default_rng(3)
X = rng.standard_normal((200, 6)).astype(np.float32)
Y_BIN = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64)
Y_MULTI = np.digitize(X[:, 0] + 0.5 * X[:, 3], [-0.8, 0.0, 0.8]).astype(np.int64)
Y_REG = (X[:, 0] * 2 + np.sin(X[:, 1]) + X[:, 2] * X[:, 3]).astype(np.float32)
Y_REG2 = np.stack([Y_REG, X[:, 4] - X[:, 5], X[:, 0] ** 2], 1).astype(np.float32)

SKLEARN = {
    "forest-binary": (ensemble.RandomForestClassifier(n_estimators=12, max_depth=6, random_state=0), Y_BIN),
    "forest-multi": (ensemble.RandomForestClassifier(n_estimators=12, max_depth=7, random_state=0), Y_MULTI),
    "extra-trees-multi": (ensemble.ExtraTreesClassifier(n_estimators=9, random_state=0), Y_MULTI),
    "boosting-binary": (ensemble.GradientBoostingClassifier(n_estimators=15, random_state=0), Y_BIN),
    "boosting-multi": (ensemble.GradientBoostingClassifier(n_estimators=8, max_depth=4, random_state=0), Y_MULTI),
    "stumps-binary": (ensemble.GradientBoostingClassifier(n_estimators=20, max_depth=1, random_state=0), Y_BIN),
    "stumps-forest": (ensemble.RandomForestClassifier(n_estimators=10, max_depth=1, random_state=0), Y_MULTI),
    "tree-unbalanced": (tree.DecisionTreeClassifier(random_state=0), Y_MULTI),  # grown until pure
    "tree-regressor": (tree.DecisionTreeRegressor(random_state=0), Y_REG),
    "forest-regressor": (ensemble.RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0), Y_REG),
    "forest-3-targets": (ensemble.RandomForestRegressor(n_estimators=8, max_depth=5, random_state=0), Y_REG2),
    "extra-trees-3-targets": (ensemble.ExtraTreesRegressor(n_estimators=6, max_depth=8, random_state=0), Y_REG2),
    "boosting-regressor": (ensemble.GradientBoostingRegressor(n_estimators=20, random_state=0), Y_REG),
    "stumps-regressor": (ensemble.GradientBoostingRegressor(n_estimators=10, max_depth=1, random_state=0), Y_REG),
}


@pytest.fixture(scope="module")
def sklearn_models():
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (est, y) in SKLEARN.items():
            est.fit(X, y)
            opts = {"zipmap": False} if hasattr(est, "predict_proba") else None
            m = to_onnx(est, X[:1], options=opts, target_opset={"": 17, ML: 3})
            m.graph.input[0].name = "x"
            for n in m.graph.node:
                n.input[:] = ["x" if i == "X" else i for i in n.input]
            out[name] = m.SerializeToString()
    return out


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", sorted(SKLEARN))
def test_sklearn_trees_match_onnxruntime(sklearn_models, name, batch):
    x = rng.standard_normal((batch, 6)).astype(np.float32)
    x[0, :2] = X[5, :2]  # a threshold is halfway between training values: land on some exactly too
    check(sklearn_models[name], x)


# -- hand-built trees ---------------------------------------------------------------------------------

MODES = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]


def random_trees(seed: int, trees: int, features: int, depth: int, modes, width: int, missing=False,
                 leaf_prob=0.3, one_class=None) -> dict:
    """Random (unbalanced) trees; thresholds are small integers so that equality tests hit."""
    r = np.random.default_rng(seed)
    a = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
                         "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true")}
    w = {k: [] for k in ("treeids", "nodeids", "ids", "weights")}
    for t in range(trees):
        count = 0

        def grow(level):
            nonlocal count
            me = count
            count += 1
            entry = len(a["nodes_nodeids"])
            for k in a:
                a[k].append(0)
            a["nodes_treeids"][entry], a["nodes_nodeids"][entry] = t, me
            a["nodes_values"][entry] = float(r.integers(-2, 3)) + (0.5 if r.random() < 0.3 else 0.0)
            a["nodes_featureids"][entry] = int(r.integers(features))
            if level >= depth or (level > 0 and r.random() < leaf_prob):
                a["nodes_modes"][entry] = "LEAF"
                a["nodes_values"][entry] = 0.0  # onnxruntime reads a weightless leaf's value as its weight
                for c in ([one_class] if one_class is not None else range(width)):
                    if r.random() < 0.8 or one_class is not None:
                        w["treeids"].append(t)
                        w["nodeids"].append(me)
                        w["ids"].append(c)
                        w["weights"].append(float(r.normal()))
                return me
            a["nodes_modes"][entry] = str(r.choice(modes))
            a["nodes_missing_value_tracks_true"][entry] = int(missing and r.random() < 0.5)
            a["nodes_truenodeids"][entry] = grow(level + 1)
            a["nodes_falsenodeids"][entry] = grow(level + 1)
            return me

        grow(0)
    if not missing:
        del a["nodes_missing_value_tracks_true"]
    return a, w


def inputs(batch: int, features: int, dtype=np.float32, nans=False, seed=0) -> np.ndarray:
    r = np.random.default_rng(seed)
    x = r.integers(-3, 4, (batch, features)).astype(np.float64) + r.choice([0.0, 0.5, 0.25], (batch, features))
    if nans:
        x[r.random(x.shape) < 0.2] = np.nan
    return x.astype(dtype)


def regressor(a, w, targets=1, **attrs) -> dict:
    return {**a, "target_treeids": w["treeids"], "target_nodeids": w["nodeids"], "target_ids": w["ids"],
            "target_weights": w["weights"], "n_targets": targets, **attrs}


def classifier(a, w, labels, **attrs) -> dict:
    return {**a, "class_treeids": w["treeids"], "class_nodeids": w["nodeids"], "class_ids": w["ids"],
            "class_weights": w["weights"], "classlabels_int64s": labels, **attrs}


@pytest.mark.parametrize("batch", [1, 6, 33])
@pytest.mark.parametrize("mode", MODES + ["mixed"])
def test_each_branch_mode(mode, batch):
    a, w = random_trees(1, 7, 4, 5, MODES if mode == "mixed" else [mode], 2)
    check(model("TreeEnsembleRegressor", regressor(a, w, 2), 4), inputs(batch, 4))


@pytest.mark.parametrize("batch", [1, 5, 40])
@pytest.mark.parametrize("modes", [["BRANCH_LEQ"], MODES])
def test_missing_values_follow_their_track(modes, batch):
    a, w = random_trees(2, 6, 3, 5, modes, 1, missing=True)
    check(model("TreeEnsembleRegressor", regressor(a, w), 3), inputs(batch, 3, nans=True))


@pytest.mark.parametrize("agg", ["SUM", "AVERAGE", "MIN", "MAX"])
@pytest.mark.parametrize("batch", [1, 9])
def test_aggregates(agg, batch):
    a, w = random_trees(3, 5, 4, 4, MODES, 3)
    base = [0.5, -1.0, 2.0]
    check(model("TreeEnsembleRegressor", regressor(a, w, 3, aggregate_function=agg, base_values=base), 4),
          inputs(batch, 4))


@pytest.mark.parametrize("transform", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"])
@pytest.mark.parametrize("classes", [3, 5])
def test_multiclass_transforms(transform, classes):
    a, w = random_trees(4, 8, 5, 5, MODES, classes)
    attrs = classifier(a, w, list(range(10, 10 + classes)), post_transform=transform,
                       base_values=list(np.linspace(-0.5, 0.5, classes)))
    check(model("TreeEnsembleClassifier", attrs, 5), inputs(21, 5))


@pytest.mark.parametrize("base", [None, [0.3]])
@pytest.mark.parametrize("transform", ["NONE", "LOGISTIC"])
@pytest.mark.parametrize("positive", [True, False])
def test_binary_with_one_score_column(positive, transform, base):
    """One class scored: onnxruntime's binary case ([1 - s, s] or [-s, s], the label from s alone)."""
    a, w = random_trees(5, 6, 3, 4, ["BRANCH_LEQ"], 2, one_class=0)
    if positive:
        w["weights"] = [abs(v) / 10 for v in w["weights"]]
    attrs = classifier(a, w, [0, 1], post_transform=transform, **({"base_values": base} if base else {}))
    check(model("TreeEnsembleClassifier", attrs, 3), inputs(13, 3))


def test_classifier_with_its_scores_unused():
    a, w = random_trees(6, 4, 3, 4, MODES, 3)
    check(model("TreeEnsembleClassifier", classifier(a, w, [1, 2, 3]), 3, graph_outputs=1), inputs(10, 3))


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.int32])
def test_other_input_types(dtype):
    """onnxruntime has no integer kernels: those inputs are checked against it on the same values as floats."""
    a, w = random_trees(7, 5, 3, 5, MODES, 3)
    x = inputs(17, 3, dtype)
    ort_type = np.float64 if dtype == np.float64 else np.float32
    # (3 classes: with 2 scored classes onnxruntime labels by the second score's sign, as 0 or 1, not the labels)
    for op, attrs in (("TreeEnsembleRegressor", regressor(a, w, 3)),
                      ("TreeEnsembleClassifier", classifier(a, w, [5, 6, 7]))):
        got = run_local(model(op, attrs, 3, dtype), {"x": x}, max_batch=len(x))
        want = ort_run(model(op, attrs, 3, ort_type), {"x": x.astype(ort_type)})
        for g, o in zip(got, want):
            assert g.dtype == o.dtype and g.shape == o.shape
            np.testing.assert_allclose(g, o, rtol=1e-5, atol=1e-6)


def test_double_thresholds_as_tensors():
    a, w = random_trees(8, 5, 3, 5, MODES, 1)
    values = np.asarray(a.pop("nodes_values"), np.float64) + 1e-9  # not float32s
    a["nodes_values_as_tensor"] = helper.make_tensor("v", TensorProto.DOUBLE, [len(values)], values)
    x = inputs(12, 3, np.float64)
    check(model("TreeEnsembleRegressor", regressor(a, w), 3, np.float64), x)


def test_leaf_only_trees():
    a = {"nodes_treeids": [0, 1], "nodes_nodeids": [0, 0], "nodes_featureids": [0, 0], "nodes_modes": ["LEAF"] * 2,
         "nodes_values": [0.0, 0.0], "nodes_truenodeids": [0, 0], "nodes_falsenodeids": [0, 0]}
    w = {"treeids": [0, 1], "nodeids": [0, 0], "ids": [0, 0], "weights": [1.5, -0.25]}
    for batch in (1, 5):
        check(model("TreeEnsembleRegressor", regressor(a, w, base_values=[3.0]), 2), inputs(batch, 2))


def test_a_deep_chain_stops_at_the_leaf():
    """One 3000-deep chain (a leaf hanging off every level) beside a stump: samples stop early."""
    depth = 3000
    n = 2 * depth + 1
    a = {"nodes_treeids": [0] * n, "nodes_nodeids": list(range(n)), "nodes_featureids": [0] * n,
         "nodes_modes": ["BRANCH_LEQ"] * depth + ["LEAF"] * (depth + 1),
         "nodes_values": [float(k) for k in range(depth)] + [0.0] * (depth + 1),
         "nodes_falsenodeids": [k + 1 if k < depth - 1 else 2 * depth for k in range(depth)] + [0] * (depth + 1),
         "nodes_truenodeids": [depth + k for k in range(depth)] + [0] * (depth + 1)}
    w = {"treeids": [0] * (depth + 1), "nodeids": list(range(depth, n)), "ids": [0] * (depth + 1),
         "weights": [float(k) for k in range(depth + 1)]}
    x = np.array([[-1.0], [5.5], [2999.0], [1e9]], np.float32)
    check(model("TreeEnsembleRegressor", regressor(a, w), 1), x)


# -- hostile trees: refused while the model loads -----------------------------------------------------

def load_error(data: bytes, features: int = 2):
    from memserve.device import CpuDevice
    from memserve.errors import InvalidArgument
    from memserve.registry import LoadOptions, Registry

    reg = Registry(CpuDevice(1 << 30))
    try:
        with pytest.raises(InvalidArgument) as exc:
            reg.load(data, LoadOptions(name="m", max_batch=4))
        return str(exc.value)
    finally:
        reg.close()


def stump(**over) -> dict:
    a = {"nodes_treeids": [0, 0, 0], "nodes_nodeids": [0, 1, 2], "nodes_featureids": [1, 0, 0],
         "nodes_modes": ["BRANCH_LEQ", "LEAF", "LEAF"], "nodes_values": [0.5, 0, 0],
         "nodes_truenodeids": [1, 0, 0], "nodes_falsenodeids": [2, 0, 0],
         "target_treeids": [0, 0], "target_nodeids": [1, 2], "target_ids": [0, 0], "target_weights": [1.0, 2.0], "n_targets": 1}
    a.update(over)
    return a


def test_a_valid_stump_loads():
    check(model("TreeEnsembleRegressor", stump(), 2), inputs(3, 2))


@pytest.mark.parametrize("over,match", [
    ({"nodes_truenodeids": [7, 0, 0]}, "does not have"),  # a branch to a node id the tree lacks
    ({"nodes_truenodeids": [0, 0, 0]}, "cycle"),  # a node that is its own child
    ({"nodes_modes": ["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"], "nodes_truenodeids": [1, 0, 0],
      "nodes_falsenodeids": [2, 2, 0]}, "cycle"),  # 0 -> 1 -> 0
    ({"nodes_treeids": [0, 0, 1]}, "does not have"),  # node 2 moved to another tree
    ({"target_treeids": [0, 5]}, "does not have"),  # a weight for a tree that does not exist
    ({"target_nodeids": [1, 99]}, "does not have"),
    ({"target_ids": [0, 3]}, "target_ids"),  # past n_targets
    ({"nodes_featureids": [2, 0, 0]}, "feature 2"),  # the input has features 0 and 1
    ({"nodes_featureids": [-1, 0, 0]}, "feature -1"),
    ({"nodes_nodeids": [0, 1, 1]}, "twice"),
    ({"nodes_values": [0.5, 0.0]}, "nodes_values"),  # lengths disagree
    ({"nodes_falsenodeids": [2, 0]}, "nodes_falsenodeids"),
    ({"target_weights": [1.0]}, "target_weights"),
    ({"nodes_modes": ["BRANCH_XOR", "LEAF", "LEAF"]}, "mode"),
])
def test_hostile_trees_are_refused_at_load(over, match):
    assert match in load_error(model("TreeEnsembleRegressor", stump(**over), 2))


def test_hostile_classifier_is_refused_at_load():
    a = stump()
    attrs = {k: v for k, v in a.items() if not k.startswith("target_") and k != "n_targets"}
    attrs.update(class_treeids=[0, 0], class_nodeids=[1, 2], class_ids=[0, 7], class_weights=[1.0, 1.0],
                 classlabels_int64s=[0, 1, 2])
    assert "class_ids" in load_error(model("TreeEnsembleClassifier", attrs, 2))


def test_huge_attribute_arrays_are_refused_at_load(monkeypatch):
    from memserve.kernels import ml

    monkeypatch.setattr(ml, "MAX_TREE_NODES", 2)
    assert "at most 2" in load_error(model("TreeEnsembleRegressor", stump(), 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_and_unaligned_inputs(sklearn_models, dtype):
    """A request's bytes are read-only, and an HTTP tensor may sit at any offset: the walk takes both."""
    a, w = random_trees(9, 5, 3, 5, ["BRANCH_LEQ"], 2)
    data = model("TreeEnsembleRegressor", regressor(a, w, 2), 3, dtype)
    x = inputs(9, 3, dtype)
    raw = np.frombuffer(b"\0" + x.tobytes(), np.uint8)[1:]  # read-only, off by one byte
    odd = raw.view(dtype).reshape(x.shape) if raw.ctypes.data % x.itemsize == 0 else \
        np.ndarray(x.shape, dtype, raw.data)
    assert not odd.flags.writeable
    np.testing.assert_allclose(run_local(data, {"x": odd}, max_batch=9)[0], ort_run(data, {"x": x})[0], rtol=1e-5)
    x.setflags(write=False)
    np.testing.assert_allclose(run_local(data, {"x": x}, max_batch=9)[0], ort_run(data, {"x": x})[0], rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 37, 64])
def test_parallel_walk_matches(sklearn_models, monkeypatch, batch):
    """With --threads 2 a batch of 32 samples and more is walked in blocks over threads."""
    from memserve.kernels import jit

    monkeypatch.setattr(jit, "_threads", 2)
    check(sklearn_models["forest-multi"], rng.standard_normal((batch, 6)).astype(np.float32))
    a, w = random_trees(10, 6, 3, 6, MODES, 2, missing=True)
    check(model("TreeEnsembleRegressor", regressor(a, w, 2), 3), inputs(batch, 3, nans=True))
    if batch >= 32:
        assert jit._all and any(k.__name__ == "_walk_parallel" and k.fn is not None for k in jit._all)
