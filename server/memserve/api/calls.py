"""What every RPC shares, whatever its protocol: its deadline, and loads tied to their call.

A load belongs to its caller. It runs as a load job (budget.py) that stops
when the call is cancelled or its deadline passes, and that checks once more
just before the model is registered; if the call still ends cancelled after
that (the answer was lost on the way), the model is unloaded again, so no
model stays loaded under an id that no client received.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import grpc

from ..errors import MemserveError
from ..registry import LoadedModel, Pending, Registry

log = logging.getLogger("memserve.api")


def deadline(context: grpc.ServicerContext) -> float | None:
    """The call's gRPC deadline as time.monotonic() (None without one)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def deadlines(context: grpc.ServicerContext, timeout_us: int) -> tuple[float | None, float | None]:
    """(start by, finish by) of a request: it must start before its own timeout and the gRPC deadline,
    whichever is sooner, and finish before the gRPC deadline, when its caller stops waiting."""
    finish_by = deadline(context)
    if not timeout_us:
        return finish_by, finish_by
    own = time.monotonic() + timeout_us / 1e6
    return (own if finish_by is None else min(own, finish_by)), finish_by


def answer(pending: Pending, context: grpc.ServicerContext):
    """The result of a unary call's execution. A request that ran inline (its lane was idle) is done
    already; one still queued is dropped if the call is cancelled, instead of running for nobody."""
    future = pending.request.future
    # add_callback is False when the call has already ended: a client that cancels at once
    # can do that before we get here, and its request must not run either.
    if not future.done() and not context.add_callback(pending.cancel):
        pending.cancel()
    return future.result()


def load_for_call(registry: Registry, context: grpc.ServicerContext,
                  load: Callable[[], LoadedModel]) -> LoadedModel:
    """Run `load` (upload included) as the call's load job; undo it if the caller never got the answer."""
    with registry.load_job(alive=context.is_active, deadline=deadline(context)):
        model = load()

    def undo_if_abandoned() -> None:
        if _ended_cancelled(context):
            # Not on grpc's completion thread: unload waits for the model's lanes.
            threading.Thread(target=_forget, args=(registry, model), name="abandoned-load", daemon=True).start()

    if not context.add_callback(undo_if_abandoned):  # the call already ended
        undo_if_abandoned()
    return model


def _ended_cancelled(context: grpc.ServicerContext) -> bool:
    """Whether the call ended cancelled (by its client, a deadline or the transport), not answered.
    grpcio exposes this only on its context's state."""
    state = getattr(context, "_state", None)
    return getattr(state, "client", None) == "cancelled"


def _forget(registry: Registry, model: LoadedModel) -> None:
    try:
        registry.unload(model.id)
        log.info("model %s (id %d) unloaded: its caller went away before it got the answer", model.name,
                 model.id, extra={"model": model.name})
    except MemserveError:
        pass  # already unloaded or replaced by someone else
