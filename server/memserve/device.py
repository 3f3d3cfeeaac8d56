"""Devices, the one context the daemon owns on its device, and accounted buffers.

Every byte of model memory is a `Buffer` allocated from a `Device`, tagged
with its kind (weights, workspace, io). The device keeps the books: used bytes
by kind always equal the sum of its live buffers (invariant I3), and an
allocation that would pass the capacity is refused before anything is taken.

All device work happens inside the device's `Context` (invariant I5): a
thread enters it (`with ctx:`) before it allocates, frees or computes, as an
AscendCL application calls aclrtSetCurrentContext on each of its threads.
The device refuses work from a thread that is not in its context.

A device is a backend, found by name (`make_device("cpu" | "cuda:0", ...)`).
`Device` keeps the books and the context; a backend supplies the rest:

- `_storage(size)`: the bytes of one allocation, an array of `xp` (numpy on
  the cpu device, CuPy on cuda), 64-byte aligned;
- views: every buffer is a flat uint8 array of `xp`, so a view at an offset
  is `array[off:off + n].view(dtype).reshape(shape)` on every backend;
- `copy_in(dst, src)`: host bytes into device memory (weights at load);
  `to_device(a)`: a request's input for a plan to read (`host_memory`
  devices read the request's bytes in place); `to_host(a)`: an output's
  bytes for the response;
- `synchronize()`: wait for the device's queued work; `activate()`: make
  the device current on the calling thread, which `Context` calls on entry;
- `memory_info()`: (free, total) as the hardware reports it, or None;
- `kernel(op)`: the kernel builder it runs a plan's op with (None: the op
  does not run on this device, and a load is refused naming it); `fuses`:
  whether the compiler may use the cpu's fused kernels (Dense, compiled
  chains, Conv epilogues).
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import numpy as np

from .errors import InternalError, InvalidArgument, ResourceExhausted

KINDS = ("weights", "workspace", "io")
ALIGNMENT = 64

_local = threading.local()


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


def aligned_empty(size: int) -> np.ndarray:
    """`size` uninitialized host bytes starting at an ALIGNMENT-byte boundary."""
    raw = np.empty(size + ALIGNMENT, dtype=np.uint8)
    start = (-raw.__array_interface__["data"][0]) % ALIGNMENT
    return raw[start : start + size]


def current_context() -> Context | None:
    stack = getattr(_local, "contexts", None)
    return stack[-1] if stack else None


class Context:
    """The daemon's one context on a device; threads enter it to do device work."""

    _ids = itertools.count(1)

    def __init__(self, device: Device):
        self.device = device
        self.id = next(self._ids)

    def __enter__(self) -> Context:
        stack = getattr(_local, "contexts", None)
        if stack is None:
            stack = _local.contexts = []
        stack.append(self)
        self.device.activate()
        return self

    def __exit__(self, *exc) -> None:
        _local.contexts.pop()

    def require(self) -> None:
        """Raise unless the calling thread is in this context (I5)."""
        stack = getattr(_local, "contexts", None)
        if not stack or stack[-1] is not self:
            raise InternalError(
                f"device work outside context {self.id} on thread {threading.current_thread().name}"
            )


@dataclass(eq=False, slots=True)
class Buffer:
    """One live allocation: `array` is its bytes, `nbytes` what the device accounts."""

    id: int
    kind: str
    nbytes: int
    array: np.ndarray | None  # of the device's xp; None for bytes a backend allocated itself (Device.account)
    device: Device

    def free(self) -> None:
        self.device.free(self)


class Device:
    """A memory capacity with exact accounting; subclasses supply the storage."""

    kind = "abstract"

    def __init__(self, capacity: int, device_id: int = 0):
        if capacity <= 0:
            raise InvalidArgument(f"device capacity must be positive, got {capacity}")
        self.id = device_id
        self.capacity = capacity
        self.context = Context(self)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._live: dict[int, Buffer] = {}
        self._used = dict.fromkeys(KINDS, 0)
        self._total = 0  # sum of _used, kept so that alloc need not add them up

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.id}"

    def used(self, kind: str | None = None) -> int:
        with self._lock:
            return self._used[kind] if kind else sum(self._used.values())

    def used_by_kind(self) -> dict[str, int]:
        with self._lock:
            return dict(self._used)

    def free_bytes(self) -> int:
        return self.capacity - self.used()

    def live_buffers(self) -> list[Buffer]:
        with self._lock:
            return list(self._live.values())

    def alloc(self, nbytes: int, kind: str) -> Buffer:
        """Allocate `nbytes` (rounded up to the alignment) of `kind` memory."""
        return self._take(nbytes, kind, self._storage)

    def account(self, nbytes: int, kind: str) -> Buffer:
        """Put bytes a backend allocated by itself on the books (a buffer without an array): a CuPy
        temporary, say; free it when they are given back."""
        return self._take(nbytes, kind, None)

    def _take(self, nbytes: int, kind: str, storage) -> Buffer:
        stack = getattr(_local, "contexts", None)
        if not stack or stack[-1] is not self.context:
            self.context.require()
        if kind not in KINDS:
            raise InternalError(f"unknown memory kind {kind!r}")
        size = align_up(max(nbytes, 0))
        with self._lock:
            free = self.capacity - self._total
            if size > free:
                raise ResourceExhausted(
                    f"device {self.name} is out of memory: {kind} needs {size} bytes, "
                    f"{free} of {self.capacity} are free; unload a model or start memserved "
                    f"with a larger --device-memory"
                )
            self._used[kind] += size
            self._total += size
            buf_id = next(self._ids)
        try:
            array = storage(size) if storage is not None else None
        except MemoryError:
            with self._lock:
                self._used[kind] -= size
                self._total -= size
            raise ResourceExhausted(f"host could not back a {size}-byte {kind} buffer") from None
        buf = Buffer(buf_id, kind, size, array[:nbytes] if array is not None and nbytes < size else array, self)
        self._live[buf_id] = buf  # one dict store is atomic: no lock (every request allocates its outputs)
        return buf

    def retake(self, buf: Buffer) -> None:
        """Account a freed buffer again, over the storage its owner kept: a binding keeps its small
        I/O buffer (engine.IO_KEEP) and takes it once per request, accounted exactly as a fresh
        allocation while it lives, so that a request gets no new host memory for its outputs."""
        stack = getattr(_local, "contexts", None)
        if not stack or stack[-1] is not self.context:
            self.context.require()
        size, kind = buf.nbytes, buf.kind
        with self._lock:
            free = self.capacity - self._total
            if size > free:
                raise ResourceExhausted(
                    f"device {self.name} is out of memory: {kind} needs {size} bytes, "
                    f"{free} of {self.capacity} are free; unload a model or start memserved "
                    f"with a larger --device-memory"
                )
            if buf.id in self._live:
                raise InternalError(f"buffer {buf.id} is taken twice")
            self._used[kind] += size
            self._total += size
            self._live[buf.id] = buf

    def free(self, buf: Buffer) -> None:
        stack = getattr(_local, "contexts", None)
        if not stack or stack[-1] is not self.context:
            self.context.require()
        if self._live.pop(buf.id, None) is None:  # atomic too: of two racing frees, one finds it
            raise InternalError(f"double free of buffer {buf.id}")
        with self._lock:
            self._used[buf.kind] -= buf.nbytes
            self._total -= buf.nbytes

    # -- what a backend supplies (see the module's docstring) ----------------------------------------

    xp = np  # the array module of its buffers
    host_memory = True  # its buffers are host memory: a request's input bytes are read in place
    fuses = True  # the compiler may use the cpu's fused kernels

    def _storage(self, size: int):
        raise NotImplementedError

    def copy_in(self, dst, src: np.ndarray) -> None:
        dst[...] = src

    def to_device(self, a: np.ndarray):
        return a

    def to_host(self, a) -> bytes:
        return a.tobytes()

    def synchronize(self) -> None:
        """Nothing is queued on a device that computes on the calling thread."""

    def activate(self) -> None:
        """A host device is current on every thread."""

    def memory_info(self) -> tuple[int, int] | None:
        return None

    def kernel(self, op):
        return op.build


class CpuDevice(Device):
    """Host memory through numpy, aligned to ALIGNMENT bytes."""

    kind = "cpu"

    def _storage(self, size: int) -> np.ndarray:
        return aligned_empty(size)


def _cuda(index: int, capacity: int) -> Device:
    try:
        from .devices.cuda import CudaDevice
    except ImportError as exc:
        raise InvalidArgument(f"the cuda device needs CuPy: pip install 'memserve[cuda]' ({exc})") from None
    return CudaDevice(capacity, index)


BACKENDS = {"cpu": lambda index, capacity: CpuDevice(capacity, index), "cuda": _cuda}


def make_device(name: str, capacity: int) -> Device:
    """A device by name: `cpu`, `cuda` or `cuda:N` (optional backends are imported only when named)."""
    kind, _, index = name.partition(":")
    make = BACKENDS.get(kind)
    if make is None or (index and not index.isdigit()):
        raise InvalidArgument(f"unknown device {name[:32]!r}; devices: cpu, cuda[:N] (cuda needs the cuda extra)")
    return make(int(index or 0), capacity)
