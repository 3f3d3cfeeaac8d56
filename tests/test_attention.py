"""Attention, RotaryEmbedding and RMSNormalization (opset 23) against onnxruntime: 3-D and 4-D inputs, GQA,
masks (boolean, float, shorter than the keys), causal with a past cache, soft-capping, qk_matmul_output,
and the hostile cases (shapes that do not fit, position ids out of range). The ONNX node tests of each,
their expanded forms included, run in tests/conformance."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.errors import InvalidArgument
from memserve.model import CompileOptions, compile_model

from models import graph_model, ort_run, run_local

F, B = TensorProto.FLOAT, TensorProto.BOOL
rng = np.random.default_rng(0)


def model_of(op, inputs, outputs, **attrs):
    node = helper.make_node(op, [n if s is not None else "" for n, _, s in inputs], [n for n, _, _ in outputs], **attrs)
    return graph_model([node], [(n, t, s) for n, t, s in inputs if s is not None], outputs, opset=23)


def feeds_for(inputs):
    out = {}
    for n, t, s in inputs:
        if s is not None:
            out[n] = rng.random(s) > 0.3 if t == B else rng.standard_normal(s).astype(np.float32)
    return out


def check(model, feeds, rtol=1e-4, reference=False):
    """Against onnxruntime, or ONNX's reference implementation for what onnxruntime refuses."""
    if reference:
        from onnx.reference import ReferenceEvaluator

        want = ReferenceEvaluator(model).run(None, feeds)
    else:
        want = ort_run(model, feeds)
    for got, w in zip(run_local(model, feeds), want):
        np.testing.assert_allclose(got, w, rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("case", ["4d", "gqa", "3d", "bool_mask", "float_mask_short", "causal_past", "softcap"])
def test_attention_matches_onnxruntime(case):
    b, sq, skv, d = 2, 4, 6, 8
    q, k, v = (b, 4, sq, d), (b, 4, skv, d), (b, 4, skv, d)
    attrs, extra, outs = {}, [], [("y", F, [b, 4, sq, d])]
    if case == "gqa":
        k, v = (b, 2, skv, d), (b, 2, skv, d)
    if case == "3d":
        q, k, v = (b, sq, 4 * d), (b, skv, 2 * d), (b, skv, 2 * d)
        attrs, outs = {"q_num_heads": 4, "kv_num_heads": 2}, [("y", F, [b, sq, 4 * d])]
    inputs = [("q", F, q), ("k", F, k), ("v", F, v)]
    if case == "bool_mask":
        inputs.append(("mask", B, (sq, skv)))
    if case == "float_mask_short":
        inputs.append(("mask", F, (b, 1, sq, skv - 2)))  # shorter than the keys: padded with -inf
    if case == "causal_past":
        attrs["is_causal"] = 1
        inputs += [("mask", F, None), ("pk", F, (b, 4, 3, d)), ("pv", F, (b, 4, 3, d))]
        outs += [("pres_k", F, [b, 4, skv + 3, d]), ("pres_v", F, [b, 4, skv + 3, d]),
                 ("qk", F, [b, 4, sq, skv + 3])]
        attrs["qk_matmul_output_mode"] = 3
    if case == "softcap":
        attrs.update(softcap=2.0, scale=0.5)
    model = model_of("Attention", inputs, outs, **attrs)
    check(model, feeds_for(inputs), reference=case == "float_mask_short")  # onnxruntime wants a full mask


@pytest.mark.parametrize("left,right,causal,past", [(1, -1, 0, 0), (-1, 0, 0, 0), (2, 1, 0, 0), (1, 1, 1, 0),
                                                    (2, -1, 1, 3), (0, 0, 0, 0)])
def test_sliding_windows_match_the_reference(left, right, causal, past):
    b, sq, skv, d = 2, 5, 5, 8
    inputs = [("q", F, (b, 4, sq, d)), ("k", F, (b, 4, skv, d)), ("v", F, (b, 4, skv, d))]
    outs = [("y", F, [b, 4, sq, d])]
    if past:
        inputs += [("mask", F, None), ("pk", F, (b, 4, past, d)), ("pv", F, (b, 4, past, d))]
        outs += [("pres_k", F, [b, 4, skv + past, d]), ("pres_v", F, [b, 4, skv + past, d])]
    node = helper.make_node("Attention", [n if sh is not None else "" for n, _, sh in inputs], [n for n, _, _ in outs],
                            left_window_size=left, right_window_size=right, is_causal=causal)
    model = graph_model([node], [(n, t, sh) for n, t, sh in inputs if sh is not None], outs, opset=25)
    check(model, feeds_for(inputs), reference=True)


def test_a_window_below_minus_one_is_refused():
    model = graph_model([helper.make_node("Attention", ["q", "k", "v"], ["y"], left_window_size=-2)],
                        [("q", F, (1, 2, 3, 4)), ("k", F, (1, 2, 3, 4)), ("v", F, (1, 2, 3, 4))],
                        [("y", F, [1, 2, 3, 4])], opset=25)
    with pytest.raises(InvalidArgument, match="left_window_size must be -1"):
        compile_model(model, CompileOptions())


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rank", [3, 4])
def test_rotary_embedding_with_position_ids(interleaved, rank):
    b, heads, s, d = 2, 3, 5, 8
    x = (b, heads, s, d) if rank == 4 else (b, s, heads * d)
    attrs = {"interleaved": interleaved, "rotary_embedding_dim": 4}
    if rank == 3:
        attrs["num_heads"] = heads
    inputs = [("x", F, x), ("cos", F, (16, 2)), ("sin", F, (16, 2)), ("pos", TensorProto.INT64, (b, s))]
    model = model_of("RotaryEmbedding", inputs, [("y", F, list(x))], **attrs)
    feeds = feeds_for(inputs[:3])
    feeds["pos"] = rng.integers(0, 16, (b, s)).astype(np.int64)
    check(model, feeds)
    feeds["pos"][0, 0] = 16
    with pytest.raises(AssertionError, match="position id out of range"):  # run_local surfaces the error
        try:
            run_local(model, feeds)
        except InvalidArgument as exc:
            raise AssertionError(exc.message) from None


@pytest.mark.parametrize("axis", [-1, 1])
def test_rms_normalization(axis):
    inputs = [("x", F, (2, 3, 4)), ("scale", F, (3, 4) if axis == 1 else (4,))]
    model = model_of("RMSNormalization", inputs, [("y", F, [2, 3, 4])], axis=axis, epsilon=1e-3)
    check(model, feeds_for(inputs))


@pytest.mark.parametrize("inputs,attrs,match", [
    ([("q", F, (2, 4, 3, 8)), ("k", F, (2, 3, 5, 8)), ("v", F, (2, 3, 5, 8))], {}, "not a multiple"),
    ([("q", F, (2, 4, 3, 8)), ("k", F, (2, 4, 5, 7)), ("v", F, (2, 4, 5, 8))], {}, "do not fit"),
    ([("q", F, (2, 3, 32)), ("k", F, (2, 5, 32)), ("v", F, (2, 5, 32))], {}, "need q_num_heads"),
    ([("q", F, (2, 4, 3, 8)), ("k", F, (2, 4, 5, 8)), ("v", F, (2, 4, 5, 8)), ("m", F, (3, 9))], {},
     "must end in at most 5 keys"),
])
def test_attention_shapes_that_do_not_fit_are_refused_at_load(inputs, attrs, match):
    model = model_of("Attention", inputs, [("y", F, [2, 4, 3, 8])], **attrs)
    with pytest.raises(InvalidArgument, match=match):
        compile_model(model, CompileOptions())


def test_the_scores_are_planned_work_memory_not_a_hidden_temporary():
    inputs = [("q", F, (2, 4, 64, 8)), ("k", F, (2, 4, 96, 8)), ("v", F, (2, 4, 96, 8))]
    plan = compile_model(model_of("Attention", inputs, [("y", F, [2, 4, 64, 8])]), CompileOptions())
    scores = 2 * 4 * 64 * 96 * 4
    assert any(p.nbytes >= scores for p in plan.placements) and plan.work_size >= scores
    assert plan.work_size == plan.work_lower_bound
