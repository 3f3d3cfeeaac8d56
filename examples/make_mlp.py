"""Make examples/mlp.onnx: a 64-128-128-10 MLP classifier with an open batch dimension.

    python examples/make_mlp.py [OUT]
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_mlp(sizes=(64, 128, 128, 10), seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, weights, x = [], [], "x"
    for k, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(n_out)).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"W{k}"), numpy_helper.from_array(b, f"b{k}")]
        nodes.append(helper.make_node("Gemm", [x, f"W{k}", f"b{k}"], [f"h{k}"], name=f"fc{k}"))
        x = f"h{k}"
        if k < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"a{k}"], name=f"relu{k}"))
            x = f"a{k}"
    nodes.append(helper.make_node("Softmax", [x], ["probs"], axis=-1, name="softmax"))
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", sizes[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="memserve-examples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).with_name("mlp.onnx"))
    onnx.save_model(make_mlp(), out)
    print(f"wrote {out}")
