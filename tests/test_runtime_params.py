"""Runtime parameters (issue 12): an input that feeds a parameter which never changes a shape (Clip's bounds,
Trilu's k, CumSum's axis) may be a graph input: the model loads, and each request's value is used."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.device import CpuDevice
from memserve.errors import InvalidArgument, UnsupportedModel
from memserve.model import compile_model
from memserve.registry import LoadOptions, Registry

from models import graph_model, ort_run

F, I64 = TensorProto.FLOAT, TensorProto.INT64


@pytest.fixture
def reg():
    r = Registry(CpuDevice(1 << 26))
    yield r
    r.close()
    assert r.device.used() == 0


def run(reg, model, feeds):
    reg.load(model, LoadOptions(name="m", replace=True))
    return [np.frombuffer(o.data, o.dtype).reshape(o.shape) for o in reg.execute("m", feeds).outputs]


def test_clip_bounds_from_each_request(reg):
    model = graph_model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
                        [("x", F, [6]), ("lo", F, []), ("hi", F, [])], [("y", F, [6])])
    x = np.array([-3, -1, 0, 1, 2, 9], np.float32)
    for lo, hi in [(-1, 1), (0, 5), (3, 1), (-np.inf, np.inf)]:  # lo > hi: everything is hi
        feeds = {"x": x, "lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}
        np.testing.assert_array_equal(run(reg, model, feeds)[0], ort_run(model, feeds)[0])


def test_trilu_k_from_each_request(reg):
    model = graph_model([helper.make_node("Trilu", ["x", "k"], ["y"], upper=0)],
                        [("x", F, [2, 3, 4]), ("k", I64, [])], [("y", F, [2, 3, 4])])
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    for k in [0, 1, -2, 7, -(1 << 62), (1 << 62)]:
        feeds = {"x": x, "k": np.array(k, np.int64)}
        want = np.tril(x, int(np.clip(k, -8, 8)))
        np.testing.assert_array_equal(run(reg, model, feeds)[0], want)
        if abs(k) < 100:
            np.testing.assert_array_equal(run(reg, model, feeds)[0], ort_run(model, feeds)[0])


def test_cumsum_axis_from_each_request_and_a_bad_one_fails_only_its_request(reg):
    model = graph_model([helper.make_node("CumSum", ["x", "axis"], ["y"], reverse=1)],
                        [("x", F, [3, 4]), ("axis", I64, [])], [("y", F, [3, 4])])
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for axis in (0, 1, -1, -2):
        feeds = {"x": x, "axis": np.array(axis, np.int64)}
        np.testing.assert_array_equal(run(reg, model, feeds)[0], ort_run(model, feeds)[0])
    with pytest.raises(InvalidArgument, match=r"CumSum.*axis 2 out of range"):
        reg.execute("m", {"x": x, "axis": np.array(2, np.int64)})
    assert reg.execute("m", {"x": x, "axis": np.array(0, np.int64)}).outputs[0].shape == (3, 4)


def test_a_parameter_that_would_change_shapes_is_still_refused_with_the_node_named():
    model = graph_model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                        [("x", F, [6]), ("shape", I64, [2])], [("y", F, [2, 3])])
    with pytest.raises(UnsupportedModel, match=r"node .* \(Reshape\): input 'shape' must be known when the model loads"):
        compile_model(model)


def test_a_bound_that_is_not_one_value_is_refused_at_load():
    model = graph_model([helper.make_node("Clip", ["x", "lo"], ["y"])], [("x", F, [6]), ("lo", F, [2])],
                        [("y", F, [6])])
    with pytest.raises(InvalidArgument, match="min must be one value"):
        compile_model(model)
