"""Open dimensions with declared maxima (issue 12): planned at the maxima, any request within them runs,
each dimension on its own; hostile sizes, disagreeing shared dimensions, shapes that would outgrow their
planned bytes and a client cycling through sizes are refused or bounded."""
import io
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from memserve.device import CpuDevice
from memserve.engine import MAX_BINDINGS
from memserve.errors import InputMismatch, InvalidArgument
from memserve.model import CompileOptions, compile_model
from memserve.model.plan import MAX_SHAPE_KEYS
from memserve.registry import Batching, LoadOptions, Registry

from models import F32, graph_model, ort_run, run_local


def relu_seq():
    return graph_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, ["N", "seq"])], [("y", F32, ["N", "seq"])])


def test_planned_at_the_maxima_and_every_size_within_runs(reg):
    m = reg.load(relu_seq(), LoadOptions(name="m", input_shapes={"x": (4, 16)}))
    assert m.plan.inputs[0].shape == (-1, -1) and m.plan.inputs[0].max_shape == (4, 16)
    assert m.plan.outputs[0].shape == (-1, -1) and m.plan.outputs[0].max_shape == (4, 16)
    assert [d.name for d in m.plan.dims] == ["seq"]
    for shape in [(1, 1), (2, 7), (4, 16), (3, 16), (4, 1)]:
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        out = reg.execute("m", {"x": x}).outputs[0]
        assert out.shape == shape
        np.testing.assert_array_equal(np.frombuffer(out.data, np.float32).reshape(shape), np.maximum(x, 0))


@pytest.mark.parametrize("shape,match", [((1, 17), r"dimension 1 \(seq\) is 17; this model was loaded for 1 to 16"),
                                         ((1, 0), r"dimension 1 \(seq\) is 0"), ((5, 3), "has batch 5"),
                                         ((0, 3), "has batch 0"), ((1, 2, 3), "must have shape"),
                                         ((2,), "must have shape"), ((1, 1 << 40), "is 1099511627776")])
def test_sizes_outside_the_maxima_are_refused(reg, shape, match):
    reg.load(relu_seq(), LoadOptions(name="m", input_shapes={"x": (4, 16)}))
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape, [0] * len(shape))  # no real bytes
    with pytest.raises(InputMismatch, match=match):
        reg.execute("m", {"x": x})
    assert reg.execute("m", {"x": np.ones((1, 3), np.float32)}).outputs[0].shape == (1, 3)  # still serving


def shared_seq():
    nodes = [helper.make_node("Add", ["ids", "mask"], ["y"])]
    return graph_model(nodes, [("ids", F32, ["N", "seq"]), ("mask", F32, ["N", "seq"])], [("y", F32, ["N", "seq"])])


def test_inputs_sharing_a_named_dimension_must_agree(reg):
    reg.load(shared_seq(), LoadOptions(name="m", input_shapes={"ids": (2, 8)}))  # mask's seq: the same dimension
    a, b = np.ones((1, 5), np.float32), np.ones((1, 6), np.float32)
    with pytest.raises(InputMismatch, match="inputs disagree on 'seq': 5 and 6"):
        reg.execute("m", {"ids": a, "mask": b})
    assert reg.execute("m", {"ids": a, "mask": a}).outputs[0].shape == (1, 5)


def test_a_shared_dimension_given_two_maxima_is_refused():
    with pytest.raises(InvalidArgument, match="dimension 'seq' two maxima: 8 .'ids'. and 9 .'mask'."):
        compile_model(shared_seq(), CompileOptions(input_shapes={"ids": (2, 8), "mask": (2, 9)}))


def test_placeholder_names_do_not_tie_dimensions():
    # Paddle writes "?" for every unnamed dimension; tf2onnx "unk__N": neither names a dimension.
    nodes = [helper.make_node("ReduceSum", ["a"], ["ra"], keepdims=0), helper.make_node("ReduceSum", ["b"], ["rb"], keepdims=0)]
    model = graph_model(nodes, [("a", F32, [1, "?"]), ("b", F32, [1, "unk__3"])], [("ra", F32, []), ("rb", F32, [])],
                        opset=13)
    plan = compile_model(model, CompileOptions(input_shapes={"a": (1, 8), "b": (1, 3)}))
    assert [d.max for d in plan.dims] == [8, 3]
    got = run_local(model, {"a": np.ones((1, 5), np.float32), "b": np.ones((1, 2), np.float32)},
                    input_shapes={"a": (1, 8), "b": (1, 3)})
    assert [float(g) for g in got] == [5.0, 2.0]


def test_a_tensor_that_would_outgrow_its_planned_bytes_is_refused(reg):
    # ConstantOfShape(20 - seq): 4 elements at the planned seq 16, 18 at seq 2. Planned for 4, so refused.
    nodes = [helper.make_node("Shape", ["x"], ["s"], start=1), helper.make_node("Sub", ["twenty", "s"], ["n"]),
             helper.make_node("ConstantOfShape", ["n"], ["y"], value=helper.make_tensor("v", F32, [1], [1.0]))]
    model = graph_model(nodes, [("x", F32, [1, "seq"])], [("y", F32, ["k"])],
                        {"twenty": np.array([20], np.int64)}, opset=17)
    reg.load(model, LoadOptions(name="m", input_shapes={"x": (1, 16)}))
    assert reg.execute("m", {"x": np.ones((1, 16), np.float32)}).outputs[0].shape == (4,)
    with pytest.raises(InvalidArgument, match=r"grows to \(18,\) at seq 2, past its planned \(4,\)"):
        reg.execute("m", {"x": np.ones((1, 2), np.float32)})


def test_a_client_cycling_through_sizes_keeps_bounded_caches(reg):
    m = reg.load(relu_seq(), LoadOptions(name="m", input_shapes={"x": (1, 300)}))
    for n in range(1, 301):
        reg.execute("m", {"x": np.ones((1, n), np.float32)})
    assert len(m.plan._infos) <= MAX_SHAPE_KEYS and len(m.workspace.bindings) <= MAX_BINDINGS
    assert reg.execute("m", {"x": -np.ones((1, 3), np.float32)}).outputs[0].data == bytes(12)


def test_dynamic_batching_merges_only_requests_of_one_shape(reg):
    reg.load(relu_seq(), LoadOptions(name="m", input_shapes={"x": (8, 16)}, batching=Batching(20_000, ())))
    results, errors = {}, []

    def call(k):
        x = np.full((1, 3 + k % 3), k, np.float32)
        try:
            results[k] = reg.execute("m", {"x": x}).outputs[0]
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, out in results.items():
        assert out.shape == (1, 3 + k % 3)
        assert np.all(np.frombuffer(out.data, np.float32) == k)


def conv_net():
    rng = np.random.default_rng(0)
    w = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "b1": rng.standard_normal(8).astype(np.float32),
         "w2": rng.standard_normal((4, 8, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["c2"], ["y"])]
    return graph_model(nodes, [("x", F32, ["N", 3, "H", "W"])], [("y", F32, ["N", 4, 1, 1])], w)


@pytest.mark.parametrize("shape", [(1, 3, 64, 48), (2, 3, 17, 23), (1, 3, 8, 8), (2, 3, 64, 9)])
def test_a_cnn_with_open_height_and_width_matches_onnxruntime(shape):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    model = conv_net()
    got = run_local(model, {"x": x}, input_shapes={"x": (2, 3, 64, 48)})[0]
    np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_work_memory_is_what_the_maxima_need():
    small = compile_model(conv_net(), CompileOptions(input_shapes={"x": (2, 3, 32, 24)}))
    large = compile_model(conv_net(), CompileOptions(input_shapes={"x": (2, 3, 64, 48)}))
    assert large.work_size == large.work_lower_bound and small.work_size == small.work_lower_bound
    assert large.work_size > 3 * small.work_size  # four times the pixels


def encoder():
    """A BERT-like block (attention with heads, LayerNorm, GELU feed-forward) exported with open batch and
    sequence: its reshapes take their sizes from Shape, recomputed per request shape."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out, self.ln = nn.Linear(32, 96), nn.Linear(32, 32), nn.LayerNorm(32)
            self.ff = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))

        def forward(self, x):
            b, s, d = x.shape
            q, k, v = self.qkv(x).reshape(b, s, 3, 4, 8).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1)
            x = self.ln(x + self.out((att @ v).transpose(1, 2).reshape(b, s, d)))
            return x + self.ff(x)

    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Block().eval(), (torch.randn(2, 16, 32),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N", 1: "seq"}, "y": {0: "N", 1: "seq"}})
    return buf.getvalue()


def test_an_exported_transformer_runs_every_sequence_length_within_its_maximum():
    model = encoder()
    reg = Registry(CpuDevice(1 << 30))
    try:
        m = reg.load(model, LoadOptions(name="m", input_shapes={"x": (2, 32, 32)}))
        assert m.plan.inputs[0].shape == (-1, -1, 32) and m.plan.outputs[0].shape == (-1, -1, 32)
        for shape in [(1, 5, 32), (2, 17, 32), (2, 32, 32), (1, 1, 32)]:
            x = np.random.default_rng(shape[1]).standard_normal(shape).astype(np.float32)
            out = reg.execute("m", {"x": x}).outputs[0]
            got = np.frombuffer(out.data, np.float32).reshape(out.shape)
            np.testing.assert_allclose(got, ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
        with pytest.raises(InputMismatch, match=r"dimension 1 \(seq\) is 33"):
            reg.execute("m", {"x": np.zeros((1, 33, 32), np.float32)})
    finally:
        reg.close()
    assert reg.device.used() == 0


def test_describe_reports_open_dimensions_and_their_maxima(client):
    m = client.load(relu_seq(), name="open", input_shapes={"x": (4, 16)})
    try:
        spec = m.inputs[0]
        assert (spec.shape, spec.max_shape) == ((-1, -1), (4, 16))
        assert (m.outputs[0].shape, m.outputs[0].max_shape) == ((-1, -1), (4, 16))
        out = client.execute(m, {"x": -np.ones((3, 5), np.float32)})
        assert out["y"].shape == (3, 5) and not out["y"].any()
    finally:
        client.unload(m)


def test_v2_metadata_and_config_show_open_dimensions(daemon):
    import json
    import subprocess
    import sys

    with daemon.client() as c:
        m = c.load(relu_seq(), name="open2", input_shapes={"x": (4, 16)})
    script = ("import json, sys, tritonclient.grpc as g; c = g.InferenceServerClient(sys.argv[1]); "
              "md = c.get_model_metadata('open2', as_json=True); cf = c.get_model_config('open2', as_json=True); "
              "print(json.dumps([md['inputs'][0]['shape'], cf['config']['input'][0]['dims'], "
              "cf['config']['max_batch_size']]))")
    out = subprocess.run([sys.executable, "-c", script, daemon.target], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [["-1", "-1"], ["-1"], 4]
    with daemon.client() as c:
        c.unload(m)


def test_the_cli_loads_with_maxima_shows_them_and_infers_at_them(daemon, client, tmp_path):
    import subprocess
    import sys

    path = tmp_path / "relu.onnx"
    path.write_bytes(relu_seq())

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "memserve_client.cli", "--target", daemon.target, *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = cli("load", str(path), "--name", "relu", "--input-shape", "x=4,16")
    assert "input:       x float32 [N, <=16]" in out and "output:      y float32 [N, <=16]" in out
    assert cli("infer", "relu", "--random", "--batch", "2").startswith("y: float32 [2, 16]")


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(shape=st.lists(st.integers(0, 40), min_size=0, max_size=4), seq2=st.integers(0, 40))
def test_fuzz_request_shapes_are_answered_or_refused_cleanly(shape, seq2):
    """Any request shape: a result of that shape within the maxima, else InputMismatch; never a crash,
    never an output of a shape the request did not ask for."""
    reg = _fuzz_registry()
    x = np.ones(shape, np.float32)
    mask = np.ones(shape[:1] + [seq2] + shape[2:3], np.float32) if len(shape) == 3 else np.ones(shape, np.float32)
    try:
        out = reg.execute("fz", {"ids": x, "mask": mask}).outputs[0]
    except InputMismatch as exc:
        assert "input" in exc.message or "inputs disagree" in exc.message
        return
    assert len(shape) == 3 and 1 <= shape[0] <= 4 and 1 <= shape[1] <= 16 and shape[2] == 8 and seq2 == shape[1]
    assert out.shape == tuple(shape) and np.frombuffer(out.data, np.float32).min() == 2.0


_FUZZ: list[Registry] = []  # one registry for every example (Hypothesis runs them in one test call)


def _fuzz_registry() -> Registry:
    if not _FUZZ:
        nodes = [helper.make_node("Add", ["ids", "mask"], ["y"])]
        model = graph_model(nodes, [("ids", F32, ["N", "seq", 8]), ("mask", F32, ["N", "seq", 8])],
                            [("y", F32, ["N", "seq", 8])])
        r = Registry(CpuDevice(1 << 26))
        r.load(model, LoadOptions(name="fz", input_shapes={"ids": (4, 16, 8)}))
        _FUZZ.append(r)
    return _FUZZ[0]


def teardown_module():
    for r in _FUZZ:
        r.close()
        assert r.device.used() == 0
