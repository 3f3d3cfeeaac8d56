"""The floor for a Python grpc.aio server: memserve.v1 Execute that echoes its inputs.

    python bench/aio_echo_server.py  (prints "listening on HOST:PORT")
"""
from __future__ import annotations

import asyncio
import sys

import grpc

from memserve import hostmem
from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc


class Echo(pb_grpc.MemserveServicer):
    async def Execute(self, request, context):
        r = pb.ExecuteResponse()
        r.outputs.extend(request.inputs)
        return r


async def serve() -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_MemserveServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    hostmem.keep_tensor_memory()  # the allocator settings memserved runs with
    sys.exit(asyncio.run(serve()))
