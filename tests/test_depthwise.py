"""The compiled depthwise Conv (kernels/depthwise.py) against onnxruntime, and its memory."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InvalidArgument
from memserve.kernels import depthwise
from memserve.model import CompileOptions, compile_model

from models import graph_model, ort_run, run_local

F64 = TensorProto.DOUBLE


def _model(x_shape, w, b, attrs, elem=TensorProto.FLOAT) -> bytes:
    weights = {"w": w} if b is None else {"w": w, "b": b}
    node = helper.make_node("Conv", ["x", "w"] + ([] if b is None else ["b"]), ["y"], group=x_shape[1], **attrs)
    return graph_model([node], [("x", elem, list(x_shape))], [("y", elem, ["n", "m", "h", "w"])], weights)


def _reference(x, w, b, attrs):
    """Direct float64 depthwise convolution (onnxruntime's Conv takes float only)."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        oh, ow = -(-h // sh), -(-wd // sw)
        th = max((oh - 1) * sh + (kh - 1) * dh + 1 - h, 0)
        tw = max((ow - 1) * sw + (kw - 1) * dw + 1 - wd, 0)
        small = th // 2, tw // 2
        begin = small if auto == "SAME_UPPER" else (th - small[0], tw - small[1])
        pads = [begin[0], begin[1], th - begin[0], tw - begin[1]]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    y = np.zeros((n, m, oh, ow))
    xc = xp[:, np.arange(m) // (m // c)]
    for i in range(kh):
        for j in range(kw):
            tap = xc[:, :, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]
            y += w[None, :, 0, i, j, None, None] * tap
    return y if b is None else y + b[None, :, None, None]


# (input shape, kernel, channel multiplier, attributes, bias)
CASES = [
    ((1, 8, 9, 11), 3, 1, dict(pads=[1, 1, 1, 1]), True),
    ((4, 6, 16, 13), 3, 1, dict(pads=[1, 1, 1, 1], strides=[2, 2]), True),
    ((1, 5, 12, 12), 5, 1, dict(pads=[2, 2, 2, 2]), False),
    ((4, 5, 14, 14), 5, 1, dict(pads=[2, 2, 2, 2], strides=[2, 2]), True),
    ((1, 3, 15, 17), 7, 1, dict(pads=[3, 3, 3, 3]), True),
    ((1, 4, 20, 19), 7, 1, dict(strides=[3, 3], pads=[1, 2, 3, 0]), False),
    ((1, 6, 10, 10), 1, 1, {}, True),
    ((2, 6, 10, 10), 1, 1, dict(strides=[3, 2]), False),
    ((1, 4, 11, 9), 3, 1, dict(dilations=[2, 2], pads=[2, 2, 2, 2]), True),
    ((4, 4, 13, 12), 5, 1, dict(dilations=[2, 1], strides=[1, 2], pads=[4, 2, 0, 1]), True),
    ((1, 3, 6, 5), 3, 1, dict(pads=[5, 4, 6, 7]), True),  # padding larger than the kernel
    ((1, 3, 7, 8), 3, 1, dict(pads=[4, 4, 4, 4], strides=[3, 3]), True),  # and stride as large as it
    ((1, 2, 9, 9), 2, 1, dict(strides=[5, 5]), True),  # stride larger than the kernel
    ((1, 4, 9, 10), 3, 1, dict(pads=[0, 2, 1, 0]), True),  # asymmetric
    ((1, 8, 10, 7), 3, 1, dict(auto_pad="SAME_UPPER", strides=[2, 2]), True),
    ((1, 8, 10, 7), 4, 1, dict(auto_pad="SAME_LOWER"), True),
    ((1, 8, 11, 7), 4, 1, dict(auto_pad="SAME_UPPER", strides=[3, 2]), False),
    ((4, 8, 10, 9), 3, 1, dict(auto_pad="VALID", strides=[2, 2]), True),
    ((1, 4, 8, 8), 3, 2, dict(pads=[1, 1, 1, 1]), True),  # two output channels per input channel
    ((4, 3, 9, 7), 5, 3, dict(pads=[2, 1, 2, 1], strides=[2, 1]), False),
    ((1, 2, 3, 40), 3, 1, dict(pads=[1, 1, 1, 1]), True),
    ((1, 2, 130, 130), 3, 1, dict(pads=[1, 1, 1, 1]), True),  # above FLAT_PIXELS: tap by tap
    ((1, 2, 90, 61), 5, 1, dict(pads=[2, 3, 2, 1]), True),  # flat, asymmetric
    ((1, 3, 20, 20), 3, 1, dict(pads=[1, 1, 2, 2]), True),  # stride 1 but not "same": tap by tap
    ((1, 2, 70, 70), 5, 1, dict(pads=[2, 2, 2, 2], strides=[2, 2]), True),  # wide strided: rows
    ((1, 2, 70, 70), 3, 1, dict(pads=[1, 1, 1, 1], strides=[2, 2]), True),  # wide strided 3 x 3: rows
    ((2, 2, 70, 71), 3, 2, dict(pads=[0, 2, 1, 0], strides=[2, 3], dilations=[2, 1]), False),
    ((2, 3, 100, 101), 3, 2, dict(pads=[1, 0, 2, 3], strides=[3, 3], dilations=[2, 2]), True),
    ((1, 2, 9, 80), 4, 1, dict(pads=[0, 5, 1, 6], strides=[1, 2]), False),
    ((1, 16, 56, 56), 3, 1, dict(pads=[1, 1, 1, 1]), True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-k{c[1]}-x{c[2]}-{c[3]}-{'b' if c[4] else 'nob'}")
def test_depthwise_matches_onnxruntime(case, dtype):
    shape, k, mult, attrs, bias = case
    rng = np.random.default_rng(sum(shape) + k)
    c = shape[1]
    w = rng.standard_normal((c * mult, 1, k, k)).astype(dtype)
    b = rng.standard_normal(c * mult).astype(dtype) if bias else None
    x = rng.standard_normal(shape).astype(dtype)
    elem = TensorProto.FLOAT if dtype == np.float32 else F64
    model = _model(shape, w, b, attrs, elem)
    got = run_local(model, {"x": x})[0]
    if dtype == np.float32:
        want = ort_run(model, {"x": x})[0]
    else:
        want = _reference(x, w, b, attrs)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    plan = compile_model(model, CompileOptions(input_shapes={"x": shape}))
    assert [s.scratch for s in plan.steps if s.node is not None and s.node.op_type == "Conv"] == [[]]


def test_the_cases_take_every_path():
    from memserve.kernels.conv import geometry
    from memserve.kernels import Node

    taken = set()
    for shape, k, _, attrs, _ in CASES:
        g = geometry(Node("Conv", "c", [], [], dict(attrs)), shape[2:], (k, k))
        taken.add(depthwise.path(shape[3], g))
    assert taken == set(depthwise.PATHS)


def test_the_reference_agrees_with_onnxruntime():
    case = ((2, 3, 9, 8), 3, 2, dict(pads=[2, 0, 1, 3], strides=[2, 1], dilations=[1, 2]), True)
    shape, k, mult, attrs, _ = case
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    want = ort_run(_model(shape, w, b, attrs), {"x": x})[0]
    np.testing.assert_allclose(_reference(x, w, b, attrs), want, rtol=1e-4, atol=1e-5)


def test_inf_and_nan_are_not_multiplied_by_padding():
    """Columns in the padding are skipped, not multiplied by zero: an Inf at the edge stays where it is."""
    x = np.zeros((1, 2, 5, 5), np.float32)
    x[0, 0, 0, 0] = np.inf
    x[0, 1, 4, 4] = np.nan
    w = np.ones((2, 1, 3, 3), np.float32)
    model = _model(x.shape, w, None, dict(pads=[1, 1, 1, 1]))
    got = run_local(model, {"x": x})[0]
    want = ort_run(model, {"x": x})[0]
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isinf(got).sum() == 4 and np.isnan(got).sum() == 4


def test_depthwise_work_memory_has_no_im2col_scratch():
    """A depthwise conv on a large image plans no column buffer: work is its input and output."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    shape = (2, 32, 150, 130)
    model = _model(shape, w, None, dict(pads=[1, 1, 1, 1]))
    plan = compile_model(model, CompileOptions(input_shapes={"x": shape}))
    assert plan.work_size == plan.work_lower_bound
    assert all(not s.scratch for s in plan.steps)
    # A non-depthwise conv of the same shape still gets its im2col tile.
    general = graph_model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                          [("x", TensorProto.FLOAT, list(shape))], [("y", TensorProto.FLOAT, ["n", "m", "h", "w"])],
                          {"w": rng.standard_normal((32, 32, 3, 3)).astype(np.float32)})
    assert any(s.scratch for s in compile_model(general, CompileOptions(input_shapes={"x": shape})).steps)


def test_dispatch_covers_depthwise_only():
    from memserve.kernels import TensorInfo
    from memserve.kernels.conv import Geometry

    f32 = np.dtype(np.float32)
    g = Geometry((3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (8, 8))

    def ok(x, w, groups, b=None, geom=g, dtype=f32):
        return depthwise.supported(TensorInfo(dtype, x), TensorInfo(dtype, w),
                                   None if b is None else TensorInfo(dtype, b), groups, geom)

    assert ok((1, 4, 8, 8), (4, 1, 3, 3), 4)
    assert ok((1, 4, 8, 8), (8, 1, 3, 3), 4, b=(8,))
    assert not ok((1, 4, 8, 8), (4, 4, 3, 3), 1)  # a general conv
    assert not ok((1, 4, 8, 8), (4, 2, 3, 3), 2)  # grouped, two channels a group
    assert not ok((1, 1, 8, 8), (4, 1, 3, 3), 1)  # one input channel, one group: the general path
    assert not ok((1, 4, 8, 8), (4, 1, 3, 3), 4, b=(3,))  # a bias of the wrong length: refused as before
    assert not ok((1, 4, 8, 8), (4, 1, 3, 3), 4, dtype=np.dtype(np.float16))
    assert not ok((1, 4, 8), (4, 1, 3), 4)  # 1-D
    huge = Geometry((3, 3), (2**40, 1), (1, 1), (2**40, 1), (2**40, 1), (2, 8))
    assert not ok((1, 4, 8, 8), (4, 1, 3, 3), 4, geom=huge)  # indices could wrap int64: numpy's path


@pytest.mark.parametrize("shape,pads", [((1, 4, 0, 5), [1, 1, 1, 1]), ((1, 4, 5, 0), [0, 0, 0, 0])])
def test_zero_size_spatial_input_is_refused(shape, pads):
    w = np.ones((4, 1, 3, 3), np.float32)
    model = _model(shape, w, np.ones(4, np.float32), dict(pads=pads))
    with pytest.raises(InvalidArgument, match="larger than input"):
        run_local(model, {"x": np.zeros(shape, np.float32)})


def test_zero_size_input_all_padding_gives_the_bias_as_onnxruntime_does():
    shape = (1, 4, 0, 5)
    model = _model(shape, np.ones((4, 1, 3, 3), np.float32), np.arange(4, dtype=np.float32),
                   dict(pads=[2, 2, 2, 2]))
    x = np.zeros(shape, np.float32)
    got = run_local(model, {"x": x})[0]
    np.testing.assert_array_equal(got, ort_run(model, {"x": x})[0])


def test_a_model_of_zero_samples_runs_empty():
    model = _model((0, 4, 6, 6), np.ones((4, 1, 3, 3), np.float32), None, dict(pads=[1, 1, 1, 1]))
    assert run_local(model, {"x": np.zeros((0, 4, 6, 6), np.float32)})[0].shape == (0, 4, 6, 6)


def test_read_only_and_strided_inputs():
    """A request's tensor may be read-only (protobuf bytes) or, in process, any numpy view."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    from memserve.kernels import TensorInfo
    from memserve.kernels.conv import Geometry

    g = Geometry((3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (7, 9))
    f32 = np.dtype(np.float32)
    run = depthwise.build(TensorInfo(f32, (2, 6, 7, 9)), TensorInfo(f32, w.shape), TensorInfo(f32, b.shape), g)
    big = rng.standard_normal((2, 6, 7, 18)).astype(np.float32)
    x = big[:, :, :, ::2]  # strided
    want = _reference(np.ascontiguousarray(x), w, b, dict(pads=[1, 1, 1, 1]))
    y = np.empty((2, 6, 7, 9), np.float32)
    run([x, w, b], [y])
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    ro = np.ascontiguousarray(x)
    ro.flags.writeable = False
    w.flags.writeable = False
    y[...] = 0
    run([ro, w, b], [y])
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
