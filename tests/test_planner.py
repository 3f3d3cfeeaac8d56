"""The greedy-by-size planner: hand-checked offsets, then a property over random lifetimes."""
from hypothesis import given, settings
from hypothesis import strategies as st

from memserve.planner import Lifetime, live_peak, plan_offsets


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
