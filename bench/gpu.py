"""The cuda device next to onnxruntime-gpu's CUDA execution provider: same models, same batches.

    python bench/gpu.py [--repeat 200] [--instances 8] [--out DIR]

Per model and batch (1 and 32): median ms of memserve's engine on the cuda device (in process: the
registry's execute path, inputs copied in and outputs copied out) and of an onnxruntime session on
CUDAExecutionProvider; the GPU memory each takes for the model (memserve: its books, checked against
cudaMemGetInfo; onnxruntime: cudaMemGetInfo before and after its session's first run); and for N instances
(memserve: one weight copy shared; onnxruntime: N sessions). Writes the table to DIR/gpu.md when --out is
given. Needs a GPU, `pip install 'memserve[cuda]' onnxruntime-gpu` (tools/gpu_check.sh does it all).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from engine import median_ms  # noqa: E402 - bench/engine.py, beside this file


def gpu_used() -> int:
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return total - free


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--out")
    a = ap.parse_args()
    import onnxruntime as ort
    from test_devices import transformer_block

    from memserve.device import make_device
    from memserve.registry import LoadOptions, Registry

    models = {"mlp": ((ROOT / "examples" / "mlp.onnx").read_bytes(), (64,)),
              "transformer block": (transformer_block(), (8, 16))}
    rows = ["| model | batch | memserve ms | onnxruntime-gpu ms | ratio | memserve bytes | onnxruntime bytes |",
            "|---|---|---|---|---|---|---|"]
    device = make_device("cuda:0", 1 << 30)
    reg = Registry(device)
    for name, (model, tail) in models.items():
        for batch in (1, 32):
            x = np.random.default_rng(batch).standard_normal((batch, *tail)).astype(np.float32)
            before = gpu_used()
            m = reg.load(model, LoadOptions(name=f"{name}-{batch}", max_batch=32))
            ours_bytes = m.plan.weight_size + m.plan.work_size
            ours = median_ms(lambda: reg.execute(m.name, {"x": x}), a.repeat)
            seen = gpu_used() - before
            g0 = gpu_used()
            sess = ort.InferenceSession(model, providers=["CUDAExecutionProvider"])
            sess.run(None, {"x": x})
            theirs_bytes = gpu_used() - g0
            theirs = median_ms(lambda: sess.run(None, {"x": x}), a.repeat)
            rows.append(f"| {name} | {batch} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} | {ours_bytes} "
                        f"(GPU saw {seen}) | {theirs_bytes} |")
            reg.unload(m.name)
            del sess
    model = models["mlp"][0]
    g0 = gpu_used()
    reg.load(model, LoadOptions(name="many", max_batch=32, instances=a.instances))
    ours_n = gpu_used() - g0
    g0 = gpu_used()
    sessions = [ort.InferenceSession(model, providers=["CUDAExecutionProvider"]) for _ in range(a.instances)]
    for s in sessions:
        s.run(None, {"x": np.ones((32, 64), np.float32)})
    theirs_n = gpu_used() - g0
    rows += ["", f"{a.instances} instances of the mlp at batch 32: memserve {ours_n} bytes (one weight copy), "
                 f"onnxruntime-gpu {theirs_n} bytes ({a.instances} sessions)"]
    reg.close()
    table = "\n".join(rows)
    print(table)
    if a.out:
        pathlib.Path(a.out).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(a.out) / "gpu.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
