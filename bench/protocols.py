"""A tiny model through memserve's native API, through the Open Inference Protocol with
tritonclient, and a bare grpcio server that only echoes the bytes: the floor.

    python bench/protocols.py [--seconds 3]

Latency p50/p99 at concurrency 1, requests/s at concurrency 8 (client threads,
each with its own client and channel), all in the same run on the same machine.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
from common import concurrent, memserved, start  # noqa: E402


def tiny_model() -> bytes:
    from onnx import helper

    from models import F32, graph_model

    return graph_model([helper.make_node("Relu", ["x"], ["y"])], [("x", F32, ["N", 16])], [("y", F32, ["N", 16])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()

    import grpc
    import tritonclient.grpc as tc

    from memserve_client import Client
    from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
    from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc
    from memserve_api.tensors import to_proto

    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    daemon, target = memserved("--device-memory", "64MiB")
    echo, echo_target = start([sys.executable, str(ROOT / "bench" / "echo_server.py")])
    try:
        with Client(target) as c:
            c.load(tiny_model(), name="tiny", max_batch=1)

        def native():
            c = Client(target)
            return lambda: c.execute("tiny", {"x": x})

        def v2():
            c = tc.InferenceServerClient(target)
            inp = tc.InferInput("x", [1, 16], "FP32")
            inp.set_data_from_numpy(x)
            return lambda: c.infer("tiny", [inp])

        def bare():
            stub = pb_grpc.MemserveStub(grpc.insecure_channel(echo_target))
            req = pb.ExecuteRequest(model=pb.ModelRef(name="tiny"), inputs=[to_proto("x", x)])
            return lambda: stub.Execute(req)

        rows = {}
        for name, make in (("bare grpcio echo", bare), ("memserve native", native), ("memserve v2 (tritonclient)", v2)):
            p50, p99, _ = concurrent(make, 1, a.seconds)
            _, _, rps = concurrent(make, 8, a.seconds)
            rows[name] = (p50, p99, rps)
    finally:
        daemon.terminate()
        echo.terminate()
    base = rows["bare grpcio echo"]
    print(f"Relu on 16 floats, batch 1; concurrency 1 for latency, 8 for throughput; {a.seconds:.0f} s each")
    print(f"{'path':<28} {'p50 us':>8} {'p99 us':>8} {'req/s @8':>9} {'p50 / bare':>10} {'req/s / bare':>12}")
    for name, (p50, p99, rps) in rows.items():
        print(f"{name:<28} {p50:>8.0f} {p99:>8.0f} {rps:>9.0f} {p50 / base[0]:>10.2f} {rps / base[2]:>12.2f}")


if __name__ == "__main__":
    main()
