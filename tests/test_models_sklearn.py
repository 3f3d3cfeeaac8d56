"""scikit-learn models exported by skl2onnx: memserve against onnxruntime."""
import warnings

import numpy as np
import pytest

from models import ort_run, run_local

sklearn = pytest.importorskip("sklearn")
from skl2onnx import to_onnx  # noqa: E402
from sklearn import ensemble, linear_model, neural_network, pipeline, preprocessing  # noqa: E402

rng = np.random.default_rng(0)
X = rng.standard_normal((120, 5)).astype(np.float32)
y_bin = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
y_multi = np.digitize(X[:, 0] + 0.5 * X[:, 2], [-0.7, 0.0, 0.7]).astype(np.int64)
y_reg = (X @ rng.standard_normal(5) + np.sin(X[:, 0])).astype(np.float32)

CASES = {
    "logreg-binary": (linear_model.LogisticRegression(), y_bin),
    "logreg-multi": (linear_model.LogisticRegression(max_iter=500), y_multi),
    "scaled-logreg": (pipeline.make_pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression()), y_multi),
    "forest-binary": (ensemble.RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0), y_bin),
    "forest-multi": (ensemble.RandomForestClassifier(n_estimators=10, max_depth=6, random_state=0), y_multi),
    "boosting-binary": (ensemble.GradientBoostingClassifier(n_estimators=10, random_state=0), y_bin),
    "boosting-multi": (ensemble.GradientBoostingClassifier(n_estimators=10, random_state=0), y_multi),
    "mlp-classifier": (neural_network.MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0), y_multi),
    "forest-regressor": (ensemble.RandomForestRegressor(n_estimators=10, max_depth=6, random_state=0), y_reg),
    "linear-regressor": (linear_model.LinearRegression(), y_reg),
    "normalized-ridge": (pipeline.make_pipeline(preprocessing.Normalizer(), linear_model.Ridge()), y_reg),
    "mlp-regressor": (neural_network.MLPRegressor(hidden_layer_sizes=(16, 8), max_iter=300, random_state=0), y_reg),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sklearn_model_matches_onnxruntime(name):
    est, y = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
        model = to_onnx(est, X[:1], options={"zipmap": False} if hasattr(est, "predict_proba") else None,
                        target_opset=17).SerializeToString()
    feeds = {"X": X[:32]}
    got = run_local(model, feeds, max_batch=32)
    want = ort_run(model, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_zipmap_is_refused_with_the_fix():
    from memserve.errors import UnsupportedModel
    from memserve.model import compile_model

    est = linear_model.LogisticRegression().fit(X, y_bin)
    with pytest.raises(UnsupportedModel, match="zipmap"):
        compile_model(to_onnx(est, X[:1]).SerializeToString())
