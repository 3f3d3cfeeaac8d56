"""Lanes: one workspace, one worker thread, requests run one at a time (I1).

Every model runs on the lane of its workspace, so models that share a
workspace take turns on it, and lanes of different workspaces run in
parallel. A lane's queue is ordered by priority (0 first, as AscendCL's model
priority); within a priority the models that share the lane are served
round-robin, each in arrival order, so no model starves another. A request
that was cancelled, whose deadline passed, or whose model is being unloaded
is dropped before it runs (I6, I7).

Overload sheds early. A lane keeps a moving average of how long one of its
executions takes; a request with a deadline that the work queued ahead of it
(at its priority or higher) cannot let it meet is refused at once with
RESOURCE_EXHAUSTED, instead of waiting to expire; and a request that reaches
the front of the queue with less time left than an execution takes is
dropped with DEADLINE_EXCEEDED, so that no execution is spent on an answer
that would come too late. A lane that has been idle for a second runs what
it is given whatever its estimate, so that a stale estimate is refreshed.

Dynamic batching: a request that allows it (`batch_limit` rows) takes the
requests of the same model, priority and other open dimensions' sizes
(`shape`) queued behind it, in order, up to the limit,
and, when it may wait (`batch_delay`), waits until that many rows (or the
preferred count) arrived or the delay passed. The model's job then runs them
as one execution.
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from concurrent.futures import InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable

from .device import Context
from .errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, MemserveError, ResourceExhausted, Unavailable
from .pool import Workspace

Job = Callable[[list["Request"], Workspace], list[Any]]  # one result per request
PRIORITIES = 8
PROBE_INTERVAL = 1.0  # seconds: an idle lane runs a request it expects to be late at most this often
log = logging.getLogger("memserve.scheduler")
_settle = threading.Lock()  # guards every Outcome's few fields; held for a handful of instructions


class Outcome:
    """A request's result or error: the part of concurrent.futures.Future that callers use.

    A Future builds a Condition (two locks and a list) when it is made and notifies it when set;
    most requests run inline on their caller's thread and are done before anyone waits, so this
    one makes an Event only for a caller that waits on an unfinished request.
    """

    __slots__ = ("_done", "_value", "_error", "_event", "_callbacks", "on_error")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._event: threading.Event | None = None
        self._callbacks: list | None = None
        # Called with the error when the request fails, before the done callbacks: what a caller that
        # only cares about failures sets (the registry counts them), costing nothing on success.
        self.on_error: Callable[[BaseException], Any] | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self._set(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._set(None, error)

    def _set(self, value: Any, error: BaseException | None) -> None:
        with _settle:
            if self._done:
                raise InvalidStateError("the request already has its outcome")
            self._value, self._error, self._done = value, error, True
            event, callbacks = self._event, self._callbacks
        if error is not None and self.on_error is not None:
            try:
                self.on_error(error)
            except Exception:  # noqa: BLE001 - the outcome stands whatever the hook does
                log.exception("a request's error hook failed")
        if event is not None:
            event.set()
        if callbacks:
            for fn in callbacks:
                try:
                    fn(self)
                except Exception:  # noqa: BLE001 - as Future does: one bad callback stops no other
                    log.exception("a request's done callback failed")

    def add_done_callback(self, fn: Callable[[Outcome], Any]) -> None:
        """Call fn(self) once done: at once, on this thread, if it is done already."""
        with _settle:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)

    def _wait(self, timeout: float | None) -> None:
        if self._done:
            return
        with _settle:
            if not self._done and self._event is None:
                self._event = threading.Event()
            event = self._event
        if event is not None and not event.wait(timeout):
            raise TimeoutError("the request has no outcome yet")

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error


@dataclass(eq=False, slots=True)
class Request:
    model_id: int
    job: Job  # runs on the lane's worker, in the device context, with the workspace held
    deadline: float | None = None  # time.monotonic() seconds by which it must start, or be dropped
    priority: int = 0
    payload: Any = None  # what the job reads (the request's inputs)
    rows: int = 1
    batch_limit: int = 0  # > 0: may run merged with others of its model, up to this many rows
    batch_delay: float = 0.0  # seconds it may wait for others to merge with
    batch_target: int = 0  # stop waiting once this many rows are gathered (0: batch_limit)
    finish_by: float | None = None  # time.monotonic() seconds when its caller stops waiting (gRPC deadline)
    shape: tuple = ()  # sizes of its open dimensions but the batch: only requests alike merge
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    future: Outcome = field(default_factory=Outcome)

    def __post_init__(self) -> None:
        if not 0 <= self.priority < PRIORITIES:
            raise InvalidArgument(f"priority must be 0 (highest) to {PRIORITIES - 1}, got {self.priority}")


class LaneQueue:
    """Per priority, one FIFO per model, taken round-robin."""

    def __init__(self) -> None:
        self._levels: list[collections.OrderedDict[int, collections.deque[Request]]] = [
            collections.OrderedDict() for _ in range(PRIORITIES)]
        self._len = 0
        self._counts = [0] * PRIORITIES  # queued requests per priority

    def ahead(self, priority: int) -> int:
        """Queued requests that run before a new one of `priority`."""
        return sum(self._counts[: priority + 1])

    def __len__(self) -> int:
        return self._len

    def push(self, req: Request) -> None:
        self._levels[req.priority].setdefault(req.model_id, collections.deque()).append(req)
        self._len += 1
        self._counts[req.priority] += 1

    def pop(self) -> Request:
        for level in self._levels:
            if level:
                model_id, fifo = next(iter(level.items()))
                req = fifo.popleft()
                del level[model_id]
                if fifo:  # back of the line: the next model at this priority goes first
                    level[model_id] = fifo
                self._len -= 1
                self._counts[req.priority] -= 1
                return req
        raise IndexError("pop from an empty lane queue")

    def remove(self, req: Request) -> bool:
        fifo = self._levels[req.priority].get(req.model_id)
        if fifo is None or req not in fifo:
            return False
        fifo.remove(req)
        if not fifo:
            del self._levels[req.priority][req.model_id]
        self._len -= 1
        self._counts[req.priority] -= 1
        return True

    def take_more(self, first: Request, rows: int) -> list[Request]:
        """Queued requests of `first`'s model, priority and shape, in order, while their rows fit."""
        fifo = self._levels[first.priority].get(first.model_id)
        taken = []
        while fifo and fifo[0].rows <= rows and fifo[0].shape == first.shape:
            req = fifo.popleft()
            rows -= req.rows
            taken.append(req)
        if fifo is not None and not fifo:
            del self._levels[first.priority][first.model_id]
        self._len -= len(taken)
        self._counts[first.priority] -= len(taken)
        return taken

    def remove_model(self, model_id: int) -> list[Request]:
        dropped = []
        for priority, level in enumerate(self._levels):
            fifo = level.pop(model_id, ())
            self._counts[priority] -= len(fifo)
            dropped += fifo
        self._len -= len(dropped)
        return dropped

    def count(self, model_id: int) -> int:
        return sum(len(level.get(model_id, ())) for level in self._levels)

    def drain(self) -> list[Request]:
        dropped = [r for level in self._levels for fifo in level.values() for r in fifo]
        for level in self._levels:
            level.clear()
        self._len = 0
        self._counts = [0] * PRIORITIES
        return dropped


class Lane:
    def __init__(self, workspace: Workspace, context: Context, max_queue: int):
        self.workspace = workspace
        self.context = context
        self.max_queue = max_queue
        self._queue = LaneQueue()
        self._mutex = threading.Lock()  # what submit and _done take: a plain lock, entered in C
        self._cond = threading.Condition(self._mutex)  # the same lock, for the waits
        self._running: Request | None = None
        self._models: set[int] = set()  # models that may queue here
        self._retiring = 0  # threads waiting in retire_model for a running request to finish
        self._closed = False
        self.execution_seconds = 0.0  # moving average of one execution; 0 until the first one
        self._finished = 0.0  # time.monotonic() when the last execution ended
        self.shed = 0  # requests refused because they could not meet their deadline
        self.expired = 0  # requests dropped because their deadline passed (or would) before they ran
        self._thread = threading.Thread(target=self._work, name=f"lane[{workspace.name}]", daemon=True)
        self._thread.start()

    def submit(self, req: Request) -> None:
        """Queue the request; on an idle lane, run it right here instead.

        Running inline on the caller's thread saves two thread hand-offs per
        request; it claims the lane exactly as the worker does, so I1 holds.
        """
        with self._mutex:
            if req.model_id not in self._models:
                raise FailedPrecondition(f"model {req.model_id} is being unloaded")
            if self._closed:
                raise Unavailable(f"workspace {self.workspace.name} is closing; retry")
            inline = not self._queue._len and self._running is None and req.batch_delay <= 0
            if req.deadline is not None or req.finish_by is not None:
                self._shed_if_late(req)
            if inline:
                self._running = req
            elif len(self._queue) >= self.max_queue:
                raise ResourceExhausted(
                    f"queue of workspace {self.workspace.name} is full ({self.max_queue} requests); retry later"
                )
            else:
                self._queue.push(req)
                self._cond.notify()
        if inline:
            try:
                with self.context:
                    self._run([req])
            finally:
                self._done()

    def _shed_if_late(self, req: Request) -> None:
        """Refuse a request its deadline cannot be met for, given the work ahead of it (lock held)."""
        now = time.monotonic()
        if req.deadline is not None and now > req.deadline:  # late already: not an overload refusal
            self.expired += 1
            raise DeadlineExceeded("the request's deadline passed before it could be queued")
        each = self.execution_seconds
        if (req.deadline is None and req.finish_by is None) or each <= 0:
            return
        ahead = self._queue.ahead(req.priority)
        if not ahead and self._running is None and now - self._finished > PROBE_INTERVAL:
            return  # an idle lane that was idle a while tries: executions are what refresh the estimate
        if req.batch_limit > req.rows:  # queued requests of a batching model run several at a time
            ahead = math.ceil(ahead / max(1, req.batch_limit // max(req.rows, 1)))
        running = self._running
        left = 0.0  # of the running execution
        if running is not None:
            left = max(each - (time.perf_counter() - running.started), 0.0) if running.started else each
        start = now + left + ahead * each
        if (req.deadline is not None and start > req.deadline) or \
                (req.finish_by is not None and start + each > req.finish_by):
            self.shed += 1
            raise ResourceExhausted(
                f"workspace {self.workspace.name} cannot run this request before its deadline: {ahead} executions "
                f"of about {each * 1e3:.1f} ms are ahead of it; retry later, on another replica, or with a "
                "longer deadline")

    def cancel(self, req: Request, error: MemserveError) -> bool:
        """Fail a request that has not started; False if it already runs or ran."""
        with self._cond:
            if not self._queue.remove(req):
                return False
        req.future.set_exception(error)
        return True

    def admit(self, model_id: int) -> None:
        with self._cond:
            self._models.add(model_id)

    def retire_model(self, model_id: int, error: MemserveError | None) -> None:
        """Refuse the model's new requests; fail its queued ones (or, with no error,
        let them run); wait until none of them runs (I7)."""
        with self._cond:
            self._models.discard(model_id)
            dropped = self._queue.remove_model(model_id) if error is not None else []
        for r in dropped:
            r.future.set_exception(error)
        with self._cond:
            self._retiring += 1
            try:
                while (self._running is not None and self._running.model_id == model_id) or \
                        self._queue.count(model_id):
                    self._cond.wait()
            finally:
                self._retiring -= 1

    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def busy(self) -> int:
        """Requests queued or running: how loaded this lane is."""
        with self._cond:
            return len(self._queue) + (self._running is not None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = self._queue.drain()
            self._cond.notify_all()
        for r in pending:
            r.future.set_exception(Unavailable(f"workspace {self.workspace.name} was closed"))
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _next(self) -> list[Request] | None:
        with self._cond:
            while (not self._queue or self._running is not None) and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._running = self._queue.pop()
            batch = [first]
            if first.batch_limit > first.rows:
                batch += self._gather(first)
            return batch

    def _gather(self, first: Request) -> list[Request]:
        """More requests to merge with `first`, waiting up to its batch delay for them."""
        room = first.batch_limit - first.rows
        target = (first.batch_target or first.batch_limit) - first.rows
        more = self._queue.take_more(first, room)
        until = first.enqueued + first.batch_delay
        while sum(r.rows for r in more) < target and not self._closed:
            left = until - time.perf_counter()
            if left <= 0:
                break
            self._cond.wait(left)
            more += self._queue.take_more(first, room - sum(r.rows for r in more))
        return more

    def _done(self) -> None:
        with self._mutex:
            self._running = None
            # Wake only who has something to do: waking an idle worker after every
            # inline execution costs a thread switch (~15 us) per request.
            if self._queue._len or self._retiring:
                self._cond.notify_all()

    def _work(self) -> None:
        with self.context:
            while (batch := self._next()) is not None:
                try:
                    self._run(batch)
                finally:
                    self._done()

    def _live(self, batch: list[Request]) -> list[Request]:
        """The requests of a batch still worth running; the rest get their error now."""
        if len(batch) == 1:
            req = batch[0]
            if req.deadline is None and req.finish_by is None and not req.future._done:
                return batch  # nothing to check: the common case, without reading the clock
        now = time.monotonic()
        # Under load (work waits behind this), an execution that would end after its deadline is not started.
        margin = self.execution_seconds if self._queue._len else 0.0
        live = []
        for req in batch:
            if req.future._done:  # cancelled by its caller after we dequeued it
                continue
            late = req.finish_by is not None and now + margin > req.finish_by
            if (req.deadline is not None and now > req.deadline) or late:
                self.expired += 1
                why = "would pass before an execution ends" if late and now <= (req.finish_by or now) else "passed"
                req.future.set_exception(DeadlineExceeded(f"deadline {why} while the request was queued"))
                continue
            live.append(req)
        return live

    def _run(self, batch: list[Request]) -> None:
        ws = self.workspace
        # The I1 probe counts before the workspace lock is taken: the lock (which resizes also take)
        # would serialize two lanes on one workspace and hide them; the probe sees them.
        with ws.probe:  # ws.enter(), inline: this runs once per request
            active = ws.active = ws.active + 1
            if active > ws.max_concurrent:
                ws.max_concurrent = active
        try:
            with ws.lock:
                # Deadlines are checked once the workspace is ours: a resize may hold it for a while.
                live = self._live(batch)
                if not live:
                    return
                ws.executions += 1
                started = time.perf_counter()
                for req in live:
                    req.started = started
                try:
                    results = live[0].job(live, ws)
                except BaseException as exc:  # the callers get the error, the lane keeps going
                    for req in live:
                        req.future.set_exception(exc)
                    return
                finally:
                    took = time.perf_counter() - started
                    self._finished = time.monotonic()
                    self.execution_seconds = took if not self.execution_seconds else \
                        0.8 * self.execution_seconds + 0.2 * took
        finally:
            with ws.probe:  # ws.exit()
                ws.active -= 1
        for req, result in zip(live, results):
            req.future.set_result(result)


class Scheduler:
    """Owns one lane per workspace."""

    def __init__(self, context: Context, max_queue: int = 1024):
        self.context = context
        self.max_queue = max_queue
        self._lanes: dict[str, Lane] = {}
        self._lock = threading.Lock()

    def lane(self, workspace: Workspace) -> Lane:
        with self._lock:
            lane = self._lanes.get(workspace.name)
            if lane is None or lane.workspace is not workspace:
                lane = self._lanes[workspace.name] = Lane(workspace, self.context, self.max_queue)
            return lane

    def retire(self, workspace: Workspace) -> None:
        """Stop the lane of a workspace that has no members left."""
        with self._lock:
            lane = self._lanes.get(workspace.name)
            if lane is None or lane.workspace is not workspace:
                return
            del self._lanes[workspace.name]
        lane.close()

    def depth(self, workspace: Workspace) -> int:
        with self._lock:
            lane = self._lanes.get(workspace.name)
        return lane.depth() if lane is not None and lane.workspace is workspace else 0

    def lanes(self) -> list[Lane]:
        with self._lock:
            return list(self._lanes.values())

    def close(self) -> None:
        for lane in self.lanes():
            self.retire(lane.workspace)
