"""The peer for serving benchmarks: memserve.v1 Load/Execute/Unload over onnxruntime sessions.

The simplest onnxruntime-backed gRPC server one would write: same grpcio, same
thread pool and message types as memserved; one InferenceSession per loaded
model (one intra-op thread), run on the handler thread.
    python bench/ort_server.py  (prints "listening on HOST:PORT")
"""
from __future__ import annotations

import itertools
import pathlib
import sys
import threading

import numpy as np
import onnxruntime as ort

from memserve_api import tensors
from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import serve  # noqa: E402


class OrtServer(pb_grpc.MemserveServicer):
    def __init__(self) -> None:
        self.sessions: dict[int, ort.InferenceSession] = {}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()

    def Load(self, request_iterator, context):
        data = b"".join(m.chunk for m in request_iterator if m.WhichOneof("part") == "chunk")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        with self.lock:
            model_id = next(self.ids)
            self.sessions[model_id] = session
        return pb.LoadResponse(model=pb.ModelInfo(id=model_id))

    def Execute(self, request, context):
        session = self.sessions[request.model.id]
        feeds = {t.name: tensors.from_proto(t) for t in request.inputs}
        names = [o.name for o in session.get_outputs()]
        outs = session.run(names, feeds)
        return pb.ExecuteResponse(outputs=[tensors.to_proto(n, np.asarray(o)) for n, o in zip(names, outs)])

    def Unload(self, request, context):
        with self.lock:
            self.sessions.pop(request.model.id, None)
        return pb.UnloadResponse()


def main() -> None:
    serve(pb_grpc.add_MemserveServicer_to_server, OrtServer())


if __name__ == "__main__":
    sys.exit(main())
