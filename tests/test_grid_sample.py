"""GridSample against onnxruntime (2-D: every mode, padding mode and align_corners, coordinates well outside
[-1, 1]) and against ONNX's reference (3-D); hostile shapes refused at load."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InvalidArgument, UnsupportedModel
from memserve.model import CompileOptions, compile_model

from models import graph_model, ort_run, run_local

F = TensorProto.FLOAT


def model_of(x_shape, grid_shape, opset=20, **attrs):
    out = list(x_shape[:2]) + list(grid_shape[1:-1])
    return graph_model([helper.make_node("GridSample", ["x", "grid"], ["y"], **attrs)],
                       [("x", F, list(x_shape)), ("grid", F, list(grid_shape))], [("y", F, out)], opset=opset)


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("corners", [0, 1])
def test_2d_matches_onnxruntime(mode, padding, corners):
    r = np.random.default_rng(hash((mode, padding, corners)) % 1000)
    x = r.standard_normal((2, 3, 5, 6)).astype(np.float32)
    grid = (r.random((2, 4, 7, 2)) * 3.4 - 1.7).astype(np.float32)  # a third of the points outside
    model = model_of(x.shape, grid.shape, mode=mode, padding_mode=padding, align_corners=corners)
    got = run_local(model, {"x": x, "grid": grid})[0]
    if mode == "cubic" and padding == "border":
        # onnxruntime does not clamp a coordinate outside the image before its cubic taps (off by up to 0.6
        # here); the ONNX spec and its reference do, and so does memserve.
        from onnx.reference import ReferenceEvaluator

        want = ReferenceEvaluator(model).run(None, {"x": x, "grid": grid})[0]
    else:
        want = ort_run(model, {"x": x, "grid": grid})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_3d_matches_the_reference(mode):
    from onnx.reference import ReferenceEvaluator

    r = np.random.default_rng(7)
    x = r.standard_normal((1, 2, 3, 4, 5)).astype(np.float32)
    grid = (r.random((1, 2, 3, 2, 3)) * 2.4 - 1.2).astype(np.float32)
    model = model_of(x.shape, grid.shape, opset=22, mode=mode, padding_mode="border")
    want = ReferenceEvaluator(model).run(None, {"x": x, "grid": grid})[0]
    np.testing.assert_allclose(run_local(model, {"x": x, "grid": grid})[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("x_shape,grid_shape,attrs,match", [
    ((1, 2, 4, 4), (1, 3, 3, 3), {}, "spatial rank"),
    ((2, 2, 4, 4), (1, 3, 3, 2), {}, "must be"),
    ((1, 2, 4, 4), (1, 3, 3, 2), {"mode": "lanczos"}, "is not supported"),
])
def test_shapes_and_modes_that_do_not_fit_are_refused(x_shape, grid_shape, attrs, match):
    with pytest.raises((InvalidArgument, UnsupportedModel), match=match):
        compile_model(model_of(x_shape, grid_shape, **attrs), CompileOptions())


def roi_model(r, **attrs):
    node = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], output_height=3, output_width=2, **attrs)
    return graph_model([node], [("x", F, [2, 3, 10, 12]), ("rois", F, [r, 4]), ("idx", TensorProto.INT64, [r])],
                       [("y", F, [r, 3, 3, 2])], opset=16)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("transform", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("ratio", [0, 2])
def test_roi_align_matches_onnxruntime(mode, transform, ratio):
    r = np.random.default_rng(ratio)
    corner = r.random((5, 2)) * 8
    rois = np.concatenate([corner, corner + 0.5 + r.random((5, 2)) * 6], axis=1).astype(np.float32)
    feeds = {"x": r.standard_normal((2, 3, 10, 12)).astype(np.float32), "rois": rois,
             "idx": np.array([0, 1, 1, 0, 1], np.int64)}
    model = roi_model(5, mode=mode, coordinate_transformation_mode=transform, sampling_ratio=ratio, spatial_scale=0.9)
    np.testing.assert_allclose(run_local(model, feeds)[0], ort_run(model, feeds)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rois,idx,match", [
    (np.array([[0, 0, 4, 4]], np.float32), np.array([2], np.int64), "batch index out of range"),
    (np.array([[0, 0, 1e12, 1e12]], np.float32), np.array([0], np.int64), "give the model a sampling_ratio"),
])
def test_roi_align_hostile_requests_fail_alone(rois, idx, match):
    from memserve.device import CpuDevice
    from memserve.registry import LoadOptions, Registry

    reg = Registry(CpuDevice(1 << 26))
    try:
        reg.load(roi_model(1), LoadOptions(name="m"))
        x = np.zeros((2, 3, 10, 12), np.float32)
        with pytest.raises(InvalidArgument, match=match):
            reg.execute("m", {"x": x, "rois": rois, "idx": idx})
        reg.execute("m", {"x": x, "rois": np.array([[0, 0, 4, 4]], np.float32), "idx": np.array([1], np.int64)})
    finally:
        reg.close()
