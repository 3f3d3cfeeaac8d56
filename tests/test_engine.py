"""The engine's generated run function, its one I/O buffer, and the request path around it."""
import threading
import time

import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.device import CpuDevice
from memserve.engine import IO_KEEP
from memserve.errors import DeadlineExceeded, InvalidArgument
from memserve.registry import LoadOptions, Registry
from memserve.scheduler import Outcome

from models import graph_model

F32, I64 = TensorProto.FLOAT, TensorProto.INT64
_rng = np.random.default_rng(0)


def rand(shape):
    return _rng.standard_normal(shape).astype(np.float32)


def _both_forms(reg, m, feeds):
    """The generated function's outputs and the step list's, each into outputs of its own."""
    key = m.plan.key_of(feeds)
    ws = m.workspace
    with reg.context:
        b = m.executable.binding(key, ws)
        fresh = [np.full(shape, 7, dtype) for _, dtype, shape, _ in b.io]
        ref = [np.array(o, copy=True) for o in b.run_steps(feeds, fresh, m.plan)]
        outs, buf = m.executable.run(feeds, key, ws, reg.device)
        got = [np.array(o, copy=True) for o in outs]
        buf.free()
    return got, ref


SMALL = ["mlp (examples/mlp.onnx)", "sklearn mlp", "sklearn logreg", "sklearn forest", "small cnn",
         "transformer (torchscript)", "pp-ocr cls"]


@pytest.mark.parametrize("name", SMALL)
def test_the_generated_function_computes_what_the_step_list_computes(name):
    pytest.importorskip("torch")
    pytest.importorskip("skl2onnx")
    pytest.importorskip("rapidocr_onnxruntime")
    from zoo import build

    data, feeds = build(name)
    reg = Registry(CpuDevice(1 << 30))
    try:
        m = reg.load(data, LoadOptions(name="m", input_shapes={k: v.shape for k, v in feeds.items()}))
        got, ref = _both_forms(reg, m, feeds)
        assert len(got) == len(ref) == len(m.plan.outputs)
        for g, r in zip(got, ref):
            assert g.dtype == r.dtype and g.shape == r.shape and g.tobytes() == r.tobytes()
        answer = reg.execute("m", feeds)
        assert [o.data for o in answer.outputs] == [g.tobytes() for g in got]
    finally:
        reg.close()
    assert reg.device.used() == 0


def _mlp_with_aliases(n: int = 4) -> bytes:
    """Gemm -> Relu -> Reshape (an alias of an output) -> and a second output: aliases, two I/O roots."""
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="gemm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["y"], name="reshape"),
             helper.make_node("Sigmoid", ["h"], ["z"], name="sigmoid")]
    return graph_model(nodes, [("x", F32, ["N", 8])], [("y", F32, ["N", 2, 2]), ("z", F32, ["N", 4])],
                       {"w": rand((8, 4)), "b": rand((4,)), "shape": np.array([-1, 2, 2], np.int64)})


def test_generated_and_step_list_agree_at_every_batch_with_aliases_and_two_outputs():
    reg = Registry(CpuDevice(1 << 26))
    try:
        m = reg.load(_mlp_with_aliases(), LoadOptions(name="m", max_batch=5))
        for n in (1, 3, 5):
            got, ref = _both_forms(reg, m, {"x": rand((n, 8))})
            assert [g.tobytes() for g in got] == [r.tobytes() for r in ref]
            assert [g.shape for g in got] == [(n, 2, 2), (n, 4)]
    finally:
        reg.close()


def test_answers_do_not_share_the_kept_output_storage():
    """Small outputs reuse their binding's storage: every answer is still its own bytes, and the
    device accounts the I/O buffer only while a request runs."""
    reg = Registry(CpuDevice(1 << 26))
    try:
        reg.load(_mlp_with_aliases(), LoadOptions(name="m", max_batch=5))
        xs = [rand((2, 8)) for _ in range(3)]
        answers = [reg.execute("m", {"x": x}) for x in xs]
        again = [reg.execute("m", {"x": x}) for x in xs]
        assert [[o.data for o in a.outputs] for a in answers] == [[o.data for o in a.outputs] for a in again]
        assert answers[0].outputs[0].data != answers[1].outputs[0].data
        assert reg.device.used("io") == 0 and len(reg.device.live_buffers()) == 2  # weights, workspace
    finally:
        reg.close()


def test_large_outputs_get_fresh_storage_and_are_freed():
    n = IO_KEEP // 4 + 64
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    reg = Registry(CpuDevice(1 << 26))
    try:
        m = reg.load(graph_model(nodes, [("x", F32, [n])], [("y", F32, [n])]), LoadOptions(name="m"))
        x = rand((n,)) - 0.5
        out = reg.execute("m", {"x": x}).outputs[0]
        np.testing.assert_array_equal(np.frombuffer(out.data, np.float32), np.maximum(x, 0))
        with reg.context:
            assert m.executable.binding(0, m.workspace).io_buffer is None
        assert reg.device.used("io") == 0
    finally:
        reg.close()


def test_a_kernel_failing_in_the_generated_function_names_its_node():
    """Gather with an index out of range fails in the kernel: the error names that node, not another."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="first"),
             helper.make_node("Gather", ["r", "i"], ["g"], name="the_gather", axis=0),
             helper.make_node("Relu", ["g"], ["y"], name="last")]
    model = graph_model(nodes, [("x", F32, [4]), ("i", I64, [2])], [("y", F32, [2])])
    reg = Registry(CpuDevice(1 << 26))
    try:
        reg.load(model, LoadOptions(name="m"))
        ok = reg.execute("m", {"x": np.arange(4, dtype=np.float32), "i": np.array([3, 1], np.int64)})
        assert np.frombuffer(ok.outputs[0].data, np.float32).tolist() == [3, 1]
        with pytest.raises(InvalidArgument, match="the_gather"):
            reg.execute("m", {"x": np.arange(4, dtype=np.float32), "i": np.array([9, 1], np.int64)})
        assert reg.device.used("io") == 0
        assert reg.get("m").stats.fail.count == 1 and reg.get("m").stats.success.count == 1
    finally:
        reg.close()


def test_an_inline_request_still_honours_its_deadline_under_the_workspace_lock():
    """The lane is idle, so the request runs on the caller; the workspace is held (a resize) until its
    deadline passed: it is refused, not run, and counted as a failure."""
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    reg = Registry(CpuDevice(1 << 26))
    try:
        m = reg.load(graph_model(nodes, [("x", F32, [4])], [("y", F32, [4])]), LoadOptions(name="m"))
        m.workspace.lock.acquire()
        caller = threading.Thread(target=lambda: box.append(_catch(
            lambda: reg.execute("m", {"x": rand((4,))}, deadline=time.monotonic() + 0.02))))
        box: list = []
        caller.start()
        time.sleep(0.1)
        m.workspace.lock.release()
        caller.join(5)
        assert isinstance(box[0], DeadlineExceeded)
        assert m.workspace.executions == 0 and m.stats.fail.count == 1 and m.stats.execution_count == 0
        assert reg.device.used("io") == 0
    finally:
        reg.close()


def _catch(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return exc


def test_outcome_behaves_as_the_future_it_replaces():
    o = Outcome()
    seen = []
    o.add_done_callback(lambda f: seen.append(("early", f.result())))
    assert not o.done()
    with pytest.raises(TimeoutError):
        o.result(0.01)
    waiter = threading.Thread(target=lambda: seen.append(("waited", o.result(5))))
    waiter.start()
    time.sleep(0.02)
    o.set_result(42)
    waiter.join(5)
    o.add_done_callback(lambda f: seen.append(("late", f.exception())))
    assert sorted(seen, key=str) == [("early", 42), ("late", None), ("waited", 42)]
    from concurrent.futures import InvalidStateError
    with pytest.raises(InvalidStateError):
        o.set_exception(RuntimeError("twice"))
    failed = Outcome()
    failed.set_exception(ValueError("no"))
    assert isinstance(failed.exception(), ValueError) and failed.done()
    with pytest.raises(ValueError):
        failed.result()


def test_served_counts_what_executed_and_request_done_count():
    """The request path counts an answered execution with one call (stats.served); the counters
    must come out as the two calls it replaces would leave them."""
    from memserve.stats import ModelStats

    one, other = ModelStats(), ModelStats()
    reqs = [(1.0, 1.5, 2), (1.2, 1.5, 3), (1.4, 1.5, 0)]
    one.served(reqs, 2.0)
    other.executed(6, 0.5)
    for submitted, started, rows in reqs:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("memserve.stats.time.perf_counter", lambda: 2.0)
            other.request_done(submitted, started, True, rows)
    for field in ("success", "fail", "queue", "compute"):
        assert vars(getattr(one, field)) == vars(getattr(other, field)), field
    assert (one.inference_count, one.execution_count) == (other.inference_count, other.execution_count) == (6, 1)
    assert {k: vars(v) for k, v in one.batches.items()} == {k: vars(v) for k, v in other.batches.items()}
    for h in ("queue_seconds", "compute_seconds", "batch_rows"):
        assert getattr(one, h).counts == getattr(other, h).counts and \
            getattr(one, h).sum == pytest.approx(getattr(other, h).sum), h


def test_a_kept_buffer_is_accounted_only_while_taken():
    dev = CpuDevice(1 << 12)
    with dev.context:
        buf = dev.alloc(100, "io")
        assert dev.used("io") == 128
        buf.free()
        assert dev.used("io") == 0
        dev.retake(buf)
        assert dev.used("io") == 128 and dev.live_buffers() == [buf]
        from memserve.errors import InternalError, ResourceExhausted
        with pytest.raises(InternalError):
            dev.retake(buf)  # taken twice: a bug, never two owners of one buffer
        buf.free()
        other = dev.alloc(4000, "io")
        with pytest.raises(ResourceExhausted):
            dev.retake(buf)  # accounted like a fresh allocation: it must fit
        other.free()
    assert dev.used() == 0


def test_a_failed_request_is_counted_once_by_its_error_hook():
    o = Outcome()
    errors = []
    o.on_error = errors.append
    o.add_done_callback(lambda f: errors.append("callback"))
    o.set_exception(ValueError("x"))
    assert [type(e).__name__ if not isinstance(e, str) else e for e in errors] == ["ValueError", "callback"]
    ok = Outcome()
    ok.on_error = errors.append
    ok.set_result(1)
    assert len(errors) == 2
