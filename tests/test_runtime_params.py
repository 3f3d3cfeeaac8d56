"""Runtime parameters (issue 12): an input that feeds a parameter which never changes a shape (Clip's bounds,
Trilu's k, CumSum's axis) may be a graph input: the model loads, and each request's value is used."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InvalidArgument, UnsupportedModel
from memserve.model import compile_model
from memserve.registry import LoadOptions

from models import graph_model, ort_run

F, I64 = TensorProto.FLOAT, TensorProto.INT64


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


# -- parameters that shape tensors: planned with input_values, sent with each request ----------------

def reshape_model():
    return graph_model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                       [("x", F, [6]), ("shape", I64, [2])], [("y", F, ["a", "b"])])


def test_a_reshape_planned_with_input_values_runs_any_shape_that_fits(reg):
    reg.load(reshape_model(), LoadOptions(name="m", input_values={"shape": np.array([2, 3], np.int64)}))
    x = np.arange(6, dtype=np.float32)
    for shape in ([3, 2], [-1, 2], [6, 1], [2, 3]):
        out = reg.execute("m", {"x": x, "shape": np.array(shape, np.int64)}).outputs[0]
        assert out.shape == x.reshape(shape).shape
        np.testing.assert_array_equal(np.frombuffer(out.data, np.float32), x)
    with pytest.raises(InvalidArgument, match="cannot reshape"):
        reg.execute("m", {"x": x, "shape": np.array([4, 2], np.int64)})
    with pytest.raises(InvalidArgument, match="cannot reshape|cannot run"):
        reg.execute("m", {"x": x, "shape": np.array([-(1 << 62), 1 << 62], np.int64)})


def test_a_parameter_whose_shapes_outgrow_the_plan_names_the_bound_to_raise(reg):
    model = graph_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
                        [("x", F, [3, 5]), ("axes", I64, [1])], [("y", F, ["k"])], opset=18)
    reg.load(model, LoadOptions(name="m", input_values={"axes": np.array([1], np.int64)}))  # y: 3 floats
    x = np.ones((3, 5), np.float32)
    assert reg.execute("m", {"x": x, "axes": np.array([-1], np.int64)}).outputs[0].shape == (3,)
    with pytest.raises(InvalidArgument, match=r"grows to \(5,\).*larger max_batch, input_shapes or input_values"):
        reg.execute("m", {"x": x, "axes": np.array([0], np.int64)})


def test_a_range_limit_past_the_plan_is_refused_before_anything_is_allocated(reg):
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=F)]
    scalar = lambda v: np.array(v, np.int64)  # noqa: E731
    model = graph_model(nodes, [("start", I64, []), ("limit", I64, []), ("delta", I64, [])], [("y", F, ["n"])])
    reg.load(model, LoadOptions(name="m", input_values={"start": scalar(0), "limit": scalar(10), "delta": scalar(1)}))
    feeds = {"start": scalar(0), "limit": scalar(5), "delta": scalar(1)}
    np.testing.assert_array_equal(np.frombuffer(reg.execute("m", feeds).outputs[0].data, np.float32), np.arange(5))
    for limit in (11, 1 << 40):  # 2^40 elements would be 8 TB: refused from the shape, never computed
        with pytest.raises(InvalidArgument, match="past its planned"):
            reg.execute("m", {**feeds, "limit": scalar(limit)})


@pytest.mark.parametrize("values,match", [
    ({"nope": np.array([2, 3], np.int64)}, "not inputs of the model"),
    ({"shape": np.array([2, 3.5])}, r"must be int64 \[2\] like the input, got float64 \[2\]"),
    ({"shape": np.array([2, 2**70], object)}, r"must be int64 \[2\]"),
    ({"shape": np.array([True, False])}, r"must be int64 \[2\]"),
    ({"shape": np.array([2, 3, 1], np.int64)}, r"must be int64 \[2\]"),
    ({"shape": np.zeros(5000, np.int64)}, "at most 4096"),
])
def test_hostile_input_values_are_refused_at_load(reg, values, match):
    opts = LoadOptions(name="m", input_values=values)
    with pytest.raises(InvalidArgument, match=match):
        reg.load(reshape_model(), opts)


def test_input_values_take_any_type_and_shape_that_hold_the_same_numbers(reg):
    """[[2], [3]] as int32 for an int64 [2] input: what a client that does not know the input sends."""
    reg.load(reshape_model(), LoadOptions(name="m", input_values={"shape": np.array([[2], [3]], np.int32)}))
    out = reg.execute("m", {"x": np.arange(6, dtype=np.float32), "shape": np.array([3, 2], np.int64)})
    assert tuple(out.outputs[0].shape) == (3, 2)


def test_input_values_over_grpc_and_through_a_restart(client):
    from memserve.registry import LoadOptions as Options
    from memserve.state import _options, _options_dict

    m = client.load(reshape_model(), name="rs", input_values={"shape": np.array([2, 3], np.int64)})
    out = client.execute(m, {"x": np.arange(6, dtype=np.float32), "shape": np.array([3, 2], np.int64)})
    assert out["y"].shape == (3, 2)
    client.unload(m)
    saved = Options(name="rs", input_values={"shape": np.array([2, 3], np.int64)})
    back = _options(__import__("json").loads(__import__("json").dumps(_options_dict(saved))))
    np.testing.assert_array_equal(back.input_values["shape"], [2, 3])
    assert back.input_values["shape"].dtype == np.int64


def test_a_zero_past_the_input_rank_and_a_long_unknown_name_get_short_clear_refusals(reg):
    with pytest.raises(InvalidArgument, match="past the input's rank 1 has no dimension to copy"):
        reg.load(reshape_model(), LoadOptions(name="m", input_values={"shape": np.array([0, 0], np.int64)}))
    with pytest.raises(InvalidArgument, match="not inputs of the model") as exc:
        reg.load(reshape_model(), LoadOptions(name="m", input_values={"\x00" * 5000: np.array([2, 3], np.int64)}))
    assert len(exc.value.message) < 400


def test_input_values_out_of_the_inputs_range_are_refused_not_wrapped(reg):
    """Was: a uint64 2^64 - 1 for an int64 input wrapped to -1, a valid-looking Reshape dimension."""
    with pytest.raises(InvalidArgument, match="which int64 cannot hold"):
        reg.load(reshape_model(), LoadOptions(name="m", input_values={"shape": np.array([2**64 - 1, 3], np.uint64)}))
    with pytest.raises(InvalidArgument, match="which int64 cannot hold"):
        reg.load(reshape_model(), LoadOptions(name="m", input_values={"shape": np.array([1e30, 3.0])}))
