"""Devices, the one context the daemon owns on its device, and accounted buffers.

Every byte of model memory is a `Buffer` allocated from a `Device`, tagged
with its kind (weights, workspace, io). The device keeps the books: used bytes
by kind always equal the sum of its live buffers (invariant I3), and an
allocation that would pass the capacity is refused before anything is taken.

All device work happens inside the device's `Context` (invariant I5): a
thread enters it (`with ctx:`) before it allocates, frees or computes, as an
AscendCL application calls aclrtSetCurrentContext on each of its threads.
The device refuses work from a thread that is not in its context.
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
    array: np.ndarray
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
            array = self._storage(size)
        except MemoryError:
            with self._lock:
                self._used[kind] -= size
                self._total -= size
            raise ResourceExhausted(f"host could not back a {size}-byte {kind} buffer") from None
        buf = Buffer(buf_id, kind, size, array[:nbytes] if nbytes < size else array, self)
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

    def _storage(self, size: int) -> np.ndarray:
        raise NotImplementedError


class CpuDevice(Device):
    """Host memory through numpy, aligned to ALIGNMENT bytes."""

    kind = "cpu"

    def _storage(self, size: int) -> np.ndarray:
        return aligned_empty(size)


def make_device(kind: str, capacity: int) -> Device:
    if kind == "cpu":
        return CpuDevice(capacity)
    raise InvalidArgument(f"unknown device kind {kind!r}; this build supports: cpu")
