"""The floor for a Python gRPC server: memserve.v1 Execute that echoes its inputs.

Same grpcio, same thread pool and message types as memserved; no model runs.
    python bench/echo_server.py  (prints "listening on HOST:PORT")
"""
from __future__ import annotations

import pathlib
import sys

from memserve import hostmem
from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import serve  # noqa: E402


class Echo(pb_grpc.MemserveServicer):
    def Execute(self, request, context):
        r = pb.ExecuteResponse()
        r.outputs.extend(request.inputs)
        return r


def main() -> None:
    hostmem.keep_tensor_memory()  # the allocator settings memserved runs with
    serve(pb_grpc.add_MemserveServicer_to_server, Echo())


if __name__ == "__main__":
    sys.exit(main())
