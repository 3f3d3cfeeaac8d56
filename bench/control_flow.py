"""Control flow next to onnxruntime: a torch-scripted recurrence (a Loop over an open sequence) and an If
whose condition comes with the request, same inputs, one thread.

    python bench/control_flow.py [--repeat 200]

Per case: median us of memserve's engine (in process: the registry's execute path minus gRPC) and of an
onnxruntime session, their ratio, and memserve's planned work bytes, which for the Loop do not grow with the
sequence length (the body is planned once and run per iteration).
"""
from __future__ import annotations

import argparse
import io
import pathlib
import sys
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from engine import median_ms  # noqa: E402 - bench/engine.py, beside this file


def recurrence(hidden: int) -> bytes:
    import torch

    class Recur(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(hidden, hidden)

        def forward(self, x):
            h = torch.zeros_like(x[0])
            for i in range(x.size(0)):
                h = torch.tanh(self.w(h) + x[i])
            return h

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.script(Recur()), (torch.randn(8, hidden),), f, input_names=["x"],
                          output_names=["h"], dynamic_axes={"x": {0: "seq"}}, dynamo=False)
    return f.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    a = ap.parse_args()
    import onnxruntime as ort

    from test_control_flow import if_model

    from memserve.device import CpuDevice
    from memserve.registry import LoadOptions, Registry

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    hidden = 64
    cases = [(f"loop seq {n} hidden {hidden}", recurrence(hidden), {"x": (n, hidden)},
              {"x": np.random.default_rng(n).standard_normal((n, hidden)).astype(np.float32)}) for n in (8, 64)]
    cases.append(("if (runtime condition)", if_model(), {},
                  {"x": np.ones((2, 3), np.float32), "c": np.array(True)}))
    reg = Registry(CpuDevice(1 << 30))
    print(f"{'case':<28} {'memserve us':>12} {'ort us':>9} {'ratio':>6} {'work bytes':>11}")
    for name, model, shapes, feeds in cases:
        m = reg.load(model, LoadOptions(name=name, input_shapes={"x": (64, hidden)} if shapes else {}))
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        ours = median_ms(lambda: reg.execute(name, feeds), a.repeat) * 1000
        theirs = median_ms(lambda: sess.run(None, feeds), a.repeat) * 1000
        print(f"{name:<28} {ours:>12.1f} {theirs:>9.1f} {ours / theirs:>6.2f} {m.plan.work_size:>11}")
    reg.close()


if __name__ == "__main__":
    main()
