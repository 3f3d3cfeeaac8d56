"""The cuda device: the daemon's budget is real GPU memory, through CuPy (`pip install 'memserve[cuda]'`).

- Each buffer (a workspace, a weight block, an I/O buffer) is one cudaMalloc (`cupy.cuda.Memory`, not CuPy's
  pool), accounted by the device's books like every buffer; the capacity must fit the GPU's free memory.
- Views at planned offsets are CuPy arrays over those allocations; kernels are the portable set
  (kernels/portable.py) with xp = cupy, writing into those views.
- Every other device allocation (a request's inputs copied in, a kernel's temporaries) goes through an
  allocator that charges the books too (kind "io") and gives the bytes back when CuPy frees them, so the
  books are what the GPU gives this process.
- `activate()` makes the GPU current on the calling thread, which `Context` calls on entry (I5), with a
  stream of the thread's own: each lane is one thread, so models on different workspaces overlap on the
  GPU while one lane's executions stay in order. Weights are copied in and synchronized before a load
  answers, so every lane's stream sees them.
"""
from __future__ import annotations

import threading
import weakref

import cupy
import numpy as np

from ..device import Buffer, Device
from ..errors import InvalidArgument
from ..kernels import portable


class CudaDevice(Device):
    kind = "cuda"
    xp = cupy
    host_memory = False
    fuses = False  # the fused kernels are the cpu's (numba); this device runs the portable set

    def __init__(self, capacity: int, index: int = 0):
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError as exc:  # no driver, or one too old for this CuPy
            raise InvalidArgument(f"no CUDA device can be used: {exc}") from None
        if not 0 <= index < count:
            raise InvalidArgument(f"cuda:{index} does not exist; this machine has {count} CUDA device(s)")
        self._gpu = cupy.cuda.Device(index)
        with self._gpu:
            free, _ = cupy.cuda.runtime.memGetInfo()
        if capacity > free:
            raise InvalidArgument(f"--device-memory {capacity} bytes is more than cuda:{index} has free ({free}); "
                                  "give a smaller --device-memory")
        super().__init__(capacity, index)
        self._threads = threading.local()  # each thread's stream
        cupy.cuda.set_allocator(self._temporary)

    def _storage(self, size: int):
        with self._gpu:
            memory = cupy.cuda.Memory(max(size, 1))  # one cudaMalloc: aligned to 256 bytes
        return cupy.ndarray((size,), np.uint8, cupy.cuda.MemoryPointer(memory, 0))

    def _temporary(self, size: int) -> cupy.cuda.MemoryPointer:
        """CuPy's allocations outside the plan (inputs copied in, kernels' temporaries), on the books as io
        while CuPy holds them: charged first (refused like any allocation past the capacity), then made."""
        buf = self.account(size, "io")
        try:
            with self._gpu:
                memory = cupy.cuda.Memory(max(size, 1))
        except BaseException:
            buf.free()
            raise
        weakref.finalize(memory, _give_back, buf)  # the buffer holds no reference to the memory
        return cupy.cuda.MemoryPointer(memory, 0)

    def copy_in(self, dst, src: np.ndarray) -> None:
        dst.set(np.ascontiguousarray(src))
        self.synchronize()  # done before any other thread's stream reads it

    def to_device(self, a: np.ndarray):
        return cupy.asarray(a)

    def to_host(self, a) -> bytes:
        return cupy.asnumpy(a).tobytes()

    def synchronize(self) -> None:
        cupy.cuda.get_current_stream().synchronize()

    def activate(self) -> None:
        self._gpu.use()
        stream = getattr(self._threads, "stream", None)
        if stream is None:
            stream = self._threads.stream = cupy.cuda.Stream(non_blocking=True)
        stream.use()

    def memory_info(self) -> tuple[int, int]:
        with self._gpu:
            return cupy.cuda.runtime.memGetInfo()

    def kernel(self, op):
        return portable.builder(op.op_type, cupy)


def _give_back(buf: Buffer) -> None:
    """A temporary's memory went back to CuPy: its bytes leave the books (from whatever thread frees it)."""
    device = buf.device
    with device.context:
        device.free(buf)
