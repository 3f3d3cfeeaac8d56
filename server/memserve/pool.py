"""The weight store (one copy per distinct weights) and the workspace pool.

Weights are keyed by the digest of their laid-out content: a second load of
the same weights takes a reference, and the block is freed with its last
reference. Models only ever see a read-only view of it (I2).

A workspace is one work-memory buffer and the models that use it: a private
one has a single member; a shared group's buffer is as large as its largest
member. A workspace is resized only while its `lock` is held, and the lane
that executes on it holds the same lock for each execution, so a buffer never
changes under a running model. The pool only sizes buffers: callers check
admission first (`needs`) and run inside the device context.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

import numpy as np

from .device import Buffer, Device, align_up
from .errors import InternalError, InvalidArgument, ResourceExhausted
from .model import Plan

GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass
class WeightBlock:
    digest: str
    buffer: Buffer
    users: set[int] = field(default_factory=set)

    @property
    def view(self) -> np.ndarray:
        v = self.buffer.array.view()
        v.flags.writeable = False
        return v


class WeightStore:
    def __init__(self, device: Device):
        self.device = device
        self._blocks: dict[str, WeightBlock] = {}
        self._lock = threading.Lock()

    def needs(self, plan: Plan) -> int:
        """Bytes a load of `plan` would allocate for weights (0 when already resident)."""
        with self._lock:
            return 0 if plan.weight_digest in self._blocks else plan.weight_size

    def acquire(self, model_id: int, plan: Plan) -> tuple[np.ndarray, bool]:
        """A read-only view of the plan's weights, uploading them if absent; and whether shared."""
        with self._lock:
            block = self._blocks.get(plan.weight_digest)
            shared = block is not None
            if block is None:
                block = WeightBlock(plan.weight_digest, self._upload(plan))
                self._blocks[plan.weight_digest] = block
            block.users.add(model_id)
            return block.view, shared

    def release(self, model_id: int, digest: str) -> int:
        """Drop a model's reference; returns the bytes freed."""
        with self._lock:
            block = self._blocks.get(digest)
            if block is None or model_id not in block.users:
                raise InternalError(f"model {model_id} holds no reference to weights {digest[:12]}")
            block.users.discard(model_id)
            if block.users:
                return 0
            del self._blocks[digest]
        block.buffer.free()
        return block.buffer.nbytes

    def blocks(self) -> list[WeightBlock]:
        with self._lock:
            return list(self._blocks.values())

    def _upload(self, plan: Plan) -> Buffer:
        if plan.staged_weights is None:
            raise InternalError("plan's weights were already released")
        buf = self.device.alloc(plan.weight_size, "weights")
        for i in plan.weight_slots:
            value = np.ascontiguousarray(plan.staged_weights[i])
            off = plan.tensors[i].offset
            self.device.copy_in(buf.array[off : off + value.nbytes], value.reshape(-1).view(np.uint8))
        return buf


class Workspace:
    """One work-memory buffer, its member models and their planned sizes."""

    def __init__(self, name: str, shared: bool):
        self.name = name
        self.shared = shared
        self.members: dict[int, int] = {}
        self.buffer: Buffer | None = None
        self.lock = threading.Lock()  # held by the lane per execution and by resizes
        self.bindings: dict = {}  # the engine's views into `buffer`, per (model, request shape); cleared with it
        self.executions = 0  # counted by the lane, under `lock`, once it runs one
        self.max_concurrent = 0
        self.active = 0  # executions running or about to run: the I1 probe, under `probe`
        self.probe = threading.Lock()

    @property
    def size(self) -> int:
        return self.buffer.nbytes if self.buffer else 0

    @property
    def required(self) -> int:
        return max(self.members.values(), default=0)

    def enter(self) -> None:
        """Probe for I1: counts executions that are running or about to run on this buffer. Lanes call it
        before they take `lock`, so two executions scheduled on one workspace show as max_concurrent 2
        even though the lock then makes one wait."""
        with self.probe:
            self.active += 1
            self.max_concurrent = max(self.max_concurrent, self.active)

    def exit(self) -> None:
        with self.probe:
            self.active -= 1

    def ensure_buffer(self, device: Device) -> Buffer:
        """The buffer, allocated again if a failed resize lost it; the caller holds `lock`."""
        if self.buffer is None:
            self.buffer = device.alloc(self.required, "workspace")
            self.bindings.clear()
        return self.buffer

    def resize(self, device: Device, size: int) -> int:
        """Make the buffer exactly `size` bytes once no execution runs; returns bytes freed (<0: grown)."""
        with self.lock:
            old = self.buffer
            if old is not None and old.nbytes == size:
                return 0
            self.buffer = None
            self.bindings.clear()
            before = old.nbytes if old else 0
            if old is not None:
                old.free()
            if not self.members:
                return before
            try:
                self.buffer = device.alloc(size, "workspace")
            except ResourceExhausted:
                if old is not None:  # put the old size back so the members keep running
                    try:
                        self.buffer = device.alloc(before, "workspace")
                    except ResourceExhausted:
                        pass  # taken meanwhile by output buffers: the next execution allocates it again
                raise
            return before - self.buffer.nbytes


class WorkspacePool:
    def __init__(self, device: Device):
        self.device = device
        self._spaces: dict[str, Workspace] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(mode: str, model_id: int, instance: int = 0) -> tuple[str, bool]:
        """Workspace name and sharedness for a load's workspace option."""
        if mode in ("", "private"):
            return (f"private:{model_id}" + (f".{instance}" if instance else "")), False
        if mode.startswith("shared:") and GROUP_NAME.match(mode[7:]):
            return mode, True
        raise InvalidArgument(
            f"workspace {mode!r} is not valid: use 'private', 'shared:<group>' or 'auto' "
            "(group: letters, digits, '_', '.', '-')"
        )

    def needs(self, mode: str, model_id: int, work_size: int, instance: int = 0) -> int:
        """Bytes a join would add to the device."""
        name, _ = self.key(mode, model_id, instance)
        with self._lock:
            ws = self._spaces.get(name)
            return max(0, align_up(work_size) - (ws.size if ws else 0))

    def join(self, model_id: int, mode: str, work_size: int, instance: int = 0) -> Workspace:
        name, shared = self.key(mode, model_id, instance)
        with self._lock:
            ws = self._spaces.setdefault(name, Workspace(name, shared))
            ws.members[model_id] = work_size
        try:
            if ws.buffer is None or work_size > ws.size:
                ws.resize(self.device, work_size)
            return ws
        except BaseException:
            self.leave(model_id, ws)
            raise

    def leave(self, model_id: int, ws: Workspace) -> int:
        """Remove a member; shrink or free the buffer; returns the bytes freed."""
        with self._lock:
            ws.members.pop(model_id, None)
            if not ws.members:
                self._spaces.pop(ws.name, None)
        return ws.resize(self.device, ws.required)

    def cheapest_group(self, work_size: int, budget: int) -> tuple[str, int] | None:
        """The shared group a `work_size` member would grow least, if it grows it by at most `budget`."""
        with self._lock:
            options = [(max(0, align_up(work_size) - ws.size), ws.size, ws.name)
                       for ws in self._spaces.values() if ws.shared]
        fitting = sorted(o for o in options if o[0] <= budget)
        return (fitting[0][2], fitting[0][0]) if fitting else None

    def workspaces(self) -> list[Workspace]:
        with self._lock:
            return list(self._spaces.values())
