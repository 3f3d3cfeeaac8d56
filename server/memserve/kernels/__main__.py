"""`python -m memserve.kernels`: compile every kernel into the kernel cache (jit.warm)."""
import time

from . import jit

start = time.perf_counter()
count = jit.warm()
print(f"{count} kernels compiled or loaded from {jit.cache_dir()} in {time.perf_counter() - start:.1f} s")
