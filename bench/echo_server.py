"""The floor for a Python gRPC server: memserve.v1 Execute that echoes its inputs.

Same grpcio, same thread pool and message types as memserved; no model runs.
    python bench/echo_server.py  (prints "listening on HOST:PORT")
"""
from __future__ import annotations

import sys
from concurrent import futures

import grpc

from memserve_client.pb.memserve.v1 import memserve_pb2 as pb
from memserve_client.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc


class Echo(pb_grpc.MemserveServicer):
    def Execute(self, request, context):
        return pb.ExecuteResponse(outputs=list(request.inputs))


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    pb_grpc.add_MemserveServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
