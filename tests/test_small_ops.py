"""BitShift, BitwiseAnd/Or/Xor/Not, Swish, Hardmax, LpNormalization, LpPool, CumProd, EyeLike and
CenterCropPad against onnxruntime (or ONNX's reference where onnxruntime lacks the op), with their edge
cases: shifts past the width, negative shifts, ties in Hardmax, zero vectors, k beyond the matrix."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InvalidArgument
from memserve.model import CompileOptions, compile_model

from models import graph_model, ort_run, run_local

T = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
     np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8, np.dtype(np.int64): TensorProto.INT64,
     np.dtype(np.uint32): TensorProto.UINT32}


def check(op, feeds, out_shape, out_type=None, weights=None, opset=18, reference=False, **attrs):
    names = list(feeds) + list(weights or {})
    node = helper.make_node(op, names, ["y"], **attrs)
    first = next(iter(feeds.values()))
    model = graph_model([node], [(k, T[v.dtype], list(v.shape)) for k, v in feeds.items()],
                        [("y", out_type or T[first.dtype], list(out_shape))], weights, opset=opset)
    got = run_local(model, feeds)[0]
    if reference:
        from onnx.reference import ReferenceEvaluator

        want = ReferenceEvaluator(model).run(None, feeds)[0]
    else:
        want = ort_run(model, feeds)[0]
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("direction", ["LEFT", "RIGHT"])
def test_bitshift_unsigned_against_onnxruntime_and_signed_against_the_reference(direction):
    x = np.array([1, 7, 255, 128, 0], np.uint8)
    check("BitShift", {"x": x, "s": np.array([0, 1, 7, 8, 3], np.uint8)}, x.shape, direction=direction)
    y = np.array([-8, 7, -1, 100, -128], np.int8)  # opset 26: signed, shifts past the width, negative shifts
    check("BitShift", {"x": y, "s": np.array([1, 9, -1, 2, 7], np.int8)}, y.shape, direction=direction,
          opset=26, reference=True)


@pytest.mark.parametrize("op", ["BitwiseAnd", "BitwiseOr", "BitwiseXor"])
def test_bitwise(op):
    a = np.array([[5, -3, 0x7F]], np.int32)
    check(op, {"a": a, "b": np.array([[3], [-1]], np.int32)}, (2, 3))


def test_bitwise_not():
    check("BitwiseNot", {"a": np.array([0, 1, 255], np.uint8)}, (3,))


def test_swish():
    x = np.linspace(-6, 6, 13, dtype=np.float32)
    check("Swish", {"x": x}, x.shape, opset=24, reference=True, alpha=0.5)


@pytest.mark.parametrize("opset,axis", [(13, -1), (13, 0), (11, 1)])
def test_hardmax_takes_the_first_of_equal_maxima(opset, axis):
    x = np.array([[[1, 3, 3], [2, 2, 0]], [[0, 0, 0], [5, 1, 5]]], np.float32)
    check("Hardmax", {"x": x}, x.shape, opset=opset, axis=axis)


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_leaves_a_zero_vector_zero(p):
    x = np.array([[3, 4, 0], [0, 0, 0]], np.float32)
    check("LpNormalization", {"x": x}, x.shape, p=p, axis=1)


def test_lp_pool_with_padding_and_strides():
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 6)).astype(np.float32)
    check("LpPool", {"x": x}, (1, 2, 3, 3), kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 0], p=3)


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumprod(exclusive, reverse):
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    check("CumProd", {"x": x}, x.shape, weights={"axis": np.array(1, np.int64)}, opset=26, reference=True,
          exclusive=exclusive, reverse=reverse)


@pytest.mark.parametrize("k", [0, 2, -1, 9])
def test_eyelike(k):
    check("EyeLike", {"x": np.zeros((3, 4), np.int32)}, (3, 4), k=k)


def test_center_crop_pad_crops_one_axis_and_pads_another():
    x = np.arange(20, dtype=np.float32).reshape(4, 5)
    check("CenterCropPad", {"x": x}, (2, 8), weights={"shape": np.array([2, 8], np.int64)})


@pytest.mark.parametrize("op,feeds,weights,attrs,match", [
    ("LpNormalization", {"x": np.zeros((2, 3), np.float32)}, {}, {"p": 3}, "p must be 1 or 2"),
    ("EyeLike", {"x": np.zeros((2, 3, 4), np.float32)}, {}, {}, "must be 2-D"),
    ("BitShift", {"x": np.zeros(3, np.uint8), "s": np.zeros(3, np.uint8)}, {}, {"direction": "UP"}, "LEFT or RIGHT"),
    ("CenterCropPad", {"x": np.zeros((2, 3), np.float32)}, {"s": np.array([1], np.int64)}, {}, "1 sizes for axes"),
])
def test_bad_parameters_are_refused_at_load(op, feeds, weights, attrs, match):
    names = list(feeds) + list(weights)
    model = graph_model([helper.make_node(op, names, ["y"], **attrs)],
                        [(k, T[v.dtype], list(v.shape)) for k, v in feeds.items()], [("y", TensorProto.FLOAT, [1])],
                        weights, opset=18)
    with pytest.raises(InvalidArgument, match=match):
        compile_model(model, CompileOptions())


@pytest.mark.parametrize("op", ["NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_losses_with_weights_and_an_ignored_class(op, reduction):
    r = np.random.default_rng(len(op) + len(reduction))
    x = r.standard_normal((3, 4, 2)).astype(np.float32)
    if op == "NegativeLogLikelihoodLoss":
        x = np.log(np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)).astype(np.float32)
    target = np.array([[0, 3], [2, 1], [1, 1]], np.int64)
    shape = (3, 2) if reduction == "none" else ()
    check(op, {"x": x, "t": target}, shape, weights={"w": np.array([1, 0.5, 2, 1], np.float32)},
          reduction=reduction, ignore_index=1)


def test_a_loss_target_out_of_range_fails_the_request():
    from memserve.device import CpuDevice
    from memserve.registry import LoadOptions, Registry

    model = graph_model([helper.make_node("NegativeLogLikelihoodLoss", ["x", "t"], ["y"])],
                        [("x", TensorProto.FLOAT, [2, 3]), ("t", TensorProto.INT64, [2])], [("y", TensorProto.FLOAT, [])])
    reg = Registry(CpuDevice(1 << 26))
    try:
        reg.load(model, LoadOptions(name="m"))
        with pytest.raises(InvalidArgument, match=r"target is outside \[0, 3\)"):
            reg.execute("m", {"x": np.zeros((2, 3), np.float32), "t": np.array([0, 3], np.int64)})
    finally:
        reg.close()


@pytest.mark.parametrize("src,to", [(np.float32, TensorProto.INT32), (np.int8, TensorProto.UINT8),
                                    (np.uint16, TensorProto.FLOAT16)])
def test_bitcast_reads_the_same_bytes(src, to):
    x = np.array([1.5, -2.0, 0.0, 7.25], np.float32).astype(src) if src != np.uint16 else np.array([15360, 1], np.uint16)
    model = graph_model([helper.make_node("BitCast", ["x"], ["y"], to=to)], [("x", T.get(np.dtype(src), TensorProto.UINT16),
                                                                          list(x.shape))], [("y", to, list(x.shape))],
                        opset=26)
    got = run_local(model, {"x": x})[0]
    assert got.tobytes() == x.tobytes() and got.dtype.itemsize == x.dtype.itemsize


def test_bitcast_to_bool_from_bytes_is_refused():
    from memserve.errors import UnsupportedModel

    model = graph_model([helper.make_node("BitCast", ["x"], ["y"], to=TensorProto.BOOL)],
                        [("x", TensorProto.UINT8, [3])], [("y", TensorProto.BOOL, [3])], opset=26)
    with pytest.raises(UnsupportedModel, match="only a bool becomes one"):
        compile_model(model, CompileOptions())


def _reference(model, feeds):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


@pytest.mark.parametrize("after_conv", [False, True])
def test_batch_normalization_in_training_mode_uses_the_batch_statistics(after_conv):
    """Not folded into a Conv before it: its affine comes from each batch, not from weights."""
    rng = np.random.default_rng(7)
    c = 3
    w = {"s": rng.uniform(0.5, 2, c).astype(np.float32), "b": rng.standard_normal(c).astype(np.float32),
         "m": rng.standard_normal(c).astype(np.float32), "v": rng.uniform(0.5, 2, c).astype(np.float32),
         "k": rng.standard_normal((c, c, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"])] if after_conv else []
    nodes.append(helper.make_node("BatchNormalization", ["c" if after_conv else "x", "s", "b", "m", "v"],
                                  ["y", "rm", "rv"], training_mode=1, momentum=0.8))
    model = graph_model(nodes, [("x", TensorProto.FLOAT, [4, c, 5, 5])],
                        [("y", TensorProto.FLOAT, [4, c, 5, 5]), ("rm", TensorProto.FLOAT, [c]),
                         ("rv", TensorProto.FLOAT, [c])], w, opset=15)
    feeds = {"x": rng.standard_normal((4, c, 5, 5)).astype(np.float32) * 3 + 1}
    for got, want in zip(run_local(model, feeds), _reference(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_dropout_in_training_mode_draws_the_reference_mask_from_its_seed():
    model = graph_model([helper.make_node("Dropout", ["x", "r", "t"], ["y", "mask"], seed=3)],
                        [("x", TensorProto.FLOAT, [4, 50])],
                        [("y", TensorProto.FLOAT, [4, 50]), ("mask", TensorProto.BOOL, [4, 50])],
                        {"r": np.array(0.25, np.float32), "t": np.array(True)}, opset=13)
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 50)).astype(np.float32)}
    got, want = run_local(model, feeds), _reference(model, feeds)
    np.testing.assert_array_equal(got[1], want[1])
    assert 0.6 < got[1].mean() < 0.9  # about 3 in 4 kept
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    bad = graph_model([helper.make_node("Dropout", ["x", "r", "t"], ["y"])], [("x", TensorProto.FLOAT, [4])],
                      [("y", TensorProto.FLOAT, [4])], {"r": np.array(1.0, np.float32), "t": np.array(True)}, opset=13)
    with pytest.raises(InvalidArgument, match=r"ratio must be in \[0, 1\)"):
        compile_model(bad, CompileOptions())
