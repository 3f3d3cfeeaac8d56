"""Load-time work is budgeted: host bytes are counted before they are taken, and
the work stops when its caller goes away.

A model is data from an untrusted client, and a 100-byte model can ask the
compiler to fold a tensor of 2^40 elements. So every load and QuerySize runs
as a `LoadJob` drawn from the daemon's one `LoadBudget`:

1. Before load-time work takes host memory (upload staging, the parsed model,
   initializers, folded constants), it calls `charge(nbytes, what)`. The job
   adds the bytes to the budget shared by every load in flight; if they would
   pass the limit (--max-load-memory), it raises RESOURCE_EXHAUSTED naming
   `what` (the node or initializer) and nothing is allocated.
2. Between units of work (each node, each planner pass) it calls
   `checkpoint()`, which raises CANCELLED when the caller went away and
   DEADLINE_EXCEEDED when its deadline passed, so abandoned compiles stop.
3. A transient copy is given back with `release(nbytes)` once it is gone;
   when the job ends, all its bytes go back to the budget, whatever happened.

The job of the running thread is found through a thread-local, so that the
compiler and the kernels' constant folding need no extra parameter: outside
a job (execution-time binding of small shape values) both calls do nothing.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable

from .errors import Cancelled, DeadlineExceeded, ResourceExhausted

_local = threading.local()


class LoadBudget:
    """The host bytes all loads in flight may hold together."""

    def __init__(self, limit: int):
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def job(self, alive: Callable[[], bool] | None = None, deadline: float | None = None) -> LoadJob:
        """A job for one load; `alive()` False or time.monotonic() past `deadline` stops it."""
        return LoadJob(self, alive, deadline)

    def _take(self, nbytes: int, what: str) -> None:
        with self._lock:
            if self._used + nbytes > self.limit:
                free = self.limit - self._used
                raise ResourceExhausted(
                    f"{what} needs {nbytes} bytes of load-time memory but {free} of the {self.limit} that "
                    "loads in flight may use are free; make the model smaller, retry when other loads "
                    "finish, or start memserved with a larger --max-load-memory")
            self._used += nbytes

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes


class LoadJob:
    def __init__(self, budget: LoadBudget, alive: Callable[[], bool] | None, deadline: float | None):
        self.budget = budget
        self.alive = alive
        self.deadline = deadline
        self.charged = 0
        self._outer: LoadJob | None = None

    def charge(self, nbytes: int, what: str) -> None:
        nbytes = max(int(nbytes), 0)
        self.budget._take(nbytes, what)
        self.charged += nbytes

    def release(self, nbytes: int) -> None:
        """Give back bytes this job charged and no longer holds (a transient copy, say)."""
        nbytes = min(max(int(nbytes), 0), self.charged)
        self.budget._give(nbytes)
        self.charged -= nbytes

    def nested(self) -> contextlib.AbstractContextManager[LoadJob]:
        """This job again, for a callee that would otherwise enter a job of its own."""
        return contextlib.nullcontext(self)

    def checkpoint(self, margin: float = 0.0) -> None:
        if self.alive is not None and not self.alive():
            raise Cancelled("the client went away; the load was stopped and left nothing behind")
        if self.deadline is not None and time.monotonic() + margin > self.deadline:
            raise DeadlineExceeded("the load's deadline passed; it was stopped and left nothing behind")

    def __enter__(self) -> LoadJob:
        self._outer = getattr(_local, "job", None)
        _local.job = self
        return self

    def __exit__(self, *exc) -> None:
        _local.job = self._outer
        self.budget._give(self.charged)
        self.charged = 0


def current() -> LoadJob | None:
    return getattr(_local, "job", None)


def charge(nbytes: int, what: str) -> None:
    """Count `nbytes` of load-time host memory against the running load's budget."""
    job = getattr(_local, "job", None)
    if job is not None:
        job.charge(nbytes, what)


def release(nbytes: int) -> None:
    """Give back bytes the running load charged and has let go of."""
    job = getattr(_local, "job", None)
    if job is not None:
        job.release(nbytes)


def checkpoint(margin: float = 0.0) -> None:
    """Stop the running load if its caller left or its deadline passes within `margin` seconds."""
    job = getattr(_local, "job", None)
    if job is not None:
        job.checkpoint(margin)
