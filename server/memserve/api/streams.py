"""Pipelined bidirectional streams: submit requests as they arrive, answer each as it finishes.

One helper for both APIs' streams. A stream must never lose its reader and
never owe an answer it cannot give: whatever a request makes fail (decoding,
submitting, building the response), that request gets its error answer and
the reader goes on. The answers a stream owes but has not yet sent are
bounded, so a client that sends without reading is slowed by flow control
instead of filling the daemon's memory; open streams are bounded too, so
that streams can never hold every gRPC worker thread.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Iterator

import grpc

from ..errors import InternalError, MemserveError, ResourceExhausted
from ..registry import Pending

log = logging.getLogger("memserve.api")
MAX_OWED = 256  # answers one stream may owe before it stops reading requests

Submit = Callable[[Any], tuple[Pending, Any]]  # decode and queue one request: (pending, what respond needs)
Respond = Callable[[Any, Any, Any, float], Any]  # (request, state, ExecuteResult, start) -> response
Fail = Callable[[Any, MemserveError, float], Any]  # (request, error, start) -> error response


class StreamLimit:
    """How many streams may be open at once (each holds a gRPC worker thread while open)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def enter(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise ResourceExhausted(f"{self.limit} streams are open, the most memserved allows (half its "
                                    "--workers); close one, use unary calls, or start memserved with more --workers")

    def exit(self) -> None:
        self._slots.release()


def pipelined(request_iterator, context: grpc.ServicerContext, submit: Submit, respond: Respond, fail: Fail,
              name: str, limit: StreamLimit | None = None) -> Iterator[Any]:
    """Yield one answer per request, in completion order."""
    if limit is not None:
        try:
            limit.enter()
        except MemserveError as err:
            context.abort(err.code, err.message)
    try:
        yield from _pipelined(request_iterator, context, submit, respond, fail, name)
    finally:
        if limit is not None:
            limit.exit()


def _pipelined(request_iterator, context, submit: Submit, respond: Respond, fail: Fail, name: str) -> Iterator[Any]:
    answers: queue.SimpleQueue = queue.SimpleQueue()
    owed = threading.BoundedSemaphore(MAX_OWED)
    live: dict[int, Pending] = {}  # submitted, not yet answered: cancelled if the stream ends
    lock = threading.Lock()
    context.add_callback(lambda: [p.cancel() for p in _drain(live, lock)])

    def error(request, exc: BaseException, start: float) -> None:
        if not isinstance(exc, MemserveError):
            log.error("internal error in %s", name, exc_info=exc)
            exc = InternalError(f"internal error: {type(exc).__name__}: {exc}")
        try:
            answers.put(fail(request, exc, start))
        except Exception:  # noqa: BLE001 - the request is still owed an answer
            log.exception("could not build the error answer in %s", name)
            answers.put(_NOTHING)

    def finish(request, pending: Pending, state, start: float) -> None:
        with lock:
            live.pop(id(pending), None)
        try:
            future = pending.request.future
            exc = future.exception()
            if exc is None:
                answers.put(respond(request, state, future.result(), start))
                return
        except BaseException as failure:  # noqa: BLE001 - building the answer failed
            exc = failure
        error(request, exc, start)

    def read() -> None:
        count = 0
        try:
            for request in request_iterator:
                while not owed.acquire(timeout=0.5):  # the client reads no answers: stop reading requests
                    if not context.is_active():
                        return
                count += 1
                start = time.perf_counter()
                try:
                    pending, state = submit(request)
                except BaseException as exc:  # noqa: BLE001 - decode or submit failed: answer and go on
                    error(request, exc, start)
                    continue
                with lock:
                    live[id(pending)] = pending
                pending.request.future.add_done_callback(
                    lambda f, r=request, p=pending, s=state, t=start: finish(r, p, s, t))
        except grpc.RpcError:
            pass  # the client went away; the cancel callback drops what waits
        except Exception:  # noqa: BLE001 - a reader that dies would leave the stream waiting forever
            log.exception("stream reader of %s failed", name)
        finally:
            answers.put(_Done(count))  # this many answers are owed

    threading.Thread(target=read, name=name, daemon=True).start()
    total, sent = None, 0
    while total is None or sent < total:
        try:
            item = answers.get(timeout=1.0)
        except queue.Empty:
            if not context.is_active():  # cancelled: nobody reads the rest, free this worker
                return
            continue
        if isinstance(item, _Done):
            total = item.count
            continue
        sent += 1
        owed.release()
        if item is not _NOTHING:
            yield item


def _drain(live: dict, lock: threading.Lock) -> list:
    with lock:
        items = list(live.values())
        live.clear()
    return items


class _Done:
    def __init__(self, count: int):
        self.count = count


_NOTHING = object()
