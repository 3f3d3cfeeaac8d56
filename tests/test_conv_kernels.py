"""Conv (kernels/conv.py): compiled im2col + GEMM + fused epilogue, against onnxruntime.

Float32 cases run against onnxruntime; float64 ones (onnxruntime's CPU Conv is
float32 only) against a direct numpy convolution computed here in float64.
Each fused epilogue is checked twice: the answer, and that the fuser folded
it into the Conv (one step left in the plan).
"""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.kernels import Node, TensorInfo, conv, lookup
from memserve.model import CompileOptions, compile_model
from memserve.model.plan import RUN

from models import F32, graph_model, ort_run, run_local

F64 = TensorProto.DOUBLE
TOL = dict(rtol=1e-4, atol=1e-5)


def run_ops(model, **options):
    return [s.node.op_type for s in compile_model(model, CompileOptions(**options)).steps if s.phase == RUN]


def reference_conv(x, w, b, strides, pads, dilations, group):
    """Direct float64 convolution over 1-3 spatial axes (pads: begins then ends)."""
    nd = x.ndim - 2
    x = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(pads[a], pads[nd + a]) for a in range(nd)])
    n, c = x.shape[:2]
    m = w.shape[0]
    kernel = w.shape[2:]
    out = [(x.shape[2 + a] - (kernel[a] - 1) * dilations[a] - 1) // strides[a] + 1 for a in range(nd)]
    y = np.zeros((n, m, *out))
    cg, mg = c // group, m // group
    for pos in np.ndindex(*kernel):
        sl = tuple(slice(p * d, p * d + (o - 1) * s + 1, s) for p, d, o, s in zip(pos, dilations, out, strides))
        patch = x[(slice(None), slice(None)) + sl]  # n, c, *out
        for g in range(group):
            wk = w[g * mg:(g + 1) * mg, :, *pos].astype(np.float64)  # mg, cg
            y[:, g * mg:(g + 1) * mg] += np.einsum("mc,nc...->nm...", wk, patch[:, g * cg:(g + 1) * cg])
    if b is not None:
        y += b.reshape((1, -1) + (1,) * nd)
    return y


def conv_model(x_shape, w, b, attrs, elem=F32, batch_dim=False):
    inputs = ["x", "w"] + (["b"] if b is not None else [])
    weights = {"w": w, **({"b": b} if b is not None else {})}
    shape = ["N", *x_shape[1:]] if batch_dim else list(x_shape)
    node = helper.make_node("Conv", inputs, ["y"], **attrs)
    return graph_model([node], [("x", elem, shape)], [("y", elem, _any(len(x_shape)))], weights)


def _any(rank):
    return [f"d{i}" for i in range(rank)]


CASES = [
    # x shape, (out channels, kernel), attrs
    ((1, 3, 17, 19), (8, (3, 3)), dict(pads=[1, 1, 1, 1])),
    ((1, 4, 16, 16), (6, (3, 3)), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 4, 16, 15), (5, (2, 2)), dict(strides=[3, 3])),  # stride larger than the kernel
    ((1, 3, 20, 20), (4, (3, 3)), dict(dilations=[2, 3], pads=[2, 3, 2, 3])),
    ((1, 2, 6, 7), (3, (3, 3)), dict(pads=[4, 5, 4, 5])),  # padding larger than the kernel
    ((1, 3, 12, 11), (4, (3, 2)), dict(pads=[0, 2, 1, 0])),  # asymmetric pads
    ((1, 4, 10, 10), (6, (3, 3)), dict(group=2, pads=[1, 1, 1, 1])),
    ((1, 8, 9, 9), (12, (3, 3)), dict(group=4, pads=[1, 1, 1, 1], strides=[2, 1])),  # grouped, not depthwise
    ((1, 6, 9, 9), (6, (3, 3)), dict(group=6, pads=[1, 1, 1, 1])),  # depthwise
    ((1, 16, 70, 66), (8, (3, 3)), dict(pads=[1, 1, 1, 1])),  # tiled by output rows
    ((1, 8, 12, 12), (16, (1, 1)), {}),  # pointwise: a plain GEMM
    ((1, 8, 12, 12), (16, (1, 1)), dict(strides=[2, 2])),
    ((1, 3, 30), (4, (5,)), dict(pads=[2, 1], strides=[2])),  # 1-D: numpy im2col
    ((1, 2, 5, 6, 7), (3, (3, 2, 3)), dict(pads=[1, 0, 1, 1, 1, 0])),  # 3-D
    ((1, 7, 11, 9), (5, (7, 5)), dict(strides=[2, 3], pads=[3, 2, 3, 2])),
    # wider channels (deep sums), asymmetric pads, a tall thin image tiled by rows
    ((1, 64, 21, 18), (64, (3, 3)), dict(pads=[1, 1, 1, 1])),
    ((1, 32, 17, 16), (48, (3, 3)), dict(pads=[0, 1, 2, 1])),
    ((1, 128, 40, 9), (16, (3, 3)), dict(pads=[1, 1, 1, 1])),
]


def _case(x_shape, wspec, attrs, seed, dtype=np.float32, bias=True):
    rng = np.random.default_rng(seed)
    m, kernel = wspec
    group = attrs.get("group", 1)
    # Scaled like trained weights (fan-in): outputs of order 1, whose float32 rounding fits atol 1e-5.
    w = (rng.standard_normal((m, x_shape[1] // group, *kernel)) / np.sqrt(x_shape[1] // group * np.prod(kernel)))
    b = rng.standard_normal(m).astype(dtype) if bias else None
    return rng, w.astype(dtype), b


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv_matches_onnxruntime(case, batch):
    x_shape, wspec, attrs = CASES[case]
    rng, w, b = _case(x_shape, wspec, attrs, case, bias=case % 3 != 1)
    x = rng.standard_normal((batch, *x_shape[1:])).astype(np.float32)
    model = conv_model(x_shape, w, b, attrs, batch_dim=True)
    got = run_local(model, {"x": x}, max_batch=4)[0]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], **TOL)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv_float64_matches_a_direct_convolution(case):
    x_shape, wspec, attrs = CASES[case]
    rng, w, b = _case(x_shape, wspec, attrs, 100 + case, np.float64)
    x = rng.standard_normal((2, *x_shape[1:]))
    nd = len(x_shape) - 2
    model = conv_model(x_shape, w, b, attrs, elem=F64, batch_dim=True)
    got = run_local(model, {"x": x}, max_batch=2)[0]
    want = reference_conv(x, w, b, attrs.get("strides", [1] * nd), attrs.get("pads", [0] * 2 * nd),
                          attrs.get("dilations", [1] * nd), attrs.get("group", 1))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_tiles_of_several_samples_and_a_short_last_tile(monkeypatch):
    """A small TILE_BYTES: tiles of 3 whole samples (the last one short), then of 3 rows (the last short)."""
    rng = np.random.default_rng(7)
    w, b = rng.standard_normal((5, 4, 3, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    x = rng.standard_normal((4, 4, 8, 10)).astype(np.float32)
    model = conv_model(x.shape, w, b, dict(pads=[1, 1, 1, 1]), batch_dim=True)
    per_sample = 4 * 9 * 8 * 10 * 4
    for tile in (3 * per_sample, 3 * per_sample // 8):
        monkeypatch.setattr(conv, "TILE_BYTES", tile)
        np.testing.assert_allclose(run_local(model, {"x": x}, max_batch=4)[0], ort_run(model, {"x": x})[0], **TOL)


def test_a_strided_input_takes_the_numpy_im2col():
    """The compiled im2col wants a C-contiguous input; a strided view goes the numpy way, same answer."""
    rng = np.random.default_rng(8)
    x_full = rng.standard_normal((1, 3, 12, 20)).astype(np.float32)
    x = x_full[:, :, :, ::2]
    w, b = rng.standard_normal((4, 3, 3, 3)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    node = Node("Conv", "c", ["x", "w", "b"], ["y"], {"pads": [1, 1, 1, 1], "kernel_shape": [3, 3]})
    op = lookup("", "Conv")
    ins = [TensorInfo(x.dtype, x.shape), TensorInfo(w.dtype, w.shape, w), TensorInfo(b.dtype, b.shape, b)]
    outs = op.infer(node, ins)
    scratch = [np.empty(t.shape, t.dtype) for t in op.scratch(node, ins, outs)]
    y = np.empty(outs[0].shape, np.float32)
    op.build(node, ins, outs)([x, w, b], [y] + scratch)
    np.testing.assert_allclose(y, reference_conv(x, w, b, [1, 1], [1] * 4, [1, 1], 1), **TOL)


# -- fused epilogues ------------------------------------------------------------------

def _epilogue_model(tail, x_shape=(2, 4, 9, 9), m=6, group=1, kernel=(3, 3), elem=F32, dtype=np.float32,
                    conv_attrs=None, seed=0):
    """Conv -> `tail` (nodes reading "c"; the last writes "y"), with weights for it; res is an input."""
    rng = np.random.default_rng(seed)
    weights = {"w": rng.standard_normal((m, x_shape[1] // group, *kernel)).astype(dtype),
               "b": rng.standard_normal(m).astype(dtype)}
    attrs = conv_attrs or dict(pads=[1, 1, 1, 1], group=group)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], **attrs)] + tail
    out_shape = [x_shape[0], m, *x_shape[2:]]
    inputs = [("x", elem, list(x_shape)), ("res", elem, out_shape)]
    model = graph_model(nodes, inputs, [("y", elem, _any(len(x_shape)))], weights)
    feeds = {"x": rng.standard_normal(x_shape).astype(dtype), "res": rng.standard_normal(out_shape).astype(dtype)}
    return model, feeds


EPILOGUES = {
    "relu": [helper.make_node("Relu", ["c"], ["y"])],
    "clip": [helper.make_node("Clip", ["c", "lo", "hi"], ["y"])],
    "clip-max-only": [helper.make_node("Clip", ["c", "", "hi"], ["y"])],
    "hardswish": [helper.make_node("HardSwish", ["c"], ["y"])],
    "x*hardsigmoid(x)": [helper.make_node("HardSigmoid", ["c"], ["g"], alpha=0.25, beta=0.4),
                         helper.make_node("Mul", ["c", "g"], ["y"])],
    "silu": [helper.make_node("Sigmoid", ["c"], ["g"]), helper.make_node("Mul", ["g", "c"], ["y"])],
    "add": [helper.make_node("Add", ["c", "res"], ["y"])],
    "add-first-operand": [helper.make_node("Add", ["res", "c"], ["y"])],
    "add+relu": [helper.make_node("Add", ["c", "res"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
    "add+clip": [helper.make_node("Add", ["res", "c"], ["s"]), helper.make_node("Clip", ["s", "lo", "hi"], ["y"])],
}


def _with_clip_bounds(model_nodes):
    return [helper.make_node("Constant", [], ["lo"], value_float=-0.5),
            helper.make_node("Constant", [], ["hi"], value_float=1.5)] + model_nodes


@pytest.mark.parametrize("shape,group,kernel", [((2, 4, 9, 9), 1, (3, 3)), ((1, 4, 9, 9), 2, (3, 3)),
                                                ((2, 6, 9, 9), 6, (3, 3)), ((1, 4, 9, 9), 1, (1, 1)),
                                                ((2, 4, 11), 1, (3,))])
@pytest.mark.parametrize("name", list(EPILOGUES))
def test_fused_epilogue_matches_onnxruntime_and_is_one_step(name, shape, group, kernel):
    pads = [1] * 2 * len(kernel) if kernel[0] == 3 else [0] * 2 * len(kernel)
    m = 6
    model, feeds = _epilogue_model(_with_clip_bounds(EPILOGUES[name]), shape, m, group, kernel,
                                   conv_attrs=dict(pads=pads, group=group))
    ops = run_ops(model)
    pointwise_residual = kernel == (1, 1) and name.startswith("add")
    if pointwise_residual:  # a residual is not fused into a 1x1 Conv (fuse.py)
        assert ops[0] == "Conv" and len(ops) > 1
    else:
        assert ops == ["Conv"], ops
    got = run_local(model, feeds)[0]
    np.testing.assert_allclose(got, ort_run(model, feeds)[0], **TOL)


def test_fused_epilogue_float64():
    model, feeds = _epilogue_model(_with_clip_bounds(EPILOGUES["add+clip"]), elem=F64, dtype=np.float64)
    assert run_ops(model) == ["Conv"]
    got = run_local(model, feeds)[0]
    c = reference_conv(feeds["x"], *(np.asarray(v) for v in _weights(model)), [1, 1], [1] * 4, [1, 1], 1)
    np.testing.assert_allclose(got, np.clip(c + feeds["res"], -0.5, 1.5), rtol=1e-10, atol=1e-10)


def _weights(model):
    import onnx
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(model).graph.initializer}
    return init["w"], init["b"]


def test_residual_block_conv_add_relu_with_batch_and_batchnorm():
    """ResNet's block: Conv -> BN -> Add(skip) -> Relu, the skip read again later: one Conv step, the
    skip still intact for its other reader."""
    rng = np.random.default_rng(3)
    c = 4
    weights = {"w": rng.standard_normal((c, c, 3, 3)).astype(np.float32),
               "scale": rng.random(c).astype(np.float32) + 0.5, "bias": rng.standard_normal(c).astype(np.float32),
               "mean": rng.standard_normal(c).astype(np.float32), "var": rng.random(c).astype(np.float32) + 0.5}
    nodes = [helper.make_node("Relu", ["x"], ["skip"]),
             helper.make_node("Conv", ["skip", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"]),
             helper.make_node("Add", ["n", "skip"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Add", ["r", "skip"], ["y"])]
    model = graph_model(nodes, [("x", F32, ["N", c, 10, 10])], [("y", F32, ["N", c, 10, 10])], weights)
    assert run_ops(model, max_batch=4) == ["Relu", "Conv", "Add"]
    x = rng.standard_normal((4, c, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(run_local(model, {"x": x}, max_batch=4)[0], ort_run(model, {"x": x})[0], **TOL)


def test_per_channel_mul_and_add_fold_into_the_weights():
    rng = np.random.default_rng(4)
    weights = {"w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
               "s": rng.standard_normal((6, 1, 1)).astype(np.float32),
               "t": rng.standard_normal((1, 6, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["t", "m"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    model = graph_model(nodes, [("x", F32, [1, 3, 8, 8])], [("y", F32, _any(4))], weights)
    assert run_ops(model) == ["Conv"]
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_local(model, {"x": x})[0], ort_run(model, {"x": x})[0], **TOL)


def test_what_is_not_fused_stays():
    """Relu then Add (activation first), a Conv output read twice: the Conv keeps no epilogue (or only
    the part before the Add), right answers."""
    cases = {
        "relu-then-add": ([helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Add", ["r", "res"], ["y"])],
                          ("Relu", 3)),
        "conv-read-twice": ([helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Add", ["r", "c"], ["y"])],
                            (None, 3)),
    }
    for name, (tail, (act, n_inputs)) in cases.items():
        model, feeds = _epilogue_model(tail, seed=5)
        plan = compile_model(model, CompileOptions())
        convs = [s.node for s in plan.steps if s.phase == RUN and s.node.op_type == "Conv"]
        assert [(n.attrs.get("activation"), len(n.inputs)) for n in convs] == [(act, n_inputs)], name
        assert len([s for s in plan.steps if s.phase == RUN]) > 1, name
        np.testing.assert_allclose(run_local(model, feeds)[0], ort_run(model, feeds)[0], **TOL, err_msg=name)
