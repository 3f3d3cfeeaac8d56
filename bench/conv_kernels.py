"""One convolution at a time: memserve's kernel against onnxruntime's, in GFLOP/s.

    python bench/conv_kernels.py [--threads 1 2] [--repeat 30]

The layers are the shapes that dominate the suite's conv models: ResNet-18's
3x3 and strided 1x1 convolutions, MobileNetV3-small's depthwise 3x3 and 5x5,
and a grouped one. Each runs as a one-node model (Conv + bias) through the
registry in process, as bench/engine.py runs whole models; onnxruntime runs the
same model with the same thread count. FLOP counts 2 per multiply-add.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from engine import median_ms  # noqa: E402 - bench/engine.py, beside this file

# name, (N, C, H, W), (M, kernel, stride, pad, group)
LAYERS = [
    ("resnet 3x3 64@56", (1, 64, 56, 56), (64, 3, 1, 1, 1)),
    ("resnet 3x3 128@28", (1, 128, 28, 28), (128, 3, 1, 1, 1)),
    ("resnet 3x3 256@14", (1, 256, 14, 14), (256, 3, 1, 1, 1)),
    ("resnet 3x3 512@7", (1, 512, 7, 7), (512, 3, 1, 1, 1)),
    ("resnet 3x3 s2 64->128", (1, 64, 56, 56), (128, 3, 2, 1, 1)),
    ("resnet 1x1 s2 64->128", (1, 64, 56, 56), (128, 1, 2, 0, 1)),
    ("resnet 7x7 s2 stem", (1, 3, 224, 224), (64, 7, 2, 3, 1)),
    ("1x1 96->576 @7", (1, 96, 7, 7), (576, 1, 1, 0, 1)),
    ("depthwise 3x3 s2 16@112", (1, 16, 112, 112), (16, 3, 2, 1, 16)),
    ("depthwise 5x5 96@14", (1, 96, 14, 14), (96, 5, 1, 2, 96)),
    ("grouped 3x3 g4 64@28", (1, 64, 28, 28), (64, 3, 1, 1, 4)),
]


def conv_model(x_shape, spec) -> tuple[bytes, float]:
    from onnx import helper

    from models import F32, graph_model

    m, k, stride, pad, group = spec
    c = x_shape[1]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((m, c // group, k, k)).astype(np.float32) * 0.1
    b = rng.standard_normal(m).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[stride, stride],
                            pads=[pad] * 4, group=group)
    oh = (x_shape[2] + 2 * pad - k) // stride + 1
    ow = (x_shape[3] + 2 * pad - k) // stride + 1
    flops = 2.0 * m * oh * ow * (c // group) * k * k * x_shape[0]
    model = graph_model([node], [("x", F32, list(x_shape))], [("y", F32, [x_shape[0], m, oh, ow])],
                        {"w": w, "b": b})
    return model, flops


def median_s(fn, repeat: int) -> float:
    return median_ms(fn, repeat) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=30)
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    import onnxruntime as ort

    from memserve.device import CpuDevice
    from memserve import hostmem
    from memserve.kernels import parallel
    from memserve.registry import LoadOptions, Registry

    hostmem.keep_tensor_memory()  # the allocator settings memserved runs with

    print(f"{'layer':<26} {'thr':>3} {'memserve ms':>11} {'ort ms':>8} {'ratio':>6} {'GFLOP/s':>8} {'ort GFLOP/s':>11}")
    for name, x_shape, spec in LAYERS:
        model, flops = conv_model(x_shape, spec)
        x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
        for threads in a.threads:
            parallel.set_threads(threads)  # as memserved --threads, before the load (columns are planned per thread)
            reg = Registry(CpuDevice(1 << 30))
            reg.load(model, LoadOptions(name="m"))
            ours = median_s(lambda: reg.execute("m", {"x": x}), a.repeat)
            reg.close()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            theirs = median_s(lambda: sess.run(None, {"x": x}), a.repeat)
            print(f"{name:<26} {threads:>3} {ours * 1e3:>11.3f} {theirs * 1e3:>8.3f} {ours / theirs:>6.2f} "
                  f"{flops / ours / 1e9:>8.1f} {flops / theirs / 1e9:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
