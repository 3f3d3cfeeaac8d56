"""Serving under load, instance memory and model density: memserve against onnxruntime.

    python bench/serving.py [--seconds 3] [--parts throughput instances density]

1. Throughput and p50/p99 latency at concurrency 1, 4, 16, 64 (client threads,
   each with its own channel, each request one row), for an MLP and a CNN:
   memserve with batching off and on, and bench/ort_server.py (an
   onnxruntime session behind the same grpcio server) as the peer.
2. Memory of N instances (N = 1, 4, 16) of one model: memserve's accounted
   bytes and the daemon's RSS growth, against N onnxruntime sessions'
   RSS growth in the peer server.
3. Density: distinct small models loaded into a 1 GiB memserve device with
   private workspaces, one shared group, and auto, against onnxruntime
   sessions until the peer's RSS grew by 1 GiB.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from common import concurrent, memserved, start  # noqa: E402


def peer():
    return start([sys.executable, str(ROOT / "bench" / "ort_server.py")])


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def models():
    from models import graph_model, F32
    from onnx import helper

    mlp = (ROOT / "examples" / "mlp.onnx").read_bytes()
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    cnn = graph_model(nodes, [("x", F32, ["N", 3, 32, 32])], [("y", F32, ["N", 32])], {"w1": w1, "w2": w2})
    return {"mlp": (mlp, "x", (1, 64)), "cnn": (cnn, "x", (1, 3, 32, 32))}


def load_test(target: str, model_id: int, name: str, shape, concurrency: int, seconds: float):
    """(requests/s, p50 ms, p99 ms) of one-row Execute calls."""
    import grpc

    from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
    from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc
    from memserve_api.tensors import to_proto

    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    req = pb.ExecuteRequest(model=pb.ModelRef(id=model_id), inputs=[to_proto(name, x)])

    def make():
        stub = pb_grpc.MemserveStub(grpc.insecure_channel(target))
        return lambda: stub.Execute(req)

    p50, p99, rps = concurrent(make, concurrency, seconds)
    return rps, p50 / 1000, p99 / 1000


def throughput(seconds: float) -> None:
    from memserve_client import Client

    print("\n## throughput and latency (one row per request)\n")
    print(f"{'model':<5} {'server':<22} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for mname, (data, iname, shape) in models().items():
        for server in ("memserve", "memserve batching", "onnxruntime peer"):
            proc, target = peer() if server == "onnxruntime peer" else memserved("--device-memory", "1GiB")
            try:
                with Client(target) as c:
                    kw = dict(max_batch=64, batching=True, max_queue_delay_us=1000) if "batching" in server else {}
                    m = c.load(data, name=mname, **kw) if server != "onnxruntime peer" else c.load(data)
                for conc in (1, 4, 16, 64):
                    rps, p50, p99 = load_test(target, m.id, iname, shape, conc, seconds)
                    print(f"{mname:<5} {server:<22} {conc:>4} {rps:>8.0f} {p50:>8.2f} {p99:>8.2f}", flush=True)
            finally:
                proc.terminate()
                proc.wait()


def instances() -> None:
    from memserve_client import Client
    from zoo import build

    data, _ = build("resnet18")
    print("\n## N instances of ResNet-18 (weights 44.6 MiB)\n")
    print(f"{'N':>3} {'memserve accounted':>19} {'memserve RSS +':>15} {'ort N sessions RSS +':>21} {'ratio':>6}")
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for n in (1, 4, 16):
        proc, target = memserved("--device-memory", "4GiB")
        try:
            base = rss(proc.pid)
            with Client(target) as c:
                m = c.load(data, name="r", instances=n, max_batch=1)
                for _ in range(n):
                    c.execute(m, {"x": x})
                ours, accounted = rss(proc.pid) - base, c.device_status().used
        finally:
            proc.terminate()
            proc.wait()
        proc, target = peer()
        try:
            base = rss(proc.pid)
            with Client(target) as c:
                for _ in range(n):
                    c.execute(c.load(data).id, {"x": x})
                theirs = rss(proc.pid) - base
        finally:
            proc.terminate()
            proc.wait()
        print(f"{n:>3} {accounted:>19} {ours:>15} {theirs:>21} {theirs / ours:>6.1f}", flush=True)


def density(limit: int = 400) -> None:
    from models import graph_model, F32
    from onnx import helper

    from memserve_client import Client, MemserveError

    def model(seed: int) -> bytes:  # small weights (19 KiB), big activations (8 MiB at batch 16)
        w = np.random.default_rng(seed).standard_normal((32, 16, 3, 3)).astype(np.float32)
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
        return graph_model(nodes, [("x", F32, [16, 16, 64, 64])], [("y", F32, [16, 32, 64, 64])], {"w": w})

    print(f"\n## distinct models in a 1 GiB budget (stopping at {limit})\n")
    counts = {}
    for mode in ("private", "shared:all", "auto"):
        proc, target = memserved("--device-memory", "1GiB")
        try:
            with Client(target) as c:
                n = 0
                while n < limit:
                    try:
                        c.load(model(n), name=f"m{n}", workspace=mode)
                    except MemserveError:
                        break
                    n += 1
                counts[f"memserve {mode}"] = n
        finally:
            proc.terminate()
            proc.wait()
    proc, target = peer()
    x = np.zeros((16, 16, 64, 64), np.float32)
    try:
        base = rss(proc.pid)
        with Client(target) as c:
            n = 0
            while n < limit and rss(proc.pid) - base < 1 << 30:
                c.execute(c.load(model(n)).id, {"x": x})
                n += 1
        counts["onnxruntime sessions"] = n
    finally:
        proc.terminate()
        proc.wait()
    for k, v in counts.items():
        more = ">=" if v >= limit else ""
        print(f"{k:<24} {more}{v:>4}  ({v / counts['onnxruntime sessions']:.1f}x onnxruntime)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--parts", nargs="+", default=["throughput", "instances", "density"])
    a = ap.parse_args()
    if "throughput" in a.parts:
        throughput(a.seconds)
    if "instances" in a.parts:
        instances()
    if "density" in a.parts:
        density()


if __name__ == "__main__":
    main()
