"""Workspace offsets for tensors with known lifetimes: a greedy-by-size planner.

The algorithm is the one of TFLite Micro's GreedyMemoryPlanner:

1. Every tensor that needs work memory is a request: a size in bytes and a
   lifetime [first, last], the steps that write and last read it.
2. Requests are taken largest first (ties: earlier first step, then lower
   index, so that plans are reproducible).
3. For each request, look at the already placed requests whose lifetimes
   overlap it, in order of offset. Starting at offset 0, walk the gaps
   between them and take the first gap the request fits in (its start
   rounded up to the alignment); if none fits, place it after the last one.
4. The workspace size is the highest end offset.

Placing big tensors first leaves the small ones to fill the holes between
them, which on feed-forward graphs lands at, or within a few percent of, the
lower bound: the largest number of bytes live at any one step. No plan can
use less, so `lower_bound` is reported next to the size.

Largest-first is not always best (on a ResNet-18 it ends 7.6% above the
bound), so step 2 is run with three orders: by size, by size x lifetime
length, and by first use; the smallest result wins (ties: that order).

Step 3 never looks at a request that does not overlap the one being placed,
so a pass costs O(n log n) plus the number of overlapping pairs, not n^2:

a. Before the passes, the requests are sorted by first step. The placed
   requests that overlap request R = [f, l] are those that start within
   [f, l] (a slice of that sorted list, found by bisection; the ones not yet
   placed in it are skipped) and those that started before f and are still
   live at f.
b. The second kind is kept per step where some lifetime starts: a placed
   request [f', l'] is filed under each such step in (f', l'], and the ones
   live at f are those filed under f. Filing costs no more than the request's
   own slice in (a), since each of those steps starts a request within it.
c. (A lifetime with last < first overlaps almost nothing; the few such
   requests are compared with the others one by one.)

Every request looked at in (a), (b) and (c) is counted as a visit
(`MemoryPlan.visits`): the planner's work, deterministic, near-linear in the
number of tensors for real models. Where many tensors are live at once,
first-fit itself is quadratic (each one has to be fitted among all the
others), so the work is bounded:

5. A pass that visits more than `budget` requests (PASS_BUDGET, about a
   second of Python) is abandoned; the best of the passes that completed
   wins. When the visits every pass must make (the slices of (a), known
   before any pass) already exceed the budget, no pass is started.
6. When no pass completed, a sweep in step order places the requests
   instead, in O(n log n): a request's bytes go back to a free list once its
   lifetime is over, and a later request takes a freed block it fits in
   (searched by size class), else new bytes at the end.
"""
from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from .budget import checkpoint
from .device import ALIGNMENT, align_up

# Visits one first-fit pass may make: under a second of Python; about 2,400
# tensors all live at once.
PASS_BUDGET = 3_000_000

FIRST_FIT_ORDERS = ("size", "size x lifetime", "first use")
SWEEP = "sweep"


@dataclass(frozen=True)
class Lifetime:
    size: int
    first: int
    last: int

    def overlaps(self, other: Lifetime) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class MemoryPlan:
    offsets: tuple[int, ...]
    size: int
    lower_bound: int
    peak_step: int
    visits: int = 0  # requests looked at by the first-fit passes (see the module docstring)
    order: str = ""  # the order that won (one of FIRST_FIT_ORDERS), or SWEEP


def plan_offsets(requests: list[Lifetime], alignment: int = ALIGNMENT, budget: int = PASS_BUDGET) -> MemoryPlan:
    """Assign an aligned offset to each request; see the module docstring."""
    sizes = [align_up(r.size, alignment) for r in requests]
    keys = (
        lambda i: (-sizes[i], requests[i].first, i),
        lambda i: (-sizes[i] * (requests[i].last - requests[i].first + 1), i),
        lambda i: (requests[i].first, -sizes[i], i),
    )
    overlaps = _Overlaps(requests)
    best: tuple[int, list[int], str] | None = None
    visits = 0
    if overlaps.least_visits <= budget:
        for name, key in zip(FIRST_FIT_ORDERS, keys):
            checkpoint()  # a pass is bounded by `budget`; between passes, stop if the load's caller left
            offsets, used = overlaps.first_fit(sorted(range(len(requests)), key=key), sizes, alignment, budget)
            visits += used
            if offsets is None:
                continue
            size = max((o + s for o, s in zip(offsets, sizes)), default=0)
            if best is None or size < best[0]:
                best = (size, offsets, name)
    if best is None:
        offsets = _sweep(requests, sizes)
        best = (max((o + s for o, s in zip(offsets, sizes)), default=0), offsets, SWEEP)
    lower_bound, peak_step = live_peak(requests, alignment)
    return MemoryPlan(tuple(best[1]), best[0], lower_bound, peak_step, visits, best[2])


class _Overlaps:
    """Steps (a)-(c) of the module docstring: the index, built once for all passes."""

    def __init__(self, requests: list[Lifetime]):
        self.requests = requests
        n = len(requests)
        self.empty = [i for i, r in enumerate(requests) if r.first > r.last]
        by_first = sorted((i for i, r in enumerate(requests) if r.first <= r.last), key=lambda i: requests[i].first)
        firsts = [requests[i].first for i in by_first]
        self.starts = sorted(set(firsts))  # the only steps a query asks about
        self.by_first = by_first
        self.window: list[tuple[int, int] | None] = [None] * n  # slice of by_first starting within the lifetime
        self.start: list[int] = [0] * n  # index in starts of the request's first step
        self.later: list[range] = [range(0)] * n  # indices in starts of the steps in (first, last]
        least = 0
        for i in by_first:
            r = requests[i]
            lo, hi = bisect_left(firsts, r.first), bisect_right(firsts, r.last)
            self.window[i] = (lo, hi)
            least += hi - lo
            k = bisect_left(self.starts, r.first)
            self.start[i] = k
            self.later[i] = range(k + 1, bisect_right(self.starts, r.last, k))
        self.least_visits = least  # what every pass visits in (a), placed or not

    def first_fit(self, order: list[int], sizes: list[int], alignment: int, budget: int
                  ) -> tuple[list[int] | None, int]:
        """One pass of step 3 in `order`: (offsets, visits), or (None, visits) past the budget."""
        requests, by_first, window, start, later = self.requests, self.by_first, self.window, self.start, self.later
        spans: list[tuple[int, int] | None] = [None] * len(requests)  # (offset, end) of each placed request
        live: list[list[tuple[int, int]] | None] = [None] * len(self.starts)  # (b): at each start step
        placed: list[int] = []  # step (c), kept only when some lifetime is empty: every placed request
        placed_empty: list[int] = []  # and those with an empty lifetime
        visits = 0
        for i in order:
            w = window[i]
            if w is not None:
                lo, hi = w
                conflicts = [spans[j] for j in by_first[lo:hi] if spans[j] is not None]
                visits += hi - lo
                at = live[start[i]]
                if at:
                    conflicts += at
                    visits += len(at)
                if placed_empty:
                    visits += len(placed_empty)
                    conflicts += [spans[j] for j in placed_empty if requests[j].overlaps(requests[i])]
            else:
                visits += len(placed)
                conflicts = [spans[j] for j in placed if requests[j].overlaps(requests[i])]
            size = sizes[i]
            candidate = 0
            if conflicts:
                conflicts.sort()
                for begin, end in conflicts:
                    if candidate + size <= begin:
                        break
                    candidate = max(candidate, align_up(end, alignment))
            span = spans[i] = (candidate, candidate + size)
            for k in later[i]:  # no more of them than the request's own slice in (a)
                at = live[k]
                if at is None:
                    live[k] = [span]
                else:
                    at.append(span)
            if self.empty:
                placed.append(i)
                if w is None:
                    placed_empty.append(i)
            if visits > budget:
                return None, visits
        return [span[0] for span in spans], visits


def _sweep(requests: list[Lifetime], sizes: list[int]) -> list[int]:
    """Step 6: requests by first step; a dead request's block goes to the free list of its size class
    (its bit length), and a later request takes a free block it fits in, else new bytes at the end.
    A lifetime with last < first is taken as [last, first], which overlaps everything it did and more."""
    spans = [(min(r.first, r.last), max(r.first, r.last)) for r in requests]
    offsets = [0] * len(requests)
    free: list[list[tuple[int, int]]] = [[] for _ in range(max(sizes, default=0).bit_length() + 1)]
    live: list[tuple[int, int, int]] = []  # heap of (last step, offset, block size)
    top = 0
    for i in sorted(range(len(requests)), key=lambda i: (spans[i][0], i)):
        first, last = spans[i]
        while live and live[0][0] < first:
            _, offset, block = heapq.heappop(live)
            free[block.bit_length()].append((block, offset))
        size = sizes[i]
        if size == 0:
            continue
        k = size.bit_length()
        if free[k] and free[k][-1][0] >= size:
            block, offset = free[k].pop()
        else:
            k = next((c for c in range(k + 1, len(free)) if free[c]), None)
            if k is not None:
                block, offset = free[k].pop()
            else:
                block, offset = size, top
                top += size
        offsets[i] = offset
        heapq.heappush(live, (last, offset, block))
    return offsets


def live_peak(requests: list[Lifetime], alignment: int = ALIGNMENT) -> tuple[int, int]:
    """(largest sum of aligned sizes live at one step, that step)."""
    if not requests:
        return 0, 0
    deltas: dict[int, int] = {}
    for r in requests:
        s = align_up(r.size, alignment)
        deltas[r.first] = deltas.get(r.first, 0) + s
        deltas[r.last + 1] = deltas.get(r.last + 1, 0) - s
    live = peak = peak_step = 0
    for step in sorted(deltas):
        live += deltas[step]
        if live > peak:
            peak, peak_step = live, step
    return peak, peak_step
