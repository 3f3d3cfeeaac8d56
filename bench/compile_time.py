"""Load-time compile of long chains: memserve before and after the near-linear planner, and onnxruntime.

    python bench/compile_time.py [--sizes 1000 2000 ... 100000] [--op Transpose] [--before-max 16000]

Per chain of N nodes (x -> op -> op -> ... -> y on a 4x8 float tensor): the model's size, seconds
memserve's compile_model takes with the quadratic first-fit it used before (the reference copy in
tests/test_planner.py, patched in; only up to --before-max nodes, since it grows as N^2) and with
today's planner, how much of that the planner is and how many requests it visited, and seconds
onnxruntime takes to create an InferenceSession from the same bytes (one thread). Ratios: before
over after, and after over onnxruntime. Each figure is the median of a few runs (one run from 16k).
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def chain(n: int, op: str) -> bytes:
    from models import op_chain

    return op_chain(n, op)


def median_s(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000, 16000, 32000, 100000])
    ap.add_argument("--op", default="Transpose", choices=["Transpose", "Relu"])
    ap.add_argument("--before-max", type=int, default=16000, help="largest chain timed with the old planner")
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    import onnxruntime as ort

    import memserve.model.compile as compile_module
    from memserve.model import compile_model
    from memserve.planner import MemoryPlan, live_peak, plan_offsets
    from test_planner import reference_plan

    def old_planner(requests, alignment=64):
        offsets, size = reference_plan(requests, alignment)
        return MemoryPlan(offsets, size, *live_peak(requests, alignment))

    planner_s: list[float] = []
    plans: list[MemoryPlan] = []

    def timed_planner(requests, *args, **kwargs):
        t = time.perf_counter()
        plan = plan_offsets(requests, *args, **kwargs)
        planner_s.append(time.perf_counter() - t)
        plans.append(plan)
        return plan

    def compile_with(planner, data: bytes) -> None:
        compile_module.plan_offsets = planner
        try:
            compile_model(data)
        finally:
            compile_module.plan_offsets = plan_offsets

    def ort_session(data: bytes) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    compile_with(plan_offsets, chain(16, a.op))  # imports and first-use caches
    ort_session(chain(16, a.op))
    print(f"{a.op} chains; before: the quadratic first-fit, after: today's planner; ort: InferenceSession()")
    print(f"{'nodes':>7} {'model B':>9} {'before s':>9} {'after s':>8} {'before/after':>12} "
          f"{'planner s':>9} {'visits':>9} {'ort s':>7} {'after/ort':>9}")
    for n in a.sizes:
        data = chain(n, a.op)
        runs = 3 if n < 16000 else 1
        before = median_s(lambda: compile_with(old_planner, data), runs) if n <= a.before_max else None
        planner_s.clear()
        after = median_s(lambda: compile_with(timed_planner, data), runs)
        theirs = median_s(lambda: ort_session(data), runs)
        before_s = f"{before:>9.3f}" if before is not None else f"{'-':>9}"
        speedup = f"{before / after:>12.1f}" if before is not None else f"{'-':>12}"
        print(f"{n:>7} {len(data):>9} {before_s} {after:>8.3f} {speedup} {statistics.median(planner_s):>9.3f} "
              f"{plans[-1].visits:>9} {theirs:>7.3f} {after / theirs:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
