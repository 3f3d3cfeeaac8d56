"""Conv-heavy models with other processes keeping cores busy: memserve's engine and onnxruntime.

    python bench/busy.py [--threads 0 1 2] [--busy 0 1 2] [--repeat 10] [--budget 20]
                         [--filter NAME]

For each number of competing processes (`python -c "while True: pass"`, pinned
nowhere) and each thread count, the median ms of one execution through
memserve's engine in process (the registry's execute path, BLAS threads
limited with threadpoolctl; 0 leaves OpenBLAS at its default of all cores) and
of an onnxruntime session (intra_op_num_threads; 0 is its default of all
physical cores), and how much slower than idle each got ("x idle"). "other"
is how many cores the rest of the machine used during that measurement (from
/proc/stat), so that a run on a shared machine shows which cells it disturbed.

A configuration that collapses can take seconds per call, so each one runs
`--repeat` calls or stops after `--budget` seconds, whichever comes first (at
least 3 calls); "n" is how many calls its median is of.

The header says which BLAS and kernel numpy uses (threadpoolctl) and the
OPENBLAS_* / OMP_* variables set; this benchmark changes none of them.
"""
from __future__ import annotations

import argparse
import atexit
import os
import pathlib
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def models() -> dict:
    from zoo import _ppocr, build

    return {"resnet18 224x224": lambda: build("resnet18"),
            "pp-ocr det 640x640": lambda: _ppocr("ch_PP-OCRv4_det_infer.onnx", (1, 3, 640, 640))}


def timed(fn, repeat: int, budget: float) -> tuple[float, int]:
    """(median ms, calls) of up to `repeat` calls after one warm-up, stopping after `budget` s
    once at least 3 calls are in."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, len(times)


def _busy_jiffies() -> int:
    """Non-idle CPU time of the whole machine, in clock ticks."""
    with open("/proc/stat") as fh:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, fh.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def _proc_jiffies(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return 0


class Busy:
    """`n` processes that each keep one core busy, wherever the scheduler puts them."""

    def __init__(self, n: int):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
        atexit.register(self.stop)
        time.sleep(0.5 if n else 0)

    def jiffies(self) -> int:
        """CPU time this process and the competing ones used so far, in clock ticks."""
        return _proc_jiffies("self") + sum(_proc_jiffies(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs = []


def machine() -> list[str]:
    from threadpoolctl import threadpool_info

    lines = [f"cpus: os.cpu_count() {os.cpu_count()}, affinity {len(os.sched_getaffinity(0))}, "
             f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    for p in threadpool_info():
        whose = " (numpy's: memserve's kernels)" if "numpy" in p["filepath"] else ""
        lines.append(f"{p['user_api']}: {p['internal_api']} {p['version']}, kernel {p.get('architecture')}, "
                     f"{p['num_threads']} threads ({p.get('threading_layer')}), "
                     f"{pathlib.Path(p['filepath']).name}{whose}")
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "GOTO", "MKL_"))}
    lines.append("environment: " + (", ".join(f"{k}={v}" for k, v in sorted(env.items())) or
                                    "no OPENBLAS_* / OMP_* / MKL_* variables set"))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 2], help="competing processes; 0 is idle")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds after which a configuration stops")
    ap.add_argument("--filter", default="")
    a = ap.parse_args()
    warnings.simplefilter("ignore")

    import onnxruntime as ort

    from memserve.device import CpuDevice
    from memserve import hostmem
    from memserve.kernels import parallel
    from memserve.registry import LoadOptions, Registry

    hostmem.keep_tensor_memory()  # the allocator settings memserved runs with

    for line in machine():
        print("# " + line)
    print(f"# onnxruntime {ort.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}", flush=True)

    regs = {}  # threads -> a registry whose models were planned for that many kernel threads
    runs: dict[tuple[str, str, int], object] = {}  # (model, engine, threads) -> call
    for name, make in models().items():
        if a.filter not in name:
            continue
        data, feeds = make()
        for threads in a.threads:
            parallel.set_threads(threads)  # as memserved --threads: before the load, which plans per thread
            reg = regs.setdefault(threads, Registry(CpuDevice(8 << 30)))
            reg.load(data, LoadOptions(name=name, input_shapes={k: v.shape for k, v in feeds.items()}))
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            runs[name, "memserve", threads] = lambda name=name, feeds=feeds, reg=reg: reg.execute(name, feeds)
            runs[name, "onnxruntime", threads] = lambda sess=sess, feeds=feeds: sess.run(None, feeds)

    results: dict[tuple[str, str, int, int], tuple[float, int]] = {}
    elsewhere: dict[tuple[str, str, int, int], float] = {}  # cores other processes used meanwhile
    for busy in a.busy:
        competing = Busy(busy)
        try:
            for key, fn in runs.items():
                # memserve's BLAS limit for its runs; 0 (None) leaves OpenBLAS as it started
                c0, all0, ours0 = time.perf_counter(), _busy_jiffies(), competing.jiffies()
                if key[1] == "memserve":
                    parallel.set_threads(key[2])
                results[(*key, busy)] = timed(fn, a.repeat, a.budget)
                elsewhere[(*key, busy)] = ((_busy_jiffies() - all0) - (competing.jiffies() - ours0)) \
                    / os.sysconf("SC_CLK_TCK") / (time.perf_counter() - c0)
                print(f"#   {key[0]} {key[1]} threads {key[2]} busy {busy}: "
                      f"{results[(*key, busy)][0]:.1f} ms", file=sys.stderr, flush=True)
        finally:
            competing.stop()
    for reg in regs.values():
        reg.close()

    print(f"{'model':<20} {'engine':<12} {'thr':>3} " +
          " ".join(f"{f'busy {b} ms':>11} {'n':>3} {'x idle':>6} {'other':>5}" for b in a.busy))
    for name, engine, threads in runs:
        idle = results.get((name, engine, threads, 0), (None,))[0]
        cells = []
        for b in a.busy:
            ms, n = results[name, engine, threads, b]
            cells.append(f"{ms:>11.1f} {n:>3} {ms / idle if idle else float('nan'):>6.2f} "
                         f"{max(0.0, elsewhere[name, engine, threads, b]):>5.2f}")
        print(f"{name:<20} {engine:<12} {threads:>3} " + " ".join(cells), flush=True)
    print("# other: cores that processes other than this benchmark and its competing ones used meanwhile "
          "(/proc/stat); a cell with more than about 0.1 was not measured under the stated condition")


if __name__ == "__main__":
    main()
