"""Hostile models and load options: no file read, no memory bomb, no unbounded option, no orphan,
no compile that outlives its caller (issue 9, items 2-6)."""
from __future__ import annotations

import concurrent.futures
import os
import threading
import time

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from memserve import budget
from memserve.budget import LoadBudget
from memserve.device import CpuDevice
from memserve.errors import Cancelled, ResourceExhausted
from memserve.registry import LoadOptions, Registry
from memserve_client import Client, MemserveError
from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc
from models import F32, ROOT, graph_model, mlp_bytes, op_chain

EXAMPLE = ROOT / "examples" / "mlp.onnx"
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


def _status(fn) -> MemserveError:
    with pytest.raises(MemserveError) as e:
        fn()
    return e.value


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))


# -- item 2: a model is data, never a path ---------------------------------------------------------

def _external(t: TensorProto, path: str) -> TensorProto:
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", path
    return t


def _constant_reading(path: str) -> bytes:
    value = _external(numpy_helper.from_array(np.zeros(16, np.uint8), "v"), path)
    return graph_model([helper.make_node("Constant", [], ["c"], value=value),
                        helper.make_node("Add", ["x", "c"], ["y"])],
                       [("x", TensorProto.UINT8, [16])], [("y", TensorProto.UINT8, [16])])


def _if_branch_reading(path: str) -> bytes:
    init = _external(numpy_helper.from_array(np.zeros(16, np.uint8), "b"), path)
    branch = helper.make_graph([helper.make_node("Identity", ["b"], ["out"])], "then", [],
                               [helper.make_tensor_value_info("out", TensorProto.UINT8, [16])], [init])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["out2"])], "else", [],
                              [helper.make_tensor_value_info("out2", TensorProto.UINT8, [16])])
    return graph_model([helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)],
                       [("x", TensorProto.UINT8, [16])], [("y", TensorProto.UINT8, [16])],
                       {"cond": np.array(True)})


def _attribute_reading(path: str) -> bytes:
    value = _external(numpy_helper.from_array(np.zeros(1, np.float32), "v"), path)
    return graph_model([helper.make_node("ConstantOfShape", ["s"], ["y"], value=value)],
                       [("s", TensorProto.INT64, [1])], [("y", F32, [4])])


def _sparse_reading(path: str) -> bytes:
    m = onnx.load_from_string(graph_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, [4])],
                                          [("y", F32, [4])]))
    values = _external(numpy_helper.from_array(np.zeros(1, np.float32), "sp"), path)
    indices = numpy_helper.from_array(np.array([0], np.int64), "sp_i")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    return m.SerializeToString()


@pytest.mark.parametrize("build", [_constant_reading, _if_branch_reading, _attribute_reading, _sparse_reading],
                         ids=["constant-value", "if-branch-initializer", "tensor-attribute", "sparse-initializer"])
def test_external_data_anywhere_is_refused_and_no_file_is_read(make_daemon, tmp_path, build):
    """Item 2: these used to load and return the state dir's manifest, byte for byte."""
    d = make_daemon("--state-dir", str(tmp_path / "state"))
    with d.client() as c:
        c.load(EXAMPLE, name="victim")
        manifest = tmp_path / "state" / "models" / "1.json"
        assert manifest.exists()
        for path in (str(manifest), "models/1.json", "../../../../etc/hostname"):
            for call in (lambda: c.load(build(path), name="thief"), lambda: c.query_size(build(path))):
                err = _status(call)
                assert err.code == INVALID and "external" in err.message, err
        assert [m.name for m in c.list_models()] == ["victim"]


# -- item 3: load-time work is budgeted ---------------------------------------------------------------

def _expand_bomb(elements: int, name: str = "bomb") -> bytes:
    """100 bytes that ask the constant folder for `elements` floats."""
    return graph_model([helper.make_node("Expand", ["one", "shape"], ["big"], name=name),
                        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
                        helper.make_node("Add", ["x", "s"], ["y"])],
                       [("x", F32, [1])], [("y", F32, [1])],
                       {"one": np.ones(1, np.float32), "shape": np.array([elements], np.int64)})


def test_memory_bombs_are_refused_before_they_allocate(make_daemon):
    d = make_daemon("--device-memory", "256MiB")
    before = _rss(d.proc.pid)
    with d.client(timeout=60) as c:
        err = _status(lambda: c.query_size(_expand_bomb(2**28)))  # 1 GiB of floats
        assert err.code == EXHAUSTED and "'bomb'" in err.message and "--max-load-memory" in err.message
        cos = graph_model([helper.make_node("ConstantOfShape", ["shape"], ["z"], name="cos"),
                           helper.make_node("ReduceSum", ["z"], ["s"], keepdims=0),
                           helper.make_node("Add", ["x", "s"], ["y"])],
                          [("x", F32, [1])], [("y", F32, [1])], {"shape": np.array([2**40], np.int64)})
        err = _status(lambda: c.load(cos))
        assert err.code == EXHAUSTED and "'cos'" in err.message
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # four at once used to take 4 GB
            errors = list(pool.map(lambda k: _status(lambda: c.query_size(_expand_bomb(2**28 - k))), range(4)))
        assert all(e.code == EXHAUSTED for e in errors)
        assert _rss(d.proc.pid) - before < 300 << 20
        assert c.query_size(_expand_bomb(1000)).work_size >= 0  # small folds still work
        assert c.device_status().used == 0


def test_loads_in_flight_share_one_budget_and_give_it_back():
    shared = LoadBudget(1000)
    with shared.job() as a, shared.job() as b:
        a.charge(600, "a")
        with pytest.raises(ResourceExhausted) as e:
            b.charge(600, "node 'big' (Expand)")
        assert "node 'big' (Expand)" in e.value.message
        b.charge(400, "b")
        a.release(100)
        assert shared.used == 900
    assert shared.used == 0
    with shared.job():  # the thread-local job: the compiler charges without a parameter
        budget.charge(1000, "x")
        with pytest.raises(ResourceExhausted):
            budget.charge(1, "y")
    assert shared.used == 0
    budget.charge(10**18, "outside any load")  # nothing to count against: a no-op


def test_upload_staging_counts_against_the_budget(make_daemon):
    d = make_daemon("--max-load-memory", "1MiB")
    with d.client() as c:
        err = _status(lambda: c.load(mlp_bytes(sizes=(64, 2048, 10))))  # ~0.6 MB: staging, parse, weights
        assert err.code == EXHAUSTED and "load-time memory" in err.message
        assert c.load(EXAMPLE).work_size > 0


# -- item 4: every option is bounded --------------------------------------------------------------------

@pytest.mark.parametrize("options", [
    pb.LoadOptions(dynamic_batching=pb.DynamicBatching(enabled=True, max_queue_delay_us=2**64 - 1), max_batch=4),
    pb.LoadOptions(instances=10_000),
    pb.LoadOptions(max_batch=2**32 - 1),
    pb.LoadOptions(input_shapes={"x": pb.Shape(dims=[2**62, 64])}),
    pb.LoadOptions(input_shapes={"x": pb.Shape(dims=[1] * 100)}),
    pb.LoadOptions(name="a" * 10_000),
    pb.LoadOptions(name="../../etc"),
    pb.LoadOptions(workspace="shared:" + "g" * 500),
    pb.LoadOptions(dynamic_batching=pb.DynamicBatching(enabled=True, preferred_batch_sizes=[2] * 1000), max_batch=4),
], ids=["delay-2^64", "instances-10000", "max-batch-2^32", "dim-2^62", "rank-100", "long-name", "path-name",
        "long-group", "1000-preferred"])
def test_unbounded_options_are_refused_at_once_and_admin_calls_keep_working(daemon, client, options):
    threads = _threads(daemon.proc.pid)
    data = EXAMPLE.read_bytes()
    with grpc.insecure_channel(daemon.target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.MemserveStub(ch).Load(iter([pb.LoadRequest(options=options), pb.LoadRequest(chunk=data)]),
                                          timeout=30)
    assert e.value.code() == INVALID, e.value.details()
    assert _threads(daemon.proc.pid) <= threads + 2  # no thread per instance was started
    m = client.load(EXAMPLE, name="after")  # the admin lock is free, the lanes alive
    assert client.execute(m, {"x": np.ones((1, 64), np.float32)})["probs"].shape == (1, 10)
    client.unload(m)
    assert client.device_status().used == 0


def test_a_load_that_cannot_start_its_lanes_gives_everything_back(monkeypatch):
    device = CpuDevice(64 << 20)
    registry = Registry(device)
    real = registry.scheduler.lane
    calls = []

    def failing(ws):
        calls.append(ws)
        if len(calls) == 3:
            raise RuntimeError("can't start new thread")
        return real(ws)

    monkeypatch.setattr(registry.scheduler, "lane", failing)
    with pytest.raises(ResourceExhausted):
        registry.load(EXAMPLE.read_bytes(), LoadOptions(name="m", instances=4))
    assert device.used() == 0 and registry.list() == [] and registry.scheduler.lanes() == []
    assert registry.pool.workspaces() == []


# -- items 5 and 6: compiles stop with their caller; no orphans --------------------------------------

def test_a_compile_stops_when_its_deadline_passes_and_leaves_nothing(make_daemon):
    d = make_daemon()
    model = op_chain(60_000)
    with d.client() as c:
        err = _status(lambda: Client(d.target, timeout=0.5).load(model, name="slow"))
        assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1)
        assert c.list_models() == [] and c.device_status().used == 0
    assert "was stopped and left nothing behind" in d.output()  # by a checkpoint, not undone after the fact


def test_a_cancelled_compile_stops_at_the_next_checkpoint():
    registry = Registry(CpuDevice(64 << 20))
    polls = []

    def alive() -> bool:
        polls.append(1)
        return len(polls) < 50  # the caller leaves after 50 checkpoints

    with pytest.raises(Cancelled):
        with registry.load_job(alive=alive):
            registry.load(op_chain(5000), LoadOptions(name="gone"))
    assert len(polls) == 50  # stopped right there, not after the 5000 nodes
    assert registry.list() == [] and registry.device.used() == 0 and registry.budget.used == 0


def test_loads_whose_callers_give_up_never_stay_loaded(make_daemon):
    """Item 6: 35 of 40 such loads used to stay loaded under ids nobody received."""
    d = make_daemon()
    models = [mlp_bytes(seed=k, sizes=(64, 256, 256, 10)) for k in range(40)]
    acked = set()
    lock = threading.Lock()

    def load(k: int) -> None:
        # Most loads give up somewhere in the middle of the work; every tenth waits long enough to finish
        # however slow the machine (the first load in a daemon also imports the kernel compiler).
        timeout = 30.0 if k % 10 == 9 else 0.01 + 0.02 * (k % 10)
        try:
            m = Client(d.target, timeout=timeout).load(models[k], name=f"m{k}")
        except MemserveError as exc:
            assert exc.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED), exc
            return
        with lock:
            acked.add(m.id)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(load, range(40)))
    assert 0 < len(acked) < 40  # both kinds happened
    with d.client() as c:
        deadline = time.monotonic() + 20
        while {m.id for m in c.list_models()} != acked and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {m.id for m in c.list_models()} == acked
        for m in c.list_models():
            c.unload(m)
        assert c.device_status().used == 0


def test_process_rss_is_not_raised_by_refused_uploads(make_daemon):
    """A model over --max-model-size is refused while it streams, not after it was buffered."""
    d = make_daemon("--max-model-size", "1MiB")
    before = _rss(d.proc.pid)
    big = os.urandom(64 << 20)
    with d.client() as c:
        err = _status(lambda: c.load(big))
        assert err.code == EXHAUSTED and "--max-model-size" in err.message
    assert _rss(d.proc.pid) - before < 32 << 20


def test_a_deep_tree_is_measured_in_linear_time_and_cycles_are_refused():
    """A 2 MB chain-shaped tree took minutes to build at the first Execute (quadratic depth walk)."""
    from memserve.errors import InvalidArgument
    from memserve.kernels import Node
    from memserve.kernels.ml import forest

    def chain(depth: int, cycle: bool = False) -> Node:
        n = 2 * depth + 1
        true = [k + 1 if k < depth - 1 else depth for k in range(depth)] + [0] * (depth + 1)
        if cycle:
            true[depth - 1] = 0
        return Node("TreeEnsembleRegressor", "deep", ["x"], ["y"], domain="ai.onnx.ml", attrs={
            "nodes_treeids": [0] * n, "nodes_nodeids": list(range(n)), "nodes_featureids": [0] * n,
            "nodes_modes": ["BRANCH_LEQ"] * depth + ["LEAF"] * (depth + 1), "nodes_values": [1.0] * n,
            "nodes_truenodeids": true, "nodes_falsenodeids": [depth + 1 + k for k in range(depth)] + [0] * (depth + 1)})

    assert forest(chain(50_000)).depth == 50_000
    with pytest.raises(InvalidArgument, match="cycle"):
        forest(chain(100, cycle=True))


def test_an_einsum_fold_costs_its_operands_not_the_product_of_its_letters():
    """'i,j,k->' over three 2000-element constants: both the shape function (einsum over zero-stride
    views) and the fold used to do 8e9 multiply-adds, past any deadline, between two checkpoints."""
    from models import run_local

    a = np.ones(2000, np.float32)
    model = graph_model([helper.make_node("Einsum", ["a", "a", "a"], ["s"], equation="i,j,k->"),
                         helper.make_node("Add", ["x", "s"], ["y"])],
                        [("x", F32, [1])], [("y", F32, [1])], {"a": a})
    y = run_local(model, {"x": np.zeros(1, np.float32)})[0]
    np.testing.assert_allclose(y, [2000.0 ** 3], rtol=1e-6)


def test_a_fold_is_charged_for_its_kernels_temporaries(make_daemon):
    """A linear Resize of a 2x2 uint8 constant to 12000x12000 was charged 137 MiB (its output) but took
    2.4 GB (float64 taps and rounding); folds are charged 16 bytes an element at least."""
    from onnx import TensorProto as T

    model = graph_model([helper.make_node("Resize", ["c", "", "", "sizes"], ["big"], mode="linear", name="up"),
                         helper.make_node("ReduceMax", ["big"], ["m"], keepdims=0),
                         helper.make_node("Add", ["x", "m"], ["y"])],
                        [("x", T.UINT8, [1])], [("y", T.UINT8, [1])],
                        {"c": np.arange(4, dtype=np.uint8).reshape(1, 1, 2, 2),
                         "sizes": np.array([1, 1, 12000, 12000], np.int64)})
    d = make_daemon("--max-load-memory", "400MiB")
    with d.client() as c:
        err = _status(lambda: c.query_size(model))
        assert err.code == EXHAUSTED and "'up' (Resize)" in err.message


def test_host_values_a_model_keeps_are_bounded(client):
    """A 251-byte model kept a 200 MB folded constant on the host for a batch-dependent Gather, counted
    nowhere; five such loads took 1 GB."""
    model = graph_model([helper.make_node("Shape", ["x"], ["s"]),
                         helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
                         helper.make_node("ConstantOfShape", ["n"], ["big"],
                                          value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
                         helper.make_node("Gather", ["big", "b"], ["g"], axis=0),
                         helper.make_node("Add", ["x", "g"], ["y"])],
                        [("x", F32, ["B", 1])], [("y", F32, ["B", 1])],
                        {"zero": np.array(0, np.int64), "n": np.array([50_000_000], np.int64)})
    err = _status(lambda: client.load(model, max_batch=4))
    assert err.code == INVALID and "keeps" in err.message and "'big'" in err.message
