"""Host allocator settings for a process that moves large tensors.

glibc's malloc serves blocks of 128 KiB and more with fresh mmap()s and gives
them back at free(), so every 1 MiB request or response the daemon builds,
parses or serializes is page-faulted in anew: on the VMs measured here that
made serializing a 1 MiB message 19x slower (1.9 ms instead of 0.1 ms,
bench/front.py). Raising the mmap and trim thresholds keeps such blocks in
the heap for reuse, which is what Triton's advice to run under tcmalloc or
jemalloc buys. Larger blocks (weights, workspaces) still come from mmap and
go back to the system when freed, so unloading a model still returns its
memory. Device accounting (device.py) is unaffected: it counts the bytes
models use, not what the allocator keeps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("memserve")
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # blocks below this are reused from the heap (glibc's ceiling is 32 MiB on 64-bit)
TRIM_THRESHOLD = 256 << 20  # free heap kept before it is given back


def keep_tensor_memory() -> bool:
    """Set glibc's thresholds; False where the C library is not glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the thresholds; large tensors are page-faulted in anew each time")
    return ok
