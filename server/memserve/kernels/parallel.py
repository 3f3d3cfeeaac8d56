"""The daemon's kernel threads: one team of `--threads - 1` helpers that every lane shares.

A kernel with enough work (a large convolution) splits it into tasks and calls
`run(n, fn)`: the calling thread and any idle helpers take tasks one at a
time from a shared counter until none is left, then the caller returns. Why
not BLAS's own threads: OpenBLAS ends every multi-threaded call at a barrier
and its idle workers spin, so with another process on a core each call
waited for a descheduled thread (conv models 2-37x slower, docs/performance.md),
and two lanes each calling a BLAS that uses every core oversubscribe the
machine. Here BLAS runs single-threaded, a helper that the scheduler parks
simply takes fewer tasks (the others take the rest), idle helpers sleep on a
condition variable, and the daemon's kernel threads are its lanes' callers
plus one team, whatever the number of lanes.

The tasks' work must release the GIL (numpy's matmul, numba kernels compiled
with nogil) for threads to overlap. Each participant gets a slot index in
[0, n_slots): tasks that need scratch use the slot's part of it, so two tasks
never share a buffer.
"""
from __future__ import annotations

import os
import threading
from typing import Callable

_threads = 1
_team: "Team | None" = None
_team_lock = threading.Lock()


class _Job:
    __slots__ = ("fn", "tasks", "slots", "next_task", "next_slot", "running", "error", "done")

    def __init__(self, fn: Callable[[int, int], None], tasks: int, slots: int):
        self.fn, self.tasks, self.slots = fn, tasks, slots
        self.next_task = 0
        self.next_slot = 1  # the caller is slot 0
        self.running = 1  # participants working on it, the caller included
        self.error: BaseException | None = None
        self.done = threading.Condition(threading.Lock())


class Team:
    """Helper threads that take tasks of the oldest job that still has some."""

    def __init__(self, helpers: int):
        self._cond = threading.Condition(threading.Lock())
        self._jobs: list[_Job] = []
        self._closed = False
        self._threads = [threading.Thread(target=self._help, name=f"kernel-helper-{k}", daemon=True)
                         for k in range(helpers)]
        for t in self._threads:
            t.start()

    def run(self, tasks: int, fn: Callable[[int, int], None], slots: int) -> None:
        """fn(task, slot) for every task in [0, tasks); returns when all have run (the first error is raised)."""
        job = _Job(fn, tasks, slots)
        with self._cond:
            self._jobs.append(job)
            self._cond.notify(min(slots - 1, len(self._threads)))
        self._work(job, 0)
        with job.done:
            while job.running:
                job.done.wait()
        if job.error is not None:
            raise job.error

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    def _take(self, job: _Job) -> int:
        """The next task of `job`, or -1 when none is left (then the job leaves the queue)."""
        with self._cond:
            task = job.next_task
            if task >= job.tasks:
                if job in self._jobs:
                    self._jobs.remove(job)
                return -1
            job.next_task = task + 1
            return task

    def _work(self, job: _Job, slot: int) -> None:
        try:
            while job.error is None and (task := self._take(job)) >= 0:
                job.fn(task, slot)
        except BaseException as exc:  # the caller raises it; the other participants stop taking tasks
            job.error = exc
            with self._cond:
                if job in self._jobs:
                    self._jobs.remove(job)
        finally:
            with job.done:
                job.running -= 1
                job.done.notify_all()

    def _help(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._jobs:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._jobs[0]
                slot = job.next_slot
                job.next_slot += 1
                if job.next_slot >= job.slots:  # every slot taken: the next helper looks at the next job
                    self._jobs.pop(0)
                with job.done:
                    job.running += 1
            self._work(job, slot)


def set_threads(n: int) -> None:
    """Threads per kernel call: 0 for every core this process may use. Sets BLAS to one thread (the team
    splits the large kernels instead), numba's parallel kernels to n, and the team to n - 1 helpers."""
    global _threads, _team
    from threadpoolctl import threadpool_limits

    from . import jit

    n = n if n > 0 else len(os.sched_getaffinity(0))
    threadpool_limits(1)
    jit.set_threads(n)
    with _team_lock:
        old, _team, _threads = _team, (Team(n - 1) if n > 1 else None), n
    if old is not None:
        old.close()


def threads() -> int:
    return _threads


def run(tasks: int, fn: Callable[[int, int], None], slots: int) -> None:
    """fn(task, slot) for each task, on up to `slots` threads (the caller's and the team's)."""
    team = _team
    if team is None or slots < 2 or tasks < 2:
        for task in range(tasks):
            fn(task, 0)
        return
    team.run(tasks, fn, slots)
