"""Plan-time fusions: Conv+BatchNorm folding, Conv epilogues, decomposed LayerNorm and Gelu recognised (Dense: test_dense.py)."""
import io
import warnings

import numpy as np
import pytest
from onnx import helper

from memserve.model import CompileOptions, compile_model
from memserve.model.plan import RUN

from models import F32, graph_model, ort_run, run_local


def run_ops(plan):
    return [s.node.op_type for s in plan.steps if s.phase == RUN]


def test_batchnorm_after_conv_is_folded_into_its_weights():
    rng = np.random.default_rng(0)
    c, m = 3, 4
    weights = {"w": rng.standard_normal((m, c, 3, 3)).astype(np.float32), "b": rng.standard_normal(m).astype(np.float32),
               "scale": rng.random(m).astype(np.float32) + 0.5, "bias": rng.standard_normal(m).astype(np.float32),
               "mean": rng.standard_normal(m).astype(np.float32), "var": rng.random(m).astype(np.float32) + 0.5}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"], epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["y"])]
    model = graph_model(nodes, [("x", F32, ["N", c, 8, 8])], [("y", F32, ["N", m, 8, 8])], weights)
    plan = compile_model(model, CompileOptions(max_batch=2))
    assert run_ops(plan) == ["Conv"]  # the Relu too, as the Conv's fused epilogue
    x = rng.standard_normal((2, c, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_local(model, {"x": x}, max_batch=2)[0], ort_run(model, {"x": x})[0],
                               rtol=1e-4, atol=1e-5)


def test_batchnorm_whose_input_is_also_read_elsewhere_stays():
    rng = np.random.default_rng(1)
    p = {k: rng.random(2).astype(np.float32) + 0.5 for k in ("scale", "bias", "mean", "var")}
    p["w"] = rng.standard_normal((2, 2, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"]),
             helper.make_node("Add", ["n", "c"], ["y"])]
    model = graph_model(nodes, [("x", F32, [1, 2, 3, 3])], [("y", F32, [1, 2, 3, 3])], p)
    assert run_ops(compile_model(model)) == ["Conv", "BatchNormalization", "Add"]


def test_torch_layernorm_and_gelu_below_opset_17_become_single_steps():
    torch = pytest.importorskip("torch")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.fc, self.act = torch.nn.LayerNorm(32), torch.nn.Linear(32, 32), torch.nn.GELU()

        def forward(self, x):
            return self.act(self.fc(self.ln(x)))

    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Block().eval(), (torch.randn(2, 5, 32),), buf, dynamo=False, opset_version=14,
                          input_names=["x"], dynamic_axes={"x": {0: "N"}})
    model = buf.getvalue()
    assert run_ops(compile_model(model, CompileOptions(max_batch=2))) == ["LayerNormalization", "Dense", "Gelu"]
    x = np.random.default_rng(2).standard_normal((2, 5, 32)).astype(np.float32)
    np.testing.assert_allclose(run_local(model, {"x": x}, max_batch=2)[0], ort_run(model, {"x": x})[0],
                               rtol=1e-4, atol=1e-5)
