"""The greedy-by-size planner: hand-checked offsets, a property over random lifetimes, the same offsets
as the quadratic first-fit it replaced (kept below as the reference), and its bounded work."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memserve.device import align_up
from memserve.model import CompileOptions, compile_model
from memserve.planner import FIRST_FIT_ORDERS, SWEEP, Lifetime, _Overlaps, live_peak, plan_offsets


def test_largest_first_then_after_conflicts():
    # B (256) goes first at 0; A and C overlap B in time, so they go above it;
    # A and C never live together, so they share offset 256.
    plan = plan_offsets([Lifetime(100, 0, 1), Lifetime(200, 1, 2), Lifetime(100, 2, 3)])
    assert plan.offsets == (256, 0, 256)
    assert plan.size == 384
    assert (plan.lower_bound, plan.peak_step) == (384, 1)


def test_small_tensor_fills_hole_below_a_larger_one():
    # T2 (512) at 0; T0 overlaps it, so 512; T1 lives only at step 0, when
    # T2 is not yet live, so it takes the hole at 0; T3 sits on T0's old bytes.
    reqs = [Lifetime(256, 0, 2), Lifetime(256, 0, 0), Lifetime(512, 1, 3), Lifetime(128, 3, 4)]
    plan = plan_offsets(reqs)
    assert plan.offsets == (512, 0, 0, 512)
    assert plan.size == plan.lower_bound == 768
    assert plan.peak_step == 1


def test_offsets_are_aligned_and_sizes_rounded():
    plan = plan_offsets([Lifetime(1, 0, 1), Lifetime(65, 0, 1)])
    assert plan.offsets == (128, 0)
    assert plan.size == 192


def test_empty_plan():
    plan = plan_offsets([])
    assert (plan.offsets, plan.size, plan.lower_bound) == ((), 0, 0)


def test_live_peak_counts_tensors_alive_at_the_same_step():
    assert live_peak([Lifetime(64, 0, 0), Lifetime(64, 1, 1), Lifetime(64, 1, 2)]) == (128, 1)


lifetimes = st.lists(
    st.tuples(st.integers(1, 5000), st.integers(0, 30), st.integers(0, 12)).map(
        lambda t: Lifetime(t[0], t[1], t[1] + t[2])),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(lifetimes)
def test_no_two_live_tensors_share_bytes(reqs):
    plan = plan_offsets(reqs)
    aligned = [(r.size + 63) // 64 * 64 for r in reqs]
    for i, a in enumerate(reqs):
        assert plan.offsets[i] % 64 == 0
        assert plan.offsets[i] + aligned[i] <= plan.size
        for j in range(i + 1, len(reqs)):
            if a.overlaps(reqs[j]):
                disjoint = (plan.offsets[i] + aligned[i] <= plan.offsets[j]
                            or plan.offsets[j] + aligned[j] <= plan.offsets[i])
                assert disjoint, (a, reqs[j], plan.offsets[i], plan.offsets[j])
    assert plan.lower_bound <= plan.size <= sum(aligned)
    assert (plan.offsets, plan.size) == reference_plan(reqs)


def test_a_later_order_wins_when_largest_first_wastes_space():
    # A (256, steps 3-5), B (320, step 2), C (320, steps 4-6), D (256, steps 0-3).
    # Largest first: B and C share offset 0, A goes above C at 320, and D,
    # alive with both B and A, fits neither below B nor between B and A: it
    # lands at 576, 832 bytes in all. By size x lifetime (D 1024, C 960,
    # A 768, B 320): D and C share 0, A sits at 320 above both, and B fits
    # between D and A at 256: 576 bytes, the lower bound (B and D at step 2).
    reqs = [Lifetime(256, 3, 5), Lifetime(320, 2, 2), Lifetime(320, 4, 6), Lifetime(256, 0, 3)]
    plan = plan_offsets(reqs)
    assert plan.offsets == (320, 256, 0, 0)
    assert plan.size == plan.lower_bound == 576


# -- the quadratic first-fit this planner replaced, kept as the reference ---------------------------
#
# planner.py finds each request's overlapping neighbours through an index instead of scanning every
# placed request; the offsets must not change. This is the implementation it replaced, verbatim.

def reference_plan(requests, alignment=64):
    """(offsets, size) of the three-order greedy planner, each pass O(n^2)."""
    sizes = [align_up(r.size, alignment) for r in requests]
    orders = (
        lambda i: (-sizes[i], requests[i].first, i),
        lambda i: (-sizes[i] * (requests[i].last - requests[i].first + 1), i),
        lambda i: (requests[i].first, -sizes[i], i),
    )
    best = None
    for key in orders:
        offsets = reference_place(sorted(range(len(requests)), key=key), requests, sizes, alignment)
        size = max((o + s for o, s in zip(offsets, sizes)), default=0)
        if best is None or size < best[0]:
            best = (size, offsets)
    return tuple(best[1]), best[0]


def reference_place(order, requests, sizes, alignment):
    offsets = [None] * len(requests)
    placed = []
    for i in order:
        conflicts = sorted(
            (offsets[j], offsets[j] + sizes[j]) for j in placed if requests[j].overlaps(requests[i])
        )
        candidate = 0
        for start, end in conflicts:
            if candidate + sizes[i] <= start:
                break
            candidate = max(candidate, align_up(end, alignment))
        offsets[i] = candidate
        placed.append(i)
    return offsets


def assert_valid(reqs, plan, alignment=64):
    """No two tensors live at the same step share a byte; every one inside the workspace."""
    aligned = [align_up(r.size, alignment) for r in reqs]
    assert len(plan.offsets) == len(reqs)
    for i, r in enumerate(reqs):
        assert plan.offsets[i] % alignment == 0 and plan.offsets[i] + aligned[i] <= plan.size
    def disjoint(i, j):
        return (not aligned[i] or not aligned[j] or plan.offsets[i] + aligned[i] <= plan.offsets[j]
                or plan.offsets[j] + aligned[j] <= plan.offsets[i])

    # Two lifetimes that overlap are both live at the later of their first steps: at each step where
    # some lifetime starts, the live tensors sorted by offset must not run into each other.
    nonempty = sorted((i for i, r in enumerate(reqs) if r.first <= r.last), key=lambda i: reqs[i].first)
    live: list[int] = []
    k = 0
    for step in sorted({reqs[i].first for i in nonempty}):
        while k < len(nonempty) and reqs[nonempty[k]].first == step:
            live.append(nonempty[k])
            k += 1
        live = [j for j in live if reqs[j].last >= step]
        by_offset = sorted((j for j in live if aligned[j]), key=lambda j: plan.offsets[j])
        for a, b in zip(by_offset, by_offset[1:]):
            assert plan.offsets[a] + aligned[a] <= plan.offsets[b], (reqs[a], reqs[b])
    for i, r in enumerate(reqs):  # an empty lifetime (last < first) overlaps those that span it
        if r.first > r.last:
            for j, other in enumerate(reqs):
                assert not r.overlaps(other) or disjoint(i, j), (r, other)
    assert plan.lower_bound <= plan.size <= sum(aligned)


any_lifetimes = st.lists(  # lifetimes anywhere, some empty (last < first): the planner takes any input
    st.tuples(st.integers(0, 3000), st.integers(-5, 25), st.integers(-6, 12)).map(
        lambda t: Lifetime(t[0], t[1], t[1] + t[2])),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(any_lifetimes, st.sampled_from([1, 16, 64]))
def test_same_offsets_as_the_quadratic_reference_on_any_lifetimes(reqs, alignment):
    plan = plan_offsets(reqs, alignment)
    assert (plan.offsets, plan.size) == reference_plan(reqs, alignment)


def random_requests(rng, n, shape):
    if shape == "chain":  # each tensor read by the next step or two, as in a feed-forward graph
        return [Lifetime(64 * rng.randint(1, 64), k, k + rng.choice([0, 1, 1, 2, 5])) for k in range(n)]
    if shape == "skips":  # mostly short, some living across many steps (skip connections)
        return [Lifetime(rng.choice([64, 256, 1000, 4096, 50000]), k // 2,
                         k // 2 + (rng.randint(20, 300) if rng.random() < 0.05 else rng.randint(0, 3)))
                for k in range(n)]
    # "mixed": arbitrary starts and lengths, equal sizes frequent (ties), a few empty lifetimes
    return [Lifetime(rng.choice([0, 64, 64, 128, rng.randint(1, 20000)]), f, f + rng.randint(-1, 40))
            for f in (rng.randint(0, n // 3) for _ in range(n))]


@pytest.mark.parametrize("shape", ["chain", "skips", "mixed"])
@pytest.mark.parametrize("n", [300, 1200])
def test_same_offsets_as_the_reference_on_larger_random_plans(shape, n):
    reqs = random_requests(random.Random(n), n, shape)
    plan = plan_offsets(reqs)
    assert plan.order != SWEEP
    assert (plan.offsets, plan.size) == reference_plan(reqs)
    assert_valid(reqs, plan)


def recorded_requests(model: bytes, **options) -> list[list[Lifetime]]:
    """The planner requests compiling `model` makes."""
    import memserve.model.compile as compile_module

    seen = []
    real = compile_module.plan_offsets

    def record(requests, *args, **kwargs):
        seen.append(list(requests))
        return real(requests, *args, **kwargs)

    compile_module.plan_offsets = record
    try:
        compile_model(model, CompileOptions(**options))
    finally:
        compile_module.plan_offsets = real
    return seen


def suite_names():
    from zoo import SUITE

    return list(SUITE)


@pytest.mark.parametrize("name", suite_names())
def test_same_offsets_as_the_reference_on_real_plans(name):
    if name not in ("mlp (examples/mlp.onnx)", "sklearn mlp", "sklearn logreg", "sklearn forest"):
        pytest.importorskip("torch")
        pytest.importorskip("rapidocr_onnxruntime")
    from zoo import build

    data, feeds = build(name)
    (reqs,) = recorded_requests(data, input_shapes={k: v.shape for k, v in feeds.items()})
    plan = plan_offsets(reqs)
    assert (plan.offsets, plan.size) == reference_plan(reqs)


def test_visits_grow_linearly_on_a_chain():
    """The planner's work, counted (never timed): doubling a chain about doubles it; the reference
    would look at every placed request for each one (n^2 / 2 per pass)."""
    visits = {}
    for n in (2000, 4000, 8000):
        plan = plan_offsets(random_requests(random.Random(0), n, "chain"))
        assert plan.order != SWEEP
        visits[n] = plan.visits
    assert visits[4000] <= 2.5 * visits[2000] and visits[8000] <= 2.5 * visits[4000]
    assert visits[8000] < 30 * 8000  # a few dozen per request, three passes


def test_tensors_all_live_at_once_fall_back_to_the_sweep():
    # 4000 tensors live together: first-fit would fit each among up to 3999 others, 8 million
    # visits per pass. No pass is started; the sweep places them one after another.
    rng = random.Random(3)
    reqs = [Lifetime(64 * rng.randint(1, 20), rng.randint(0, 10), 20 + rng.randint(0, 10)) for _ in range(4000)]
    plan = plan_offsets(reqs)
    assert (plan.order, plan.visits) == (SWEEP, 0)
    assert_valid(reqs, plan)


@pytest.mark.parametrize("seed", range(4))
def test_sweep_is_valid_on_its_own(seed):
    # budget=0: every pass is abandoned at its first request, whatever the input.
    rng = random.Random(seed)
    reqs = random_requests(rng, 500, ["chain", "skips", "mixed", "mixed"][seed])
    plan = plan_offsets(reqs, budget=0)
    assert plan.order == SWEEP
    assert_valid(reqs, plan)
    # Blocks freed when their tensor dies are reused: well under the sum of sizes on a chain.
    if seed == 0:
        assert plan.size < sum(align_up(r.size, 64) for r in reqs) / 10


def test_a_pass_past_the_budget_is_abandoned_and_the_best_completed_one_wins():
    rng = random.Random(5)
    reqs = random_requests(rng, 400, "mixed")
    sizes = [align_up(r.size, 64) for r in reqs]
    keys = {
        "size": lambda i: (-sizes[i], reqs[i].first, i),
        "size x lifetime": lambda i: (-sizes[i] * (reqs[i].last - reqs[i].first + 1), i),
        "first use": lambda i: (reqs[i].first, -sizes[i], i),
    }
    overlaps = _Overlaps(reqs)
    visits = {name: overlaps.first_fit(sorted(range(len(reqs)), key=key), sizes, 64, 10**9)[1]
              for name, key in keys.items()}
    assert len(set(visits.values())) > 1  # the orders do differ in work
    budget = min(visits.values())
    completed = [name for name in FIRST_FIT_ORDERS if visits[name] <= budget]
    plan = plan_offsets(reqs, budget=budget)
    # The winner is the smallest of the completed passes, as the reference computes them.
    results = {name: reference_place(sorted(range(len(reqs)), key=keys[name]), reqs, sizes, 64)
               for name in completed}
    best = min(completed, key=lambda name: (max(o + s for o, s in zip(results[name], sizes)),
                                            FIRST_FIT_ORDERS.index(name)))
    assert plan.order == best and plan.offsets == tuple(results[best])
    assert_valid(reqs, plan)
