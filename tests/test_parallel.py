"""The kernel team (kernels/parallel.py) and the convolutions that split over it."""
import threading
import time

import numpy as np
import pytest
from onnx import helper

from memserve.kernels import conv, parallel
from memserve.model import CompileOptions, compile_model

from models import F32, graph_model, ort_run, run_local


@pytest.fixture
def two_threads():
    parallel.set_threads(2)
    yield
    parallel.set_threads(1)


class Probe:
    """Records which tasks ran, on which slot, and how many ran at once per slot and in all."""

    def __init__(self, seconds: float = 0.002):
        self.seconds = seconds
        self.lock = threading.Lock()
        self.ran, self.active, self.peak = [], {}, 0
        self.shared_slot = False

    def __call__(self, task: int, slot: int) -> None:
        with self.lock:
            self.shared_slot |= self.active.get(slot, 0) > 0
            self.active[slot] = self.active.get(slot, 0) + 1
            self.peak = max(self.peak, sum(self.active.values()))
            self.ran.append((task, slot))
        time.sleep(self.seconds)  # releases the GIL, as numpy's matmul and the nogil kernels do
        with self.lock:
            self.active[slot] -= 1


def test_every_task_runs_once_on_two_threads_never_two_on_one_slot(two_threads):
    probe = Probe()
    parallel.run(40, probe, 2)
    assert sorted(t for t, _ in probe.ran) == list(range(40))
    assert {s for _, s in probe.ran} == {0, 1} and probe.peak == 2 and not probe.shared_slot


def test_one_thread_runs_every_task_on_the_caller():
    probe = Probe(0)
    parallel.run(5, probe, 4)  # slots beyond the team's size change nothing
    assert probe.ran == [(t, 0) for t in range(5)] and probe.peak == 1


def test_a_task_that_fails_raises_in_the_caller_and_stops_the_rest(two_threads):
    ran = []

    def fn(task: int, slot: int) -> None:
        ran.append(task)
        time.sleep(0.001)
        if task == 3:
            raise ValueError("task 3")

    with pytest.raises(ValueError, match="task 3"):
        parallel.run(1000, fn, 2)
    assert len(ran) < 1000
    probe = Probe(0)
    parallel.run(10, probe, 2)  # the team still serves
    assert sorted(t for t, _ in probe.ran) == list(range(10))


def test_lanes_calling_at_once_share_the_team_and_all_finish(two_threads):
    probes = [Probe(0.001) for _ in range(6)]
    threads = [threading.Thread(target=parallel.run, args=(20, p, 2)) for p in probes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(sorted(t for t, _ in p.ran) == list(range(20)) and not p.shared_slot for p in probes)
    assert len([t for t in threading.enumerate() if t.name.startswith("kernel-helper")]) == 1


def test_set_threads_replaces_the_team_without_leaking_helpers():
    for n in (3, 2, 4, 1):
        parallel.set_threads(n)
        assert len([t for t in threading.enumerate() if t.name.startswith("kernel-helper")]) == n - 1
    assert parallel.threads() == 1


def _conv(x_shape, m, k, **attrs):
    c = x_shape[1]
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((m, c // attrs.get("group", 1), k, k)) * 0.1).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], **attrs)
    return graph_model([node], [("x", F32, list(x_shape))], [("y", F32, ["a", "b", "c", "d"])], {"w": w, "b": b})


@pytest.mark.parametrize("x_shape,m,k,attrs", [
    ((1, 64, 56, 56), 64, 3, dict(pads=[1, 1, 1, 1])),  # rows split into tiles, one per slot
    ((4, 16, 30, 30), 32, 3, dict(pads=[1, 1, 1, 1])),  # whole samples per tile
    ((1, 3, 224, 224), 16, 7, dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    ((1, 128, 28, 28), 256, 1, {}),  # 1x1: output channel blocks
    ((1, 64, 28, 28), 64, 3, dict(group=2, pads=[1, 1, 1, 1])),
])
def test_large_convolutions_split_over_two_threads_match_onnxruntime(two_threads, x_shape, m, k, attrs):
    model = _conv(x_shape, m, k, **attrs)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    np.testing.assert_allclose(run_local(model, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_the_column_buffer_holds_one_tile_per_thread_within_the_same_budget():
    model = _conv((1, 64, 56, 56), 64, 3, pads=[1, 1, 1, 1])
    one = compile_model(model, CompileOptions())
    parallel.set_threads(2)
    try:
        two = compile_model(model, CompileOptions())
    finally:
        parallel.set_threads(1)
    scratch = lambda plan: [t for s in plan.steps for t in s.scratch]  # noqa: E731
    assert [plan.tensors[t].info.shape[0] for plan in (one, two) for t in scratch(plan)] == [1, 2]
    assert two.work_size <= one.work_size + conv.TILE_BYTES // 8  # not twice the columns


def test_convolutions_whose_tiles_are_small_stay_on_their_caller(two_threads):
    model = _conv((1, 96, 80, 80), 24, 3, pads=[1, 1, 1, 1])  # 1.3 M multiply-adds per output row
    plan = compile_model(model, CompileOptions())
    assert [plan.tensors[t].info.shape[0] for s in plan.steps for t in s.scratch] == [1]
