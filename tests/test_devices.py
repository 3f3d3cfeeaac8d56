"""Devices are backends (device.py): the contract every backend passes, run on each one this machine has
(cpu always; cuda where CuPy and a GPU are present, skipped with the reason otherwise), devices found by
name, and the portable kernel set the cuda device runs, checked here with numpy as its array module against
onnxruntime, through the registry like any model."""
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper

from memserve.device import CpuDevice, Device, make_device
from memserve.errors import InternalError, InvalidArgument, ResourceExhausted, UnsupportedModel
from memserve.kernels import portable
from memserve.registry import LoadOptions, Registry

from models import ROOT, graph_model, ort_run

F = TensorProto.FLOAT


def _cuda_or_skip() -> Device:
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: pip install 'memserve[cuda]'")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device on this machine")
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        pytest.skip(f"no usable CUDA device: {exc}")
    return make_device("cuda:0", 64 << 20)


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> Device:
    return make_device("cpu", 64 << 20) if request.param == "cpu" else _cuda_or_skip()


# -- the contract -------------------------------------------------------------------------------------

def test_allocations_are_accounted_exactly_by_kind(device):
    with device.context:
        a, b = device.alloc(100, "weights"), device.alloc(64, "workspace")
        assert (a.nbytes, b.nbytes) == (128, 64)  # aligned up
        assert device.used_by_kind() == {"weights": 128, "workspace": 64, "io": 0}
        assert device.used() == sum(x.nbytes for x in device.live_buffers())  # I3
        a.free()
        b.free()
    assert device.used() == 0


def test_past_the_capacity_is_refused_and_nothing_is_taken(device):
    with device.context:
        keep = device.alloc(device.capacity - 64, "workspace")
        with pytest.raises(ResourceExhausted, match="out of memory"):
            device.alloc(128, "io")
        assert device.used() == device.capacity - 64
        with pytest.raises(InternalError, match="double free"):
            keep.free()
            keep.free()
    assert device.used() == 0


def test_views_at_offsets_and_copies_in_and_out_round_trip(device):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    with device.context:
        buf = device.alloc(1024, "workspace")
        view = buf.array[64:64 + x.nbytes].view(np.float32).reshape(3, 4)  # how the engine views a plan
        device.copy_in(buf.array[64:64 + x.nbytes], x.reshape(-1).view(np.uint8))
        assert device.to_host(view) == x.tobytes()
        assert device.to_host(view.T) == x.T.tobytes()  # C order out, whatever the view
        assert isinstance(view, device.xp.ndarray)
        device.synchronize()
        buf.free()


def test_books_only_accounting_for_what_a_backend_allocates_itself(device):
    with device.context:
        held = device.account(1000, "io")
        assert held.array is None and device.used("io") == 1024
        held.free()
    assert device.used() == 0


def test_device_work_needs_its_context_on_each_thread(device):
    with pytest.raises(InternalError, match="outside context"):
        device.alloc(64, "io")
    got = []

    def worker():
        with device.context:
            got.append(device.alloc(64, "io"))
            got[-1].free()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert len(got) == 1 and device.used() == 0


def test_entering_the_context_activates_the_device_on_that_thread():
    class Spy(CpuDevice):
        threads: set = set()

        def activate(self) -> None:
            self.threads.add(threading.get_ident())

    spy = Spy(1 << 20)
    t = threading.Thread(target=lambda: spy.context.__enter__())
    t.start()
    t.join()
    with spy.context:
        pass
    assert spy.threads == {t.ident, threading.get_ident()}


# -- devices by name ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,says", [("gpu", "unknown device 'gpu'; devices: cpu, cuda[:N]"),
                                       ("cuda:x", "unknown device 'cuda:x'"),
                                       ("tpu:0", "unknown device 'tpu:0'")])
def test_unknown_devices_are_refused_naming_the_ones_there_are(name, says):
    with pytest.raises(InvalidArgument, match=says.replace("[", r"\[").replace("]", r"\]")):
        make_device(name, 1 << 20)


def test_cuda_without_cupy_or_a_gpu_is_a_clear_refusal():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(InvalidArgument, match=r"the cuda device needs CuPy: pip install 'memserve\[cuda\]'"):
            make_device("cuda:0", 1 << 20)
        return
    try:
        make_device("cuda:0", 1 << 20)
    except InvalidArgument as exc:
        assert "CUDA" in exc.message or "cuda:0" in exc.message


def test_the_cpu_device_is_found_by_name_with_its_index():
    d = make_device("cpu", 1 << 20)
    assert isinstance(d, CpuDevice) and d.name == "cpu:0" and d.host_memory and d.fuses


# -- the portable kernel set, with numpy as its array module ----------------------------------------

class PortableCpu(CpuDevice):
    """The cpu's memory with the cuda device's kernels and compile options: the cuda code path, minus CuPy."""

    kind = "cpu"
    fuses = False

    def kernel(self, op):
        return portable.builder(op.op_type, np)


def transformer_block() -> bytes:
    rng = np.random.default_rng(0)
    d = 16
    w = {n: rng.standard_normal((d, d)).astype(np.float32) * 0.3 for n in ("wq", "wk", "wv", "wo")}
    w.update(scale=np.float32(0.25), g=np.ones(d, np.float32), b=np.zeros(d, np.float32),
             bias=rng.standard_normal(d).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["a"]),
             helper.make_node("MatMul", ["a", "wo"], ["o"]), helper.make_node("Add", ["o", "bias"], ["ob"]),
             helper.make_node("Add", ["ob", "x"], ["r"]),
             helper.make_node("LayerNormalization", ["r", "g", "b"], ["n"], axis=-1),
             helper.make_node("Relu", ["n"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])]
    return graph_model(nodes, [("x", F, ["N", 8, d])], [("y", F, ["N", 8, d])], w)


@pytest.mark.parametrize("where", ["portable cpu", "cuda"])
@pytest.mark.parametrize("name", ["mlp", "transformer block"])
def test_models_run_on_the_portable_kernels_as_onnxruntime_runs_them(name, where):
    """The model suite of a kernel set that is not the cpu's: with numpy here, on the GPU where there is one."""
    model = (ROOT / "examples" / "mlp.onnx").read_bytes() if name == "mlp" else transformer_block()
    shape = (3, 64) if name == "mlp" else (3, 8, 16)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    reg = Registry(PortableCpu(64 << 20) if where == "portable cpu" else _cuda_or_skip())
    try:
        m = reg.load(model, LoadOptions(name="m", max_batch=4))
        assert not any(s.node.domain == "memserve" for s in m.plan.steps)  # no cpu-only fused kernel
        out = reg.execute("m", {"x": x}).outputs
        for got, want in zip(out, ort_run(model, {"x": x})):
            np.testing.assert_allclose(np.frombuffer(got.data, got.dtype).reshape(got.shape), want, rtol=1e-4,
                                       atol=1e-5)
    finally:
        reg.close()
    assert reg.device.used() == 0


@pytest.mark.parametrize("op,inputs,attrs,weights", [
    ("Gemm", [("a", F, [4, 3])], {"transB": 1, "alpha": 0.5, "beta": 2.0},
     {"b": np.arange(15, dtype=np.float32).reshape(5, 3), "c": np.ones(5, np.float32)}),
    ("Concat", [("a", F, [2, 3]), ("b", F, [2, 5])], {"axis": 1}, {}),
    ("Gather", [("a", F, [5, 3])], {"axis": 0}, {"i": np.array([[4, 0], [-1, 2]])}),
    ("ReduceMean", [("a", F, [2, 3, 4])], {"axes": [1], "keepdims": 0}, {}),
    ("LogSoftmax", [("a", F, [2, 6])], {"axis": 1}, {}),
    ("Div", [("a", TensorProto.INT32, [4])], {}, {"d": np.array([3, -3, 2, -2], np.int32)}),
    ("Where", [("c", TensorProto.BOOL, [4]), ("a", F, [4])], {}, {"b": np.zeros(4, np.float32)}),
])
def test_each_portable_kernel_matches_onnxruntime(op, inputs, attrs, weights):
    names = [n for n, _, _ in inputs] + list(weights)
    rng = np.random.default_rng(2)
    feeds = {n: (rng.random(s) > 0.5 if t == TensorProto.BOOL else
                 rng.integers(-9, 9, s).astype(np.int32) if t == TensorProto.INT32 else
                 rng.standard_normal(s).astype(np.float32)) for n, t, s in inputs}
    out_type = inputs[1][1] if op == "Where" else inputs[0][1]
    probe = graph_model([helper.make_node(op, names, ["y"], **attrs)], inputs, [("y", out_type, None)], weights,
                        opset=17)
    want = ort_run(probe, feeds)[0]
    model = graph_model([helper.make_node(op, names, ["y"], **attrs)], inputs, [("y", out_type, list(want.shape))],
                        weights, opset=17)
    reg = Registry(PortableCpu(16 << 20))
    try:
        reg.load(model, LoadOptions(name="m"))
        got = reg.execute("m", feeds).outputs[0]
        np.testing.assert_allclose(np.frombuffer(got.data, got.dtype).reshape(got.shape), want, rtol=1e-5)
    finally:
        reg.close()


def test_a_model_with_an_op_outside_the_devices_kernels_is_refused_naming_it():
    model = graph_model([helper.make_node("GridSample", ["x", "g"], ["y"])], [("x", F, [1, 1, 4, 4])],
                        [("y", F, [1, 1, 2, 2])], {"g": np.zeros((1, 2, 2, 2), np.float32)})
    reg = Registry(PortableCpu(16 << 20))
    try:
        with pytest.raises(UnsupportedModel, match=r"runs \['GridSample'\], which device cpu:0 has no kernels for"):
            reg.load(model, LoadOptions(name="m"))
        assert reg.device.used() == 0
    finally:
        reg.close()


def test_device_status_carries_what_the_hardware_reports_beside_the_books(daemon, client):
    """On cpu nothing (0); a device with memory_info (the cuda device's cudaMemGetInfo) has it in GetDeviceStatus."""
    from memserve.api.native import NativeServicer
    from memserve_api.pb.memserve.v1 import memserve_pb2 as pb

    s = client.device_status()
    assert (s.hardware_free, s.hardware_total) == (0, 0)

    class Reporting(CpuDevice):
        def memory_info(self):
            return 3 << 30, 8 << 30

    reg = Registry(Reporting(1 << 20))
    try:
        status = NativeServicer(reg, 1 << 20).GetDeviceStatus(pb.GetDeviceStatusRequest(), None)
        assert (status.hardware_free, status.hardware_total) == (3 << 30, 8 << 30)
    finally:
        reg.close()


def small_cnn(auto_pad: str = "NOTSET") -> bytes:
    rng = np.random.default_rng(3)
    w = {"w1": rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "b1": rng.standard_normal(6).astype(np.float32),
         "w2": rng.standard_normal((6, 2, 3, 3)).astype(np.float32),
         "s": rng.uniform(0.5, 2, 6).astype(np.float32), "bb": rng.standard_normal(6).astype(np.float32),
         "m": rng.standard_normal(6).astype(np.float32), "v": rng.uniform(0.5, 2, 6).astype(np.float32)}
    conv1 = {"pads": [1, 1, 1, 1], "strides": [2, 1]} if auto_pad == "NOTSET" else {"auto_pad": auto_pad}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], **conv1),
             helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], group=3, dilations=[2, 1], pads=[2, 1, 2, 1]),
             helper.make_node("MaxPool", ["c2"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
             helper.make_node("AveragePool", ["p1"], ["p2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["p2"], ["y"])]
    return graph_model(nodes, [("x", F, ["N", 3, 10, 12])], [("y", F, ["N", 6, 1, 1])], w)


@pytest.mark.parametrize("auto_pad", ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
def test_a_cnn_runs_on_the_portable_kernels_as_onnxruntime_runs_it(auto_pad):
    """Conv (groups, dilations, strides, auto_pad), BatchNormalization, MaxPool, AveragePool and
    GlobalAveragePool as the cuda device runs them, here with numpy."""
    model = small_cnn(auto_pad)
    x = np.random.default_rng(4).standard_normal((2, 3, 10, 12)).astype(np.float32)
    reg = Registry(PortableCpu(64 << 20))
    try:
        reg.load(model, LoadOptions(name="cnn", max_batch=2))
        got = reg.execute("cnn", {"x": x}).outputs[0]
        np.testing.assert_allclose(np.frombuffer(got.data, got.dtype).reshape(got.shape),
                                   ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-5)
    finally:
        reg.close()


def test_control_flow_runs_on_the_portable_kernels():
    """If (a runtime condition), Loop and Scan with their bodies bound to the device's kernels too."""
    from test_control_flow import if_model, loop_model, scan_model

    cases = [(if_model(), {"x": np.ones((2, 3), np.float32), "c": np.array(False)}, {}),
             (loop_model(scan=False), {"h0": np.zeros(4, np.float32), "m": np.array(5, np.int64)}, {}),
             (scan_model(1, 0, 1), {"s0": np.ones(3, np.float32), "xs": np.arange(12, dtype=np.float32).reshape(3, 4)},
              {"xs": (3, 6)})]
    reg = Registry(PortableCpu(64 << 20))
    try:
        for k, (model, feeds, shapes) in enumerate(cases):
            reg.load(model, LoadOptions(name=f"m{k}", input_shapes=shapes))
            for got, want in zip(reg.execute(f"m{k}", feeds).outputs, ort_run(model, feeds)):
                np.testing.assert_allclose(np.frombuffer(got.data, got.dtype).reshape(got.shape), want, rtol=1e-5)
    finally:
        reg.close()
