"""Small ONNX models the tests build: with onnx.helper, skl2onnx and the example script."""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
from make_mlp import make_mlp  # noqa: E402

__all__ = ["make_mlp", "graph_model", "chain_model", "sklearn_mlp", "ort_run", "F32"]
F32 = TensorProto.FLOAT


def graph_model(nodes, inputs, outputs, weights=None, opset: int = 17) -> bytes:
    """inputs/outputs: (name, elem_type, shape) triples; weights: name -> array."""
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (weights or {}).items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def chain_model(width: int = 512, depth: int = 8, seed: int = 0) -> bytes:
    """MatMul+Tanh layers: slow enough (ms per batch) to make requests queue."""
    rng = np.random.default_rng(seed)
    nodes, weights, x = [], {}, "x"
    for k in range(depth):
        weights[f"W{k}"] = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        nodes += [helper.make_node("MatMul", [x, f"W{k}"], [f"m{k}"]),
                  helper.make_node("Tanh", [f"m{k}"], [f"t{k}"])]
        x = f"t{k}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    return graph_model(nodes, [("x", F32, ["N", width])], [("y", F32, ["N", width])], weights)


def sklearn_mlp(seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A real exporter's model: scikit-learn's MLPRegressor through skl2onnx; and sample inputs."""
    import warnings

    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(seed)
    X = rng.random((200, 6)).astype(np.float32)
    y = X @ rng.random(6) + np.sin(X[:, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = MLPRegressor(hidden_layer_sizes=(32, 16), max_iter=200, random_state=seed).fit(X, y)
    return to_onnx(reg, X[:1]).SerializeToString(), X[:16]


def ort_run(model: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def mlp_bytes(**kw) -> bytes:
    return make_mlp(**kw).SerializeToString()


def with_external_data(model: bytes) -> bytes:
    m = onnx.load_from_string(model)
    init = m.graph.initializer[0]
    init.data_location = TensorProto.EXTERNAL
    init.ClearField("raw_data")
    init.ClearField("float_data")
    e = init.external_data.add()
    e.key, e.value = "location", "weights.bin"
    return m.SerializeToString()


def run_local(model: bytes, feeds: dict[str, np.ndarray], **options) -> list[np.ndarray]:
    """Load, execute and unload in process, through the registry the daemon uses."""
    from memserve.device import CpuDevice
    from memserve.registry import LoadOptions, Registry

    reg = Registry(CpuDevice(1 << 30))
    try:
        reg.load(model, LoadOptions(name="m", **options))
        result = reg.execute("m", feeds)
        return [np.frombuffer(o.data, o.dtype).reshape(o.shape) for o in result.outputs]
    finally:
        reg.close()
        assert reg.device.used() == 0


def op_chain(n: int, op: str = "Relu") -> bytes:
    """x -> op -> op -> ... -> y, n nodes of a one-input op on a [4, 8] float tensor; Transpose swaps
    the two axes each time. Long chains test that loading stays near-linear in the node count."""
    attrs = {"perm": [1, 0]} if op == "Transpose" else {}
    names = ["x"] + [f"t{k}" for k in range(1, n)] + ["y"]
    nodes = [helper.make_node(op, [names[k]], [names[k + 1]], name=f"n{k}", **attrs) for k in range(n)]
    out = [8, 4] if op == "Transpose" and n % 2 else [4, 8]
    return graph_model(nodes, [("x", F32, [4, 8])], [("y", F32, out)])
