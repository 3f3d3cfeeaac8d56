"""A 512 MiB model streams, loads and answers (slow: CI runs it too)."""
import numpy as np
import pytest
from onnx import helper

from models import F32, graph_model


@pytest.mark.slow
def test_half_gigabyte_model_loads_in_chunks_and_runs(make_daemon):
    width, depth = 4096, 8
    rng = np.random.default_rng(0)
    weights = {f"W{k}": (rng.standard_normal((width, width), dtype=np.float32) / 64) for k in range(depth)}
    nodes, x = [], "x"
    for k in range(depth):
        nodes += [helper.make_node("MatMul", [x, f"W{k}"], [f"m{k}"]), helper.make_node("Tanh", [f"m{k}"], [f"t{k}"])]
        x = f"t{k}"
    model = graph_model(nodes, [("x", F32, [1, width])], [(x, F32, [1, width])], weights)
    assert len(model) > 512 << 20
    d = make_daemon("--device-memory", "1GiB")
    with d.client(timeout=300) as c:
        m = c.load(model, name="big")
        assert m.weight_size == depth * width * width * 4
        inp = rng.standard_normal((1, width), dtype=np.float32)
        want = inp
        for k in range(depth):
            want = np.tanh(want @ weights[f"W{k}"])
        np.testing.assert_allclose(c.execute(m, {"x": inp})[x], want, rtol=1e-4, atol=1e-5)
        assert c.unload(m) == m.weight_size + m.work_size
