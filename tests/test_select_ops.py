"""Outputs whose size the data decides (NonZero, Compress, Unique, NonMaxSuppression): planned at their
largest, returned at their actual size, through the registry and the daemon; a detection head (TopK and
NMS) against onnxruntime; what memserve refuses about them."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.device import CpuDevice
from memserve.errors import InvalidArgument, UnsupportedModel
from memserve.model import CompileOptions, compile_model
from memserve.registry import Batching, LoadOptions, Registry

from models import graph_model, ort_run, run_local

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
rng = np.random.default_rng(0)


def check(model, feeds, **options):
    got, want = run_local(model, feeds, **options), ort_run(model, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-6)
    return got


@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_nonzero_at_every_density(density):
    model = graph_model([helper.make_node("NonZero", ["x"], ["y"])], [("x", F, [3, 4])], [("y", I64, [2, "n"])])
    x = (rng.random((3, 4)) < density).astype(np.float32)
    assert check(model, {"x": x})[0].shape == (2, int(x.astype(bool).sum()))


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_compress(axis):
    attrs = {} if axis is None else {"axis": axis}
    model = graph_model([helper.make_node("Compress", ["x", "c"], ["y"], **attrs)], [("x", F, [3, 4]), ("c", B, [3])],
                        [("y", F, ["n"] if axis is None else ["a", "b"])])
    check(model, {"x": rng.standard_normal((3, 4)).astype(np.float32), "c": np.array([True, False, True])})


@pytest.mark.parametrize("sorted_", [0, 1])
def test_unique_with_every_output(sorted_):
    outs = [("y", F, ["n"]), ("idx", I64, ["n"]), ("inv", I64, [8]), ("cnt", I64, ["n"])]
    model = graph_model([helper.make_node("Unique", ["x"], [n for n, _, _ in outs], sorted=sorted_)],
                        [("x", F, [8])], outs, opset=11)
    check(model, {"x": np.array([3, 1, 3, 2, 1, 1, 5, 0], np.float32)})


def detection_head(n=20, k=8):
    """Scores -> TopK (the k best, an output) and boxes + scores -> NonMaxSuppression (selected indices)."""
    nodes = [helper.make_node("TopK", ["flat", "k"], ["top", "top_idx"]),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "floor"], ["picked"])]
    w = {"k": np.array([k], np.int64), "max_out": np.array(5, np.int64), "iou": np.array(0.4, np.float32),
         "floor": np.array(0.2, np.float32)}
    return graph_model(nodes, [("flat", F, [n]), ("boxes", F, [1, n, 4]), ("scores", F, [1, 2, n])],
                       [("top", F, [k]), ("top_idx", I64, [k]), ("picked", I64, ["m", 3])], w)


def boxes_and_scores(n=20, seed=0):
    r = np.random.default_rng(seed)
    corner = r.random((1, n, 2)) * 10
    boxes = np.concatenate([corner, corner + 1 + r.random((1, n, 2)) * 3], axis=2).astype(np.float32)
    scores = r.random((1, 2, n)).astype(np.float32)
    return {"flat": scores[0, 0].copy(), "boxes": boxes, "scores": scores}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_detection_head_matches_onnxruntime(seed):
    check(detection_head(), boxes_and_scores(seed=seed))


def test_no_box_above_the_threshold_gives_an_empty_answer_through_the_daemon(client):
    feeds = boxes_and_scores()
    feeds["scores"] = np.zeros_like(feeds["scores"])  # nothing above 0.2
    m = client.load(detection_head(), name="det")
    out = client.execute(m, feeds)
    assert out["picked"].shape == (0, 3) and out["picked"].dtype == np.int64
    client.unload(m)


def test_a_data_dependent_output_that_feeds_another_node_is_refused():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Transpose", ["nz"], ["y"])]
    model = graph_model(nodes, [("x", F, [3])], [("y", I64, ["n", 1])])
    with pytest.raises(UnsupportedModel, match="size that depends on the data"):
        compile_model(model, CompileOptions())


def test_dynamic_batching_is_refused_for_data_dependent_outputs():
    model = graph_model([helper.make_node("NonZero", ["x"], ["y"])], [("x", F, ["N", 4])], [("y", I64, [2, "n"])])
    reg = Registry(CpuDevice(1 << 26))
    try:
        with pytest.raises(InvalidArgument, match="size its data decides"):
            reg.load(model, LoadOptions(name="m", max_batch=4, batching=Batching(0, ())))
    finally:
        reg.close()
