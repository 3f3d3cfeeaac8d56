"""Dense's two paths against each other: where the compiled small product stops paying.

    python bench/dense_kernels.py

Per (rows, K, N): microseconds of `kernels.dense.dense` (the compiled pass) and of numpy's BLAS sgemm
plus the compiled bias + Relu epilogue (`bias_act`), at one thread, and which one Dense picks
(`dense.compiled_path`). The pick should be the faster one, or close to it, on every row.
"""
from __future__ import annotations

import timeit

import numpy as np


def main() -> None:
    from memserve.kernels import dense, parallel

    parallel.set_threads(1)
    small, blas_epi = dense.dense.ensure(), dense.bias_act.ensure()
    print(f"{'rows':>5} {'K':>5} {'N':>5} {'MACs':>9} {'compiled us':>11} {'blas us':>8} {'picked':>8}")
    for m, k, n in [(1, 64, 10), (1, 64, 128), (1, 256, 256), (1, 1024, 1024), (4, 512, 512), (16, 64, 64),
                    (16, 64, 256), (64, 20, 100), (64, 100, 100), (64, 256, 256), (256, 256, 256)]:
        r = np.random.default_rng(0)
        x, w = r.standard_normal((m, k)).astype(np.float32), r.standard_normal((k, n)).astype(np.float32)
        b, y = r.standard_normal(n).astype(np.float32), np.empty((m, n), np.float32)

        def blas() -> None:
            np.matmul(x, w, out=y)
            blas_epi(y, b, 1)

        reps = max(20, 200_000 // max(m * k * n // 1000, 1))
        ours = min(timeit.repeat(lambda: small(x, w, b, 1, y), number=reps, repeat=5)) / reps * 1e6
        theirs = min(timeit.repeat(blas, number=reps, repeat=5)) / reps * 1e6
        picked = "compiled" if dense.compiled_path(m, k, n) else "blas"
        print(f"{m:>5} {k:>5} {n:>5} {m * k * n:>9} {ours:>11.2f} {theirs:>8.2f} {picked:>8}")


if __name__ == "__main__":
    main()
