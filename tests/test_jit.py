"""Compiled kernels (kernels/jit.py): compiled once, from declared types only, cached on disk."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from memserve.kernels import jit


@jit.compiled("void(float32[::1], float32[::1])")
def _double(x, y):
    for i in range(x.shape[0]):
        y[i] = 2 * x[i]


def test_a_kernel_compiles_once_for_its_declared_types_and_refuses_others():
    fn = _double.ensure()
    assert _double.ensure() is fn  # compiled once
    x = np.arange(5, dtype=np.float32)
    y = np.empty_like(x)
    fn(x, y)
    assert y.tolist() == [0, 2, 4, 6, 8]
    with pytest.raises(TypeError):  # another dtype would need a compile: refused, never compiled on a request
        fn(x.astype(np.float64), y.astype(np.float64))
    assert len(fn.signatures) == 1


def test_compiled_code_is_cached_in_the_kernel_cache(tmp_path):
    code = textwrap.dedent("""
        import numpy as np
        from memserve.kernels import jit

        @jit.compiled("void(float32[::1], float32[::1])")
        def inc(x, y):
            for i in range(x.shape[0]):
                y[i] = x[i] + 1

        inc.ensure()
        print(inc.fn.stats.cache_hits)
    """)
    mod = tmp_path / "kern.py"
    mod.write_text(code)
    env = {**os.environ, "MEMSERVE_KERNEL_CACHE": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, str(mod)], env=env, capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert any((tmp_path / "cache").rglob("*.nbi"))  # numba's index file, under our directory
    assert "Counter()" in runs[0].stdout and "Counter()" not in runs[1].stdout  # second run: from the cache
