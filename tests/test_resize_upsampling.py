"""Resize by whole factors (nearest, asymmetric, floor) is one broadcast copy; other factors take the
general path. Both against onnxruntime."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from models import F32, graph_model, ort_run, run_local


def resize_model(shape, scales=None, sizes=None, nearest_mode="floor"):
    inputs = ["x", "", "scales" if scales is not None else "", "sizes" if sizes is not None else ""]
    weights = {}
    if scales is not None:
        weights["scales"] = np.asarray(scales, np.float32)
    if sizes is not None:
        weights["sizes"] = np.asarray(sizes, np.int64)
    out = sizes if sizes is not None else [int(d * s) for d, s in zip(shape, scales)]
    node = helper.make_node("Resize", inputs[:4 if sizes is not None else 3], ["y"], mode="nearest",
                            coordinate_transformation_mode="asymmetric", nearest_mode=nearest_mode)
    return graph_model([node], [("x", F32, list(shape))], [("y", F32, list(out))], weights, opset=13)


@pytest.mark.parametrize("shape,scales,sizes", [
    ((1, 96, 10, 10), [1, 1, 2, 2], None),
    ((2, 3, 4, 5), [1, 1, 2, 3], None),
    ((1, 24, 10, 10), None, [1, 24, 80, 80]),
    ((2, 4, 6), [1, 4, 1], None),
    ((2, 4, 6, 3), [2, 1, 1, 1], None),  # a leading axis: strided copies
    ((1, 3, 5, 5), [1, 1, 1, 3], None),
    ((1, 2, 4, 4), [1, 1, 1.5, 2], None),  # 1.5: the general path
    ((1, 2, 5, 5), [1, 1, 2, 2], None),
])
def test_nearest_upsampling_matches_onnxruntime(shape, scales, sizes):
    model = resize_model(shape, scales, sizes)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], ort_run(model, {"x": x})[0])


def test_round_prefer_floor_is_not_taken_for_floor():
    """x4 with round_prefer_floor reads input round(i / 4), not i // 4: it must not use the repeat path."""
    model = resize_model((1, 1, 3, 3), [1, 1, 4, 4], nearest_mode="round_prefer_floor")
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], ort_run(model, {"x": x})[0])


@pytest.mark.parametrize("elem,dtype", [(TensorProto.UINT8, np.uint8), (TensorProto.INT64, np.int64),
                                        (TensorProto.INT32, np.int32)])
def test_integer_tensors_upsample_too(elem, dtype):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                            coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    model = graph_model([node], [("x", elem, [1, 2, 3, 3])], [("y", elem, [1, 2, 6, 6])],
                        {"scales": np.array([1, 1, 2, 2], np.float32)}, opset=13)
    x = np.arange(18, dtype=dtype).reshape(1, 2, 3, 3)
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], x.repeat(2, axis=2).repeat(2, axis=3))


def test_a_huge_factor_off_the_image_axes_takes_the_chunked_path():
    """Found by the fuzz suite: Upsample by 2**28 on a leading axis of a bool tensor made one strided
    copy per offset, 2**28 Python tuples built at bind time."""
    node = helper.make_node("Upsample", ["x", "scales"], ["y"], mode="nearest")
    model = graph_model([node], [("x", TensorProto.BOOL, [1, 2])], [("y", TensorProto.BOOL, [1 << 16, 2])],
                        {"scales": np.array([1 << 16, 1], np.float32)}, opset=9)
    x = np.array([[True, False]])
    np.testing.assert_array_equal(run_local(model, {"x": x})[0], np.repeat(x, 1 << 16, axis=0))


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("spec", [{"scales": [1, 1, 0.6, 0.3]}, {"sizes": [1, 2, 3, 4]}, {"scales": [1, 1, 1.7, 0.45]}])
@pytest.mark.parametrize("exclude", [0, 1])
def test_antialiased_downsampling_matches_the_reference(mode, spec, exclude):
    """antialias=1 stretches the linear or cubic filter by 1 / scale when shrinking (a no-op when growing),
    as ONNX's reference implementation computes it."""
    from onnx.reference import ReferenceEvaluator

    x = np.random.default_rng(6).standard_normal((1, 2, 9, 13)).astype(np.float32)
    inputs = ["x", "", "scales"] if "scales" in spec else ["x", "", "", "sizes"]
    value = np.array(spec.get("scales", spec.get("sizes")), np.float32 if "scales" in spec else np.int64)
    node = helper.make_node("Resize", inputs, ["y"], mode=mode, antialias=1, exclude_outside=exclude)
    want = ReferenceEvaluator(graph_model([node], [("x", TensorProto.FLOAT, list(x.shape))],
                                          [("y", TensorProto.FLOAT, None)],
                                          {inputs[-1]: value}, opset=18)).run(None, {"x": x})[0]
    model = graph_model([node], [("x", TensorProto.FLOAT, list(x.shape))],
                        [("y", TensorProto.FLOAT, list(want.shape))], {inputs[-1]: value}, opset=18)
    np.testing.assert_allclose(run_local(model, {"x": x})[0], want, rtol=1e-4, atol=1e-5)
