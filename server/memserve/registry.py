"""Loaded models by id and name: load, execute, unload, all or nothing.

This is the one data plane under every API: servicers translate messages and
call it. Loads and unloads are serialized by one admin lock (they resize
shared buffers); executions only take the model's lane.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .device import Device
from .engine import Executable
from .errors import AlreadyExists, Cancelled, FailedPrecondition, NotFound, ResourceExhausted
from .model import CompileOptions, Plan, compile_model
from .pool import WeightStore, Workspace, WorkspacePool
from .scheduler import Lane, Request, Scheduler

ModelRef = int | str


@dataclass(frozen=True)
class LoadOptions:
    name: str = ""
    workspace: str = "private"
    max_batch: int = 0
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def compile_options(self) -> CompileOptions:
        return CompileOptions(self.max_batch, dict(self.input_shapes))


@dataclass(eq=False)
class LoadedModel:
    id: int
    name: str
    plan: Plan
    executable: Executable
    workspace: Workspace
    lane: Lane
    options: LoadOptions
    weights_shared: bool
    load_time_us: int


@dataclass
class OutputTensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    data: bytes


@dataclass
class ExecuteResult:
    outputs: list[OutputTensor]
    queue_us: int
    compute_us: int


@dataclass
class Pending:
    """A submitted execution: wait for it with result(), drop it with cancel()."""

    request: Request
    lane: Lane

    def result(self) -> ExecuteResult:
        return self.request.future.result()

    def cancel(self) -> None:
        self.lane.cancel(self.request, Cancelled("request was cancelled by its client before it ran"))


class Registry:
    def __init__(self, device: Device, max_queue: int = 1024):
        self.device = device
        self.context = device.context
        self.weights = WeightStore(device)
        self.pool = WorkspacePool(device)
        self.scheduler = Scheduler(self.context, max_queue)
        self._models: dict[int, LoadedModel] = {}
        self._names: dict[str, int] = {}
        self._next_id = 1
        self._admin = threading.Lock()
        self._lock = threading.Lock()  # guards the two maps for readers

    # -- admin ------------------------------------------------------------

    @staticmethod
    def query_size(data: bytes, options: LoadOptions) -> Plan:
        """Plan the model without allocating anything (aclmdlQuerySizeFromMem)."""
        plan = compile_model(data, options.compile_options())
        plan.release_staging()
        return plan

    def load(self, data: bytes, options: LoadOptions) -> LoadedModel:
        start = time.perf_counter()
        self._check_name(options.name)
        plan = compile_model(data, options.compile_options())
        with self._admin, self.context:
            model_id = self._next_id
            name = options.name or f"model-{model_id}"
            self._check_name(name)
            self._admit(plan, options.workspace, model_id)
            model = self._allocate(model_id, name, plan, options)
            model.load_time_us = int((time.perf_counter() - start) * 1e6)
            with self._lock:
                self._models[model_id] = model
                self._names[name] = model_id
            self._next_id += 1
        plan.release_staging()
        return model

    def _check_name(self, name: str) -> None:
        with self._lock:
            if name in self._names:
                raise AlreadyExists(f"a model named {name!r} is loaded (id {self._names[name]}); "
                                    "unload it first or choose another name")

    def _admit(self, plan: Plan, mode: str, model_id: int) -> None:
        weights = self.weights.needs(plan)
        work = self.pool.needs(mode, model_id, plan.work_size)
        free = self.device.free_bytes()
        if weights + work > free:
            raise ResourceExhausted(
                f"model needs {weights + work} bytes of device memory (weights {weights}, "
                f"workspace {work}) but {free} of {self.device.capacity} are free; unload a model, "
                "share a workspace (workspace='shared:<group>') or start memserved with a larger --device-memory"
            )

    def _allocate(self, model_id: int, name: str, plan: Plan, options: LoadOptions) -> LoadedModel:
        """Take weights and workspace; on any failure give back what was taken (I4)."""
        weights, shared = self.weights.acquire(model_id, plan)
        try:
            ws = self.pool.join(model_id, options.workspace, plan.work_size)
        except BaseException:
            self.weights.release(model_id, plan.weight_digest)
            raise
        lane = self.scheduler.lane(ws)
        lane.admit(model_id)
        return LoadedModel(model_id, name, plan, Executable(plan, weights), ws, lane, options, shared, 0)

    def unload(self, ref: ModelRef) -> int:
        """Fail queued requests, wait for the running one, free memory (I7); returns bytes freed."""
        with self._admin:
            model = self.get(ref)
            model.lane.retire_model(model.id, FailedPrecondition(
                f"model {model.name!r} (id {model.id}) was unloaded before this request ran"))
            with self.context:
                freed = self.pool.leave(model.id, model.workspace)
                freed += self.weights.release(model.id, model.plan.weight_digest)
            if not model.workspace.members:
                self.scheduler.retire(model.workspace)
            with self._lock:
                del self._models[model.id]
                del self._names[model.name]
            return freed

    def close(self) -> None:
        for model in self.list():
            self.unload(model.id)
        self.scheduler.close()

    # -- lookup -----------------------------------------------------------

    def get(self, ref: ModelRef) -> LoadedModel:
        with self._lock:
            model_id = self._names.get(ref) if isinstance(ref, str) else ref
            model = self._models.get(model_id) if model_id is not None else None
        if model is None:
            what = f"name {ref!r}" if isinstance(ref, str) else f"id {ref}"
            raise NotFound(f"no model with {what} is loaded; ListModels shows the loaded ones")
        return model

    def list(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.id)

    # -- execute ----------------------------------------------------------

    def submit(self, ref: ModelRef, arrays: dict[str, np.ndarray], deadline: float | None = None) -> Pending:
        """Validate inputs and queue them on the model's lane."""
        model = self.get(ref)
        batch = model.plan.batch_of(arrays)
        model.plan.infos_at(batch)  # a batch the plan cannot hold fails here, not on the lane
        req = Request(model.id, lambda r, ws: self._run(model, arrays, batch, r, ws), deadline)
        model.lane.submit(req)
        return Pending(req, model.lane)

    def execute(self, ref: ModelRef, arrays: dict[str, np.ndarray], deadline: float | None = None) -> ExecuteResult:
        return self.submit(ref, arrays, deadline).result()

    def _run(self, model: LoadedModel, arrays: dict[str, np.ndarray], batch: int,
             req: Request, ws: Workspace) -> ExecuteResult:
        outs, buffers = model.executable.run(arrays, batch, ws.buffer, lambda n: self.device.alloc(n, "io"))
        try:
            tensors = [OutputTensor(spec.name, o.dtype, o.shape, o.tobytes())
                       for spec, o in zip(model.plan.outputs, outs)]
        finally:
            for buf in buffers:
                buf.free()
        done = time.perf_counter()
        return ExecuteResult(tensors, int((req.started - req.enqueued) * 1e6), int((done - req.started) * 1e6))

