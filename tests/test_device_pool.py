"""Device accounting and context (I3, I5), weight store (I2) and workspace pool."""
import threading

import numpy as np
import pytest

from memserve.device import CpuDevice, current_context
from memserve.errors import InternalError, InvalidArgument, ResourceExhausted
from memserve.model import compile_model
from memserve.pool import WeightStore, WorkspacePool

from models import mlp_bytes


@pytest.fixture
def dev():
    d = CpuDevice(1 << 20)
    with d.context:
        yield d


def test_alloc_is_aligned_and_accounted_by_kind(dev):
    a = dev.alloc(100, "workspace")
    b = dev.alloc(64, "weights")
    assert a.array.ctypes.data % 64 == 0 and b.array.ctypes.data % 64 == 0
    assert a.array.nbytes == 100 and a.nbytes == 128
    assert dev.used_by_kind() == {"weights": 64, "workspace": 128, "io": 0}
    a.free()
    b.free()
    assert dev.used() == 0 and dev.live_buffers() == []


def test_over_capacity_is_refused_and_changes_nothing(dev):
    dev.alloc(1 << 19, "weights")
    with pytest.raises(ResourceExhausted, match="needs 786432 bytes, 524288 of 1048576 are free"):
        dev.alloc(3 << 18, "workspace")
    assert dev.used() == 1 << 19


def test_double_free_is_a_bug_not_a_silent_miscount(dev):
    a = dev.alloc(10, "io")
    a.free()
    with pytest.raises(InternalError):
        a.free()
    assert dev.used() == 0


def test_device_work_outside_its_context_is_refused():
    d = CpuDevice(1 << 20)
    assert current_context() is None
    with pytest.raises(InternalError, match="outside context"):
        d.alloc(64, "io")
    errors = []

    def other_thread():  # contexts are per thread, as aclrtSetCurrentContext
        try:
            d.alloc(64, "io")
        except InternalError as e:
            errors.append(e)

    with d.context:
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert current_context() is d.context
    assert len(errors) == 1


def test_bad_capacity():
    with pytest.raises(InvalidArgument):
        CpuDevice(0)


def test_weight_store_shares_by_content_and_views_are_read_only(dev):
    store = WeightStore(dev)
    plan = compile_model(mlp_bytes())
    other = compile_model(mlp_bytes(seed=1))
    assert store.needs(plan) == plan.weight_size
    view, shared = store.acquire(1, plan)
    assert not shared and store.needs(plan) == 0
    view2, shared2 = store.acquire(2, compile_model(mlp_bytes()))
    assert shared2 and view2.ctypes.data == view.ctypes.data
    store.acquire(3, other)
    assert dev.used("weights") == plan.weight_size + other.weight_size
    with pytest.raises(ValueError):  # I2
        view[0] = 1
    w0 = view[: 64 * 128 * 4].view(np.float32).reshape(64, 128)
    np.testing.assert_array_equal(w0, plan.staged_weights[plan.weight_slots[0]])
    assert store.release(1, plan.weight_digest) == 0
    assert store.release(2, plan.weight_digest) == plan.weight_size
    assert store.release(3, other.weight_digest) == other.weight_size
    assert dev.used() == 0 and store.blocks() == []


def test_shared_group_is_sized_to_its_largest_member_grows_and_shrinks(dev):
    pool = WorkspacePool(dev)
    a = pool.join(1, "shared:g", 1000)
    assert a.size == 1024
    b = pool.join(2, "shared:g", 4000)
    assert b is a and a.size == 4032  # grown to the largest
    pool.join(3, "shared:g", 2000)
    assert dev.used("workspace") == 4032
    assert pool.leave(2, a) == 4032 - 2048  # the largest left: shrink to the next
    assert a.size == 2048
    assert pool.leave(1, a) == 0
    assert pool.leave(3, a) == 2048
    assert dev.used() == 0 and pool.workspaces() == []


def test_private_workspaces_are_separate(dev):
    pool = WorkspacePool(dev)
    a, b = pool.join(1, "private", 128), pool.join(2, "", 128)
    assert a is not b and {w.name for w in pool.workspaces()} == {"private:1", "private:2"}
    assert pool.needs("shared:x", 3, 500) == 512


def test_growth_waits_for_the_running_execution(dev):
    pool = WorkspacePool(dev)
    ws = pool.join(1, "shared:g", 64)
    old = ws.buffer
    grown = threading.Event()
    with ws.lock:  # what a lane holds while it executes
        t = threading.Thread(target=lambda: (dev.context.__enter__(), pool.join(2, "shared:g", 4096), grown.set()))
        t.start()
        assert not grown.wait(0.2)
        assert ws.buffer is old
    t.join()
    assert grown.is_set() and ws.size == 4096


def test_bad_workspace_names(dev):
    pool = WorkspacePool(dev)
    for bad in ("shared:", "shared:a b", "public", "shared:" + "x" * 70):
        with pytest.raises(InvalidArgument, match="private"):
            pool.join(1, bad, 64)
    assert dev.used() == 0


def test_a_buffer_lost_in_a_failed_grow_comes_back_at_the_next_execution(dev, monkeypatch):
    pool = WorkspacePool(dev)
    ws = pool.join(1, "shared:g", 1 << 16)
    real_alloc = dev.alloc
    monkeypatch.setattr(dev, "alloc", lambda n, kind: (_ for _ in ()).throw(ResourceExhausted("taken meanwhile")))
    with pytest.raises(ResourceExhausted):  # the grow fails, and so does putting the old size back
        pool.join(2, "shared:g", 1 << 17)
    assert ws.buffer is None and dev.used() == 0
    monkeypatch.setattr(dev, "alloc", real_alloc)
    with ws.lock:
        assert ws.ensure_buffer(dev).nbytes == 1 << 16  # what member 1 needs
    assert dev.used("workspace") == 1 << 16
