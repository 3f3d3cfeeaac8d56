"""The real-model suite (tests/zoo.py) against onnxruntime, and its plans against their lower bound."""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("rapidocr_onnxruntime")

from memserve.model import CompileOptions, compile_model  # noqa: E402

from models import ort_run, run_local  # noqa: E402
from zoo import SUITE, build  # noqa: E402


@pytest.mark.parametrize("name", list(SUITE))
def test_matches_onnxruntime_in_planned_memory(name):
    data, feeds = build(name)
    shapes = {k: v.shape for k, v in feeds.items()}
    plan = compile_model(data, CompileOptions(input_shapes=shapes))
    assert plan.work_size <= 1.02 * plan.work_lower_bound
    got = run_local(data, feeds, input_shapes=shapes)
    want = ort_run(data, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(w).max())))


def test_torchscript_transformer_runs_as_a_few_dozen_kernels():
    data, _ = build("transformer (torchscript)")
    import onnx

    nodes = len(onnx.load_from_string(data).graph.node)
    plan = compile_model(data, CompileOptions(max_batch=4))
    kernels = [s for s in plan.steps if s.phase == "run" and not s.op.alias]
    assert nodes > 300 and len(kernels) < 80


@pytest.mark.parametrize("name", ["transformer (torchscript)", "transformer (dynamo)", "small cnn"])
def test_smaller_batches_run_on_the_max_batch_plan(name):
    data, feeds = build(name)
    (key, x), = feeds.items()
    rng = np.random.default_rng(3)
    for n in (1, 3, 4):
        xb = rng.standard_normal((n,) + x.shape[1:]).astype(np.float32)
        got = run_local(data, {key: xb}, max_batch=4)[0]
        np.testing.assert_allclose(got, ort_run(data, {key: xb})[0], rtol=1e-4, atol=1e-5)
