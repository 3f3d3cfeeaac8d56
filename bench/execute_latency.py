"""Execute latency of the example MLP from the client, next to its peers.

Peers, in the same run: a bare grpcio server that echoes the same Execute
message (the floor for any Python gRPC server) and onnxruntime running the
same model in process with one thread (the compute, with no network at all).

    python bench/execute_latency.py [--calls 3000] [--batch 1]
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from common import memserved, start, timed  # noqa: E402

MODEL = ROOT / "examples" / "mlp.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()

    import onnxruntime as ort

    from memserve_client import Client
    from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
    from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc
    from memserve_api.tensors import to_proto

    import grpc

    x = np.random.default_rng(0).standard_normal((a.batch, 64)).astype(np.float32)
    rows = {}
    daemon, target = memserved("--device-memory", "256MiB")
    echo, echo_target = start([sys.executable, str(ROOT / "bench" / "echo_server.py")])
    try:
        with Client(target) as c:
            m = c.load(MODEL, name="mlp", max_batch=a.batch)
            rows["memserve Execute (client)"] = timed(lambda: c.execute(m, {"x": x}), a.calls)
            stats = c.execute_with_stats(m, {"x": x})
            server_side = (stats.queue_us, stats.compute_us)
        with grpc.insecure_channel(echo_target) as ch:
            stub = pb_grpc.MemserveStub(ch)
            req = pb.ExecuteRequest(model=pb.ModelRef(id=1), inputs=[to_proto("x", x)])
            rows["bare grpcio echo"] = timed(lambda: stub.Execute(req), a.calls)
    finally:
        daemon.terminate()
        echo.terminate()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(MODEL), opts, providers=["CPUExecutionProvider"])
    rows["onnxruntime in process"] = timed(lambda: sess.run(None, {"x": x}), a.calls)

    base = np.percentile(rows["bare grpcio echo"], 50)
    print(f"example MLP 64-128-128-10, batch {a.batch}, {a.calls} calls each, one client thread")
    print(f"{'path':<28} {'p50 us':>9} {'p99 us':>9} {'p50 / echo':>11}")
    for name, t in rows.items():
        p50, p99 = np.percentile(t, [50, 99])
        print(f"{name:<28} {p50:>9.0f} {p99:>9.0f} {p50 / base:>11.2f}")
    print(f"memserve server side, last call: queued {server_side[0]} us, computed {server_side[1]} us")


if __name__ == "__main__":
    main()
