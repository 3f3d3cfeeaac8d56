"""Compiled kernels: numba functions compiled when a model loads, never on a request.

A kernel module declares a compiled function with `@compiled(signatures)`: its
Python body and the exact argument types it is called with (dtype, rank and
layout; sizes are arguments, so one compile serves every shape). Nothing
compiles at import. An op lists the compiled functions it calls
(`OpDef.compiled`), and the registry calls `prepare()` for every op of a plan
while the model loads: the first Execute after a load runs machine code like
the hundredth. Each dispatcher is built from its signatures alone, so a call
with other types is refused (TypeError) instead of compiling.

Kernel modules do not import numba: importing memserve stays fast, and numba
reads its thread count once, when it is imported, which must come after
--threads. A kernel loops over `jit.prange` and calls functions marked
`@jit.helper`; when it compiles, those names in its module become
`numba.prange` and inlined numba functions. Uncompiled, both run as Python.

Compiled code is cached on disk by numba (keyed on the source file, its
timestamp and the CPU): in $MEMSERVE_KERNEL_CACHE, else `~/.cache/memserve/kernels`
(never in --state-dir, which holds only the daemon's models). A cold compile of a
parallel kernel takes about a second; loading it from the cache a few tens of
milliseconds.

Threads: a parallel kernel (`parallel=True`, loops over `numba.prange`) uses
numba's OpenMP layer, which several lanes may call at once; each calling thread
runs at most `threads()` of them (set_threads(), from --threads). Without
libgomp the kernels compile serial: numba's fallback layer may not be entered
by two threads at a time.
"""
from __future__ import annotations

import os
import pathlib
import sys
import threading
from typing import Any, Callable

_lock = threading.Lock()
_all: list["Compiled"] = []
_threads = 1
_cache_dir: str | None = None


def set_cache_dir(path: str | os.PathLike) -> None:
    """Where compiled kernels go; takes effect for kernels not compiled yet."""
    global _cache_dir
    _cache_dir = str(path)


def cache_dir() -> str:
    if os.environ.get("MEMSERVE_KERNEL_CACHE"):
        return os.environ["MEMSERVE_KERNEL_CACHE"]
    if _cache_dir:
        return _cache_dir
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "memserve", "kernels")


def set_threads(n: int) -> None:
    """Threads a parallel kernel may use (0: all cores). Before numba is imported this sets the
    default of every thread (the daemon calls it first thing); after, only the calling thread's."""
    global _threads
    _threads = n if n > 0 else (os.cpu_count() or 1)
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(_threads)
    else:
        import numba

        numba.set_num_threads(min(_threads, numba.config.NUMBA_NUM_THREADS))


def threads() -> int:
    return _threads


def _parallel_ok() -> bool:
    """Whether numba's thread-safe OpenMP layer loads (it needs libgomp)."""
    try:
        import numba.np.ufunc.omppool  # noqa: F401
    except ImportError:
        return False
    return True


def prange(*args: int) -> range:
    """numba.prange in a compiled kernel: its iterations are spread over the kernel's threads."""
    return range(*args)


class Helper:
    """A function compiled kernels call, compiled into them (inlined)."""

    def __init__(self, py: Callable):
        self.py = py
        self.nb: Any = None

    def compiled(self) -> Any:
        if self.nb is None:  # lazy: numba types and compiles it with the kernel that calls it
            import numba

            self.nb = numba.njit(inline="always", nogil=True, error_model="numpy")(self.py)
        return self.nb

    def __call__(self, *args: Any) -> Any:
        return self.py(*args)


def helper(py: Callable) -> Helper:
    return Helper(py)


def _bind_globals(py: Callable) -> None:
    """Point the names a kernel's module gives `prange` and helpers at their numba versions
    (helpers live in their kernel's module)."""
    import numba

    g = py.__globals__
    for name, value in list(g.items()):
        if value is prange:
            g[name] = numba.prange
        elif isinstance(value, Helper):
            g[name] = value.compiled()


class Compiled:
    """A numba kernel compiled on first `ensure()`; call `.fn` on the hot path (no indirection)."""

    def __init__(self, py: Callable, signatures: list[str], parallel: bool, fastmath: bool):
        self.py = py
        self.signatures = signatures
        self.parallel = parallel
        self.fastmath = fastmath
        self.fn: Any = None
        self.__name__ = py.__name__
        _all.append(self)

    def ensure(self) -> Any:
        if self.fn is None:
            with _lock:
                if self.fn is None:
                    self.fn = self._compile()
        return self.fn

    def _compile(self) -> Any:
        os.environ.setdefault("NUMBA_CACHE_DIR", cache_dir())
        os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
        # OpenMP workers sleep between kernels instead of spinning: a spinning team fights BLAS's threads
        # and any busy neighbour for the cores (MobileNetV3 at 2 threads: 2-190x onnxruntime spinning,
        # 1.3x passive, on this 2-core machine).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import numba
        from numba.core import config

        config.CACHE_DIR = cache_dir()
        pathlib.Path(config.CACHE_DIR).mkdir(parents=True, exist_ok=True)
        parallel = self.parallel and _parallel_ok()
        _bind_globals(self.py)
        return numba.njit([_signature(s) for s in self.signatures], cache=True, nogil=True, parallel=parallel,
                          fastmath=self.fastmath, error_model="numpy", boundscheck=False)(self.py)

    def __call__(self, *args: Any) -> Any:
        return self.ensure()(*args)


def _signature(text: str) -> Any:
    """A numba signature from its string; `ro(t[::1])` marks an array the kernel only reads, which may
    then be read-only (weights, a request's bytes) or unaligned (a tensor at any offset of an HTTP
    body): numba matches both only when the signature allows them."""
    from numba import types

    def ro(t: Any) -> Any:
        return types.Array(t.dtype, t.ndim, t.layout, readonly=True, aligned=False)

    return eval(text, {**vars(types), "ro": ro})  # noqa: S307 - our own constant strings, never input


def compiled(*signatures: str, parallel: bool = False, fastmath: bool = False) -> Callable[[Callable], Compiled]:
    """Declare a kernel; `signatures` are numba type strings, e.g. "void(ro(float32[:, ::1]), int64)"."""
    def wrap(py: Callable) -> Compiled:
        return Compiled(py, list(signatures), parallel, fastmath)
    return wrap


def prepare(kernels: list[Compiled]) -> None:
    """Compile (or load from the cache) every kernel a model will call; run while it loads."""
    for k in kernels:
        k.ensure()


def warm() -> int:
    """Compile every kernel memserve has into the cache (a cold compile takes seconds per kernel; a load
    that finds it cached, milliseconds). `python -m memserve.kernels` runs it; `make test` does
    before the tests, so that no test's load waits for a compiler."""
    from . import REGISTRY  # noqa: F401 - importing the kernels declares them

    prepare(list(_all))
    return len(_all)

