"""Compiled kernels (kernels/jit.py): compiled once, from declared types only, cached on disk."""
import os
import pathlib
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


def test_a_load_compiles_what_its_model_runs_before_the_first_request(tmp_path):
    """In a fresh process: after load, the chain kernel is machine code already, and executing adds no
    compiled signature (nothing compiles on a request)."""
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        import numpy as np
        from onnx import helper
        from models import F32, graph_model
        from memserve.device import CpuDevice
        from memserve.kernels import chain
        from memserve.registry import LoadOptions, Registry

        nodes = [helper.make_node("Mul", ["x", "x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
        model = graph_model(nodes, [("x", F32, ["N", 64])], [("y", F32, ["N", 64])])
        assert chain.run_chain.fn is None
        reg = Registry(CpuDevice(1 << 26))
        reg.load(model, LoadOptions(name="m", max_batch=2))
        before = list(chain.run_chain.fn.signatures)
        reg.execute("m", {"x": np.ones((2, 64), np.float32)})
        assert list(chain.run_chain.fn.signatures) == before, (before, chain.run_chain.fn.signatures)
        reg.close()
        print("ok")
    """ % str(pathlib.Path(__file__).parent))
    mod = tmp_path / "load.py"
    mod.write_text(code)
    r = subprocess.run([sys.executable, str(mod)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_warming_fills_the_cache_with_every_kernel(tmp_path):
    env = {**os.environ, "MEMSERVE_KERNEL_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "memserve.kernels"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    count = int(r.stdout.split()[0])
    assert count >= 3 and len(list((tmp_path / "cache").rglob("*.nbi"))) >= 3
