"""memserve's engine against onnxruntime on the real-model suite, same inputs, same threads.

    python bench/engine.py [--threads 1 2] [--repeat 20] [--filter NAME]

Per model and thread count: median ms of memserve's engine (in process: the
registry's execute path minus gRPC) and of an onnxruntime session, their
ratio, memserve's planned work bytes and its lower bound, and how much the
process's RSS grew when onnxruntime created its session and ran once. Last,
the engine's dispatch overhead per executed node: the same steps with every
kernel replaced by a no-op.
"""
from __future__ import annotations

import argparse
import gc
import pathlib
import statistics
import sys
import time
import warnings

import numpy as np


ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def dispatch_us(reg, m, feeds) -> float:
    """Microseconds per executed node with the kernels taken out: the engine's own overhead (its
    generated run function, engine._generate, with every kernel a no-op)."""
    from memserve.engine import _generate

    plan = m.plan
    key = plan.key_of(feeds)
    with reg.context:
        binding = m.executable.binding(key, m.workspace)
    noop = [("call", s.guard, lambda i, o: None, s.inputs, s.outputs + s.scratch, False)
            for s in plan.steps if s.phase == "run" and not s.op.alias]
    run, _ = _generate(plan, binding.template, noop, binding.io)
    outs = [np.empty(shape, dtype) for _, dtype, shape, _ in binding.io]
    reps = max(1, 20000 // max(len(noop), 1))
    run(feeds, outs)
    t = time.perf_counter()
    for _ in range(reps):
        run(feeds, outs)
    return (time.perf_counter() - t) / reps / max(len(noop), 1) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--filter", default="")
    ap.add_argument("--batch", type=int, default=0,
                    help="repeat each example input to this many rows (models with an open batch dimension)")
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    import onnxruntime as ort
    from memserve.device import CpuDevice
    from memserve import hostmem
    from memserve.kernels import parallel
    from memserve.registry import LoadOptions, Registry

    hostmem.keep_tensor_memory()  # the allocator settings memserved runs with
    from zoo import SUITE, build

    print(f"{'model':<28} {'thr':>3} {'memserve ms':>11} {'ort ms':>8} {'ratio':>6} "
          f"{'work B':>11} {'lower bd B':>11} {'ort RSS +B':>11} {'kernels':>7} {'us/node':>7}")
    for name in SUITE:
        if a.filter not in name:
            continue
        data, feeds = build(name)
        if a.batch:
            feeds = {k: np.repeat(v, a.batch, axis=0) if v.shape[0] == 1 else v for k, v in feeds.items()}
        shapes = {k: v.shape for k, v in feeds.items()}
        for threads in a.threads:
            # As memserved --threads does: BLAS at one thread, the kernel team and numba at `threads`.
            # Set before the load: a convolution's column buffer is planned per thread.
            parallel.set_threads(threads)
            reg = Registry(CpuDevice(8 << 30))
            m = reg.load(data, LoadOptions(name="m", input_shapes=shapes))
            steps = sum(1 for s in m.plan.steps if s.phase == "run" and not s.op.alias)
            overhead = dispatch_us(reg, m, feeds)
            ours = median_ms(lambda: reg.execute("m", feeds), a.repeat)
            work, lower = m.plan.work_size, m.plan.work_lower_bound
            reg.close()
            gc.collect()
            before = rss()
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            sess.run(None, feeds)
            grown = rss() - before
            theirs = median_ms(lambda: sess.run(None, feeds), a.repeat)
            print(f"{name:<28} {threads:>3} {ours:>11.3f} {theirs:>8.3f} {ours / theirs:>6.2f} "
                  f"{work:>11} {lower:>11} {grown:>11} {steps:>7} {overhead:>7.2f}", flush=True)
    parallel.set_threads(1)


if __name__ == "__main__":
    main()
