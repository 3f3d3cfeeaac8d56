"""Loaded models by id and name: load, execute, unload, all or nothing.

This is the one data plane under every API: servicers translate messages and
call it. Loads and unloads are serialized by one admin lock (they resize
shared buffers); executions only take a lane of the model.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import budget, limits
from .budget import LoadBudget
from .device import Device, align_up
from .engine import Executable
from .errors import (AlreadyExists, Cancelled, FailedPrecondition, InvalidArgument, MemserveError, NotFound,
                     ResourceExhausted, Unavailable, UnsupportedModel)
from .model import CompileOptions, Plan, compile_model
from .model.plan import BATCH
from .pool import WeightStore, Workspace, WorkspacePool
from .scheduler import Lane, Request, Scheduler
from .metrics import Metrics
from .snapshot import ModelState, Snapshot, WeightBlockState, WorkspaceState
from .stats import ModelStats

ModelRef = int | str
log = logging.getLogger("memserve.registry")
AUTO = "auto"
COMMIT_MARGIN = 0.05  # seconds a load must have left before its deadline to be registered


@dataclass(frozen=True)
class Batching:
    """Dynamic batching: merge queued requests of one model into one execution."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class LoadOptions:
    name: str = ""
    workspace: str = "private"  # private, shared:<group> or auto
    max_batch: int = 0
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    instances: int = 1
    replace: bool = False
    batching: Batching | None = None
    input_values: dict[str, np.ndarray] = field(default_factory=dict)  # to plan with: inputs feeding parameters

    def compile_options(self, fuse: bool = True) -> CompileOptions:
        return CompileOptions(self.max_batch, dict(self.input_shapes), dict(self.input_values), fuse=fuse)

    def check(self) -> None:
        """Every option within its documented bound (limits.py), before any work is done."""
        limits.check_name(self.name)
        limits.check_range("max_batch", self.max_batch, 0, limits.MAX_BATCH)
        limits.check_range("instances", self.instances, 1, limits.MAX_INSTANCES)
        if self.workspace not in ("private", "", AUTO) and not self.workspace.startswith("shared:"):
            raise InvalidArgument(f"workspace must be 'private', 'auto' or 'shared:<group>', got {self.workspace!r}")
        for name, dims in self.input_shapes.items():
            shape = limits.check_shape(f"input_shapes[{name[:64]!r}]", dims)
            if shape:
                limits.check_range(f"input_shapes[{name[:64]!r}] batch", shape[0], 0, limits.MAX_BATCH)
        if len(self.input_values) > limits.MAX_INPUT_VALUES:
            raise InvalidArgument(f"at most {limits.MAX_INPUT_VALUES} input_values, got {len(self.input_values)}")
        for name, value in self.input_values.items():
            if value.size > limits.MAX_VALUE_ELEMENTS:
                raise InvalidArgument(f"input_values[{name[:64]!r}] has {value.size} elements; at most "
                                      f"{limits.MAX_VALUE_ELEMENTS} (values of shapes, axes, scales are small)")
        b = self.batching
        if b is not None:
            limits.check_range("max_queue_delay_us", b.max_queue_delay_us, 0, limits.MAX_QUEUE_DELAY_US)
            if len(b.preferred_batch_sizes) > limits.MAX_PREFERRED_BATCH_SIZES:
                raise InvalidArgument(f"at most {limits.MAX_PREFERRED_BATCH_SIZES} preferred batch sizes, got "
                                      f"{len(b.preferred_batch_sizes)}")


@dataclass(eq=False)
class LoadedModel:
    id: int
    name: str
    plan: Plan
    executable: Executable
    workspaces: list[Workspace]  # one per instance
    lanes: list[Lane]
    options: LoadOptions
    weights_shared: bool
    load_time_us: int = 0
    note: str = ""
    job: object = None  # the lanes' job for this model's requests (set by the registry)
    stats: ModelStats = field(default_factory=ModelStats)

    @property
    def workspace(self) -> Workspace:
        return self.workspaces[0]


@dataclass(slots=True)
class OutputTensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    data: bytes


@dataclass(slots=True)
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
    def __init__(self, device: Device, max_queue: int = 1024, metrics: Metrics | None = None,
                 max_load_memory: int = 0):
        self.device = device
        self.budget = LoadBudget(max_load_memory or 4 * device.capacity)  # the daemon passes --max-load-memory
        self.metrics = metrics
        self.context = device.context
        self.weights = WeightStore(device)
        self.pool = WorkspacePool(device)
        self.scheduler = Scheduler(self.context, max_queue)
        self._models: dict[int, LoadedModel] = {}
        self._names: dict[str, int] = {}
        self._next_id = 1
        self._admin = threading.Lock()
        self._lock = threading.Lock()  # guards the two maps for readers
        self.draining = False  # shutting down: no new loads or requests
        self.state = None  # a StateStore: acknowledged loads are durable (--state-dir)

    # -- admin ------------------------------------------------------------

    def load_job(self, alive=None, deadline: float | None = None) -> budget.LoadJob:
        """The budget and lifetime of one load: enter it around the upload and the load."""
        return self.budget.job(alive, deadline)

    def query_size(self, data: bytes, options: LoadOptions) -> Plan:
        """Plan the model without allocating anything (aclmdlQuerySizeFromMem)."""
        options.check()
        with self._job():
            plan = compile_model(data, options.compile_options(self.device.fuses))
        plan.release_staging()
        return plan

    def _job(self) -> budget.LoadJob:
        """The caller's job if it entered one, else a job of this call's own."""
        job = budget.current()
        return job.nested() if job is not None else self.budget.job()

    def load(self, data: bytes, options: LoadOptions, model_id: int | None = None, *,
             persist: bool = True) -> LoadedModel:
        """Load; with a state store and `persist`, the model is saved before this returns.
        `model_id`: restore a saved model under its old id (it is not saved again)."""
        start = time.perf_counter()
        self._check_serving()
        try:
            options.check()
            with self._job():
                model = self._load(data, options, start, model_id, persist)
        except MemserveError as err:
            if self.metrics:
                self.metrics.load_failures.labels(err.reason).inc()
            raise
        if self.metrics:
            self.metrics.load_seconds.observe(time.perf_counter() - start)
        log.info("loaded model %s (id %d): work %d bytes, weights %d bytes, %s", model.name, model.id,
                 model.plan.work_size, model.plan.weight_size, ", ".join(ws.name for ws in model.workspaces),
                 extra={"model": model.name})
        return model

    def _load(self, data: bytes, options: LoadOptions, start: float, restore_id: int | None,
              persist: bool) -> LoadedModel:
        if options.instances > 1 and options.workspace not in ("private", "", AUTO):
            raise InvalidArgument("instances > 1 need private workspaces (workspace='private' or 'auto')")
        if not options.replace:
            self._check_name(options.name)
        plan = compile_model(data, options.compile_options(self.device.fuses))
        _check_device(plan, self.device)
        if options.batching is not None:
            _check_batchable(plan, options.batching)
        with self._admin, self.context:
            model_id = restore_id or self._next_id
            name = options.name or f"model-{model_id}"
            old = self._names.get(name)
            if old is not None and not options.replace:
                self._check_name(name)
            mode, note = self._admit(plan, options, model_id)
            # A caller that left, or whose deadline would pass before the answer reaches it, never
            # gets an id: commit nothing for it (api/calls.py undoes the rare load that still loses its answer).
            budget.checkpoint(margin=COMMIT_MARGIN)
            model = self._allocate(model_id, name, plan, options, mode)
            model.note = note + (f"; replaces model {old}, which finishes its queue and unloads" if old else "")
            model.load_time_us = int((time.perf_counter() - start) * 1e6)
            if self.state is not None and restore_id is None and persist:
                self._save(model, data)
            with self._lock:
                self._models[model_id] = model
                self._names[name] = model_id  # from here on, new requests by name go to this model
            self._next_id = max(self._next_id, model_id + 1)
        plan.release_staging()
        if old is not None:
            self._unload(old, drain=True)
        return model

    def reserve_ids(self, next_id: int) -> None:
        """New models get ids from `next_id` on (a restarted daemon does not reuse old ids)."""
        with self._admin:
            self._next_id = max(self._next_id, next_id)

    def _save(self, model: LoadedModel, data: bytes) -> None:
        """Make the load durable before it is acknowledged; if that fails, the load fails (I4)."""
        try:
            self.state.save(model.id, model.name, model.options, data)
        except OSError as exc:
            self._free(model)
            raise ResourceExhausted(f"could not save the model in --state-dir: {exc}") from None

    def _check_serving(self) -> None:
        if self.draining:
            raise Unavailable("memserved is shutting down; retry on another replica")

    def _check_name(self, name: str) -> None:
        with self._lock:
            if name in self._names:
                raise AlreadyExists(f"a model named {name!r} is loaded (id {self._names[name]}); "
                                    "unload it, load with replace=true, or choose another name")

    def _admit(self, plan: Plan, options: LoadOptions, model_id: int) -> tuple[str, str]:
        """The workspace mode to load with, checked to fit free memory before anything is taken."""
        weights = self.weights.needs(plan)
        free = self.device.free_bytes()
        mode = options.workspace
        if mode == AUTO:
            # An auto model gets a buffer of its own while memory allows, as a group of one that
            # later auto models may join when it runs out; with instances, plain private ones.
            mode = "private" if options.instances > 1 else f"shared:auto.{model_id}"
        work = sum(self.pool.needs(mode, model_id, plan.work_size, k) for k in range(options.instances))
        if weights + work <= free:
            return mode, ""
        if options.workspace == AUTO and options.instances == 1:
            group = self.pool.cheapest_group(plan.work_size, free - weights)
            if group is not None:
                return group[0], (f"a private workspace ({align_up(plan.work_size)} bytes) would not fit the "
                                  f"{free} free bytes; joined {group[0]}, which grew by {group[1]} bytes")
        raise ResourceExhausted(
            f"model needs {weights + work} bytes of device memory (weights {weights}, "
            f"workspace {work}) but {free} of {self.device.capacity} are free; unload a model, "
            "share a workspace (workspace='shared:<group>' or 'auto') or start memserved with a larger "
            "--device-memory"
        )

    def _allocate(self, model_id: int, name: str, plan: Plan, options: LoadOptions, mode: str) -> LoadedModel:
        """Take weights and workspaces; on any failure give back what was taken (I4)."""
        weights, shared = self.weights.acquire(model_id, plan)
        joined: list[Workspace] = []
        lanes: list[Lane] = []
        try:
            for k in range(options.instances):
                joined.append(self.pool.join(model_id, mode, plan.work_size, k))
            for ws in joined:
                lanes.append(self.scheduler.lane(ws))  # starts a thread: it may fail too
        except BaseException as exc:
            for ws in joined:
                self.pool.leave(model_id, ws)
                if not ws.members:
                    self.scheduler.retire(ws)
            self.weights.release(model_id, plan.weight_digest)
            if isinstance(exc, RuntimeError):  # "can't start new thread"
                raise ResourceExhausted(f"could not start a lane for the model: {exc}") from None
            raise
        for lane in lanes:
            lane.admit(model_id)
        model = LoadedModel(model_id, name, plan, Executable(plan, weights, self.device.kernel), joined, lanes, options, shared)
        model.job = functools.partial(self._run, model)
        return model

    def unload(self, ref: ModelRef) -> int:
        """Fail queued requests, wait for the running one, free memory (I7); returns bytes freed."""
        return self._unload(self.get(ref).id, drain=False)

    def _unload(self, model_id: int, drain: bool) -> int:
        with self._admin:
            model = self.get(model_id)
            error = None if drain else FailedPrecondition(
                f"model {model.name!r} (id {model.id}) was unloaded before this request ran")
            for lane in model.lanes:
                lane.retire_model(model.id, error)
            freed = self._free(model)
            if self.state is not None:
                self.state.remove(model.id)
            with self._lock:
                del self._models[model.id]
                if self._names.get(model.name) == model.id:  # a replacement may own the name now
                    del self._names[model.name]
            log.info("unloaded model %s (id %d): %d bytes freed", model.name, model.id, freed,
                     extra={"model": model.name})
            return freed

    def _free(self, model: LoadedModel) -> int:
        freed = 0
        with self.context:
            for ws in model.workspaces:
                freed += self.pool.leave(model.id, ws)
            freed += self.weights.release(model.id, model.plan.weight_digest)
        for ws in model.workspaces:
            if not ws.members:
                self.scheduler.retire(ws)
        return freed

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no lane has work queued or running (at shutdown); False if `timeout` passed first."""
        until = time.monotonic() + timeout
        while any(lane.busy() for lane in self.scheduler.lanes()):
            if time.monotonic() > until:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        """Free every model's memory (at shutdown: saved models stay saved)."""
        state, self.state = self.state, None
        for model in self.list():
            self.unload(model.id)
        self.scheduler.close()
        self.state = state

    # -- lookup -----------------------------------------------------------

    def get(self, ref: ModelRef) -> LoadedModel:
        # No lock: every request looks its model up, and a dict read is atomic; a concurrent
        # load or unload makes this see the model or not, never a torn entry.
        model_id = self._names.get(ref) if isinstance(ref, str) else ref
        model = self._models.get(model_id) if model_id is not None else None
        if model is None:
            what = f"name {ref!r}" if isinstance(ref, str) else f"id {ref}"
            raise NotFound(f"no model with {what} is loaded; ListModels (`memserve list`) shows the loaded ones")
        return model

    def list(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.id)

    def snapshot(self) -> Snapshot:
        """Device memory, models, workspaces and weight blocks as plain values (snapshot.py)."""
        dev = self.device
        models = tuple(ModelState(m.id, m.name, m.plan.weight_size, m.plan.work_size, len(m.workspaces), m.stats)
                       for m in self.list())
        workspaces = tuple(WorkspaceState(ws.name, ws.size, tuple(sorted(ws.members)), ws.executions,
                                          ws.max_concurrent, self.scheduler.depth(ws))
                           for ws in self.pool.workspaces())
        blocks = tuple(WeightBlockState(b.digest, b.buffer.nbytes, tuple(sorted(b.users)))
                       for b in self.weights.blocks())
        return Snapshot(dev.name, dev.kind, dev.capacity, dev.used_by_kind(), models, workspaces, blocks)

    # -- execute ----------------------------------------------------------

    def submit(self, ref: ModelRef, arrays: dict[str, np.ndarray], deadline: float | None = None,
               priority: int = 0, finish_by: float | None = None) -> Pending:
        """Validate inputs and queue them on the model's least busy lane. `deadline`: drop the request
        unless it starts by then; `finish_by`: when its caller stops waiting for the answer (both
        time.monotonic())."""
        req, lane = self._submit(ref, arrays, deadline, priority, finish_by)
        return Pending(req, lane)

    def _submit(self, ref: ModelRef, arrays: dict[str, np.ndarray], deadline: float | None, priority: int,
                finish_by: float | None) -> tuple[Request, Lane]:
        if self.draining:
            self._check_serving()
        model = self.get(ref)
        plan = model.plan
        try:
            key = plan.key_of(arrays)
            plan.infos_at(key)  # sizes the plan cannot hold fail here, not on the lane
        except MemserveError:  # a refused request is a failed one in the model's statistics, as in the metrics
            now = time.perf_counter()
            model.stats.request_done(now, now, False, 0)
            raise
        req = Request(model.id, model.job, deadline, priority, payload=arrays, rows=key[0], finish_by=finish_by,
                      shape=key[1:])
        b = model.options.batching
        if b is not None:
            req.batch_limit, req.batch_delay = plan.max_batch, b.max_queue_delay_us / 1e6
            req.batch_target = max(b.preferred_batch_sizes, default=0)
        lanes = model.lanes
        lane = lanes[0] if len(lanes) == 1 else min(lanes, key=Lane.busy)
        req.future.on_error = functools.partial(_failed, model.stats, req)
        try:
            lane.submit(req)
        except MemserveError:  # refused before it queued (queue full, model unloading)
            model.stats.request_done(req.enqueued, req.enqueued, False, req.rows)
            raise
        return req, lane

    def execute(self, ref: ModelRef, arrays: dict[str, np.ndarray], deadline: float | None = None,
                priority: int = 0) -> ExecuteResult:
        return self._submit(ref, arrays, deadline, priority, None)[0].future.result()

    def _run(self, model: LoadedModel, reqs: list[Request], ws: Workspace) -> list[ExecuteResult]:
        """One execution for one request, or for several merged along the batch dimension."""
        if len(reqs) == 1:
            arrays, rows = reqs[0].payload, reqs[0].rows
        else:  # merged requests share their other open dimensions (the lane merges only those)
            arrays = {name: np.concatenate([r.payload[name] for r in reqs]) for name in reqs[0].payload}
            rows = sum(r.rows for r in reqs)
        if ws.buffer is None:
            ws.ensure_buffer(self.device)
        outs, buffer = model.executable.run(arrays, (rows,) + reqs[0].shape, ws, self.device,
                                            _finish_by(reqs) if model.executable.loops else None)
        try:
            specs = model.plan.outputs
            if len(reqs) == 1:  # the whole outputs: no row slicing
                host = self.device.to_host
                results = [[OutputTensor(spec.name, o.dtype, o.shape, host(o)) for spec, o in zip(specs, outs)]]
            else:
                results, start = [], 0
                for r in reqs:
                    rows_of = slice(start, start + r.rows)
                    start += r.rows
                    tensors = [OutputTensor(spec.name, o.dtype, o[rows_of].shape if spec.symbols[:1] == (BATCH,) else o.shape,
                                            self.device.to_host(o[rows_of] if spec.symbols[:1] == (BATCH,) else o))
                               for spec, o in zip(specs, outs)]
                    results.append(tensors)
        finally:
            buffer.free()
        done = time.perf_counter()
        # Counted here, as answered, with the execution (one lock); _failed counts the failures.
        model.stats.served([(r.enqueued, r.started, r.rows) for r in reqs], done)
        return [ExecuteResult(t, int((r.started - r.enqueued) * 1e6), int((done - r.started) * 1e6))
                for t, r in zip(results, reqs)]


def _finish_by(reqs: list[Request]) -> float | None:
    """When the last of merged requests' callers stops waiting (None: one of them waits for ever)."""
    if any(r.finish_by is None for r in reqs):
        return None
    return max(r.finish_by for r in reqs)


def _failed(stats: ModelStats, req: Request, error: BaseException) -> None:
    """A request that failed is counted here; one that was answered, by its execution (_run)."""
    stats.request_done(req.enqueued, req.started or req.enqueued, False, req.rows)


def _check_device(plan: Plan, device: Device) -> None:
    """Every op the plan runs has a kernel on this device (the cpu has them all)."""
    missing = sorted({s.node.op_type for s in plan.steps if s.phase == "run" and not s.op.alias
                      and device.kernel(s.op) is None})
    if missing:
        raise UnsupportedModel(f"the model runs {missing[:16]}, which device {device.name} has no kernels for; "
                               "serve it on the cpu device")


def _check_batchable(plan: Plan, b: Batching) -> None:
    if any(s.op.sized for s in plan.steps):
        raise InvalidArgument("dynamic batching needs outputs whose size the batch decides; this model returns "
                              "some at a size its data decides (NonZero, NonMaxSuppression, ...)")
    if plan.max_batch < 2:
        raise InvalidArgument("dynamic batching needs max_batch of 2 or more (and a model with an open "
                              "leading dimension)")
    fixed = [s.name for s in plan.inputs if s.shape[:1] != (-1,)]
    if fixed:
        raise InvalidArgument(f"dynamic batching needs every input to have the batch dimension; {fixed} do not")
    too_big = [n for n in b.preferred_batch_sizes if not 1 <= n <= plan.max_batch]
    if too_big:
        raise InvalidArgument(f"preferred batch sizes {too_big} are outside 1..{plan.max_batch} (max_batch)")
