"""The Open Inference Protocol (KServe v2) servicer, as tritonclient speaks it.

Thin over the same registry as the native API: a model loaded through either
is visible, executable and unloadable through both. Models have one version,
"1". How Triton's model configuration maps onto memserve's load options is in
docs/kserve.md.
"""
from __future__ import annotations

import logging
import time

import grpc
import numpy as np

from memserve_api.pb.inference import grpc_service_pb2 as pb
from memserve_api.pb.inference import grpc_service_pb2_grpc as pb_grpc

from .. import limits
from ..errors import InvalidArgument, MemserveError, NotFound
from ..registry import LoadedModel, Pending, Registry
from . import decode, v2
from .calls import answer, deadlines, load_for_call
from .status import counted, handle_errors
from .streams import StreamLimit, pipelined
# The protocol-neutral v2 helpers live in v2.py (shared with the REST server); imported here under their old names.
from .v2 import (BY_DTYPE, CONFIG_TYPES, DATATYPES, EXTENSIONS, PLATFORM, VERSION, _int_parameter,  # noqa: F401
                 _most, datatype, decode_tensor, load_options, model_config, statistics)

log = logging.getLogger("memserve.api")


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, registry: Registry, repository=None, streams: StreamLimit | None = None):
        self.registry = registry
        self.streams = streams
        self.metrics = registry.metrics
        self.repository = repository
        self.serving = True

    # -- health and metadata -------------------------------------------------------

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.serving)

    @handle_errors
    def ModelReady(self, request, context):
        try:
            self._model(request.name, request.version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request, context):
        return v2.server_metadata()

    @handle_errors
    def ModelMetadata(self, request, context):
        return v2.model_metadata(self._model(request.name, request.version))

    @handle_errors
    def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=model_config(self._model(request.name, request.version),
                                                          self.registry.device.kind))

    @handle_errors
    def ModelStatistics(self, request, context):
        models = [self._model(request.name, request.version)] if request.name else self.registry.list()
        return pb.ModelStatisticsResponse(model_stats=[statistics(m) for m in models])

    # -- inference ---------------------------------------------------------------------

    @counted("kserve", lambda self, r: r.model_name)
    @handle_errors
    def ModelInfer(self, request, context):
        model, pending, wanted, raw = self._submit(request, context)
        return infer_response(request, model, answer(pending, context), wanted, raw)

    def ModelStreamInfer(self, request_iterator, context):
        """Submit requests as they arrive; answer each as it finishes, errors with their request's id."""

        def submit(request: pb.ModelInferRequest) -> tuple[Pending, tuple]:
            model, pending, wanted, raw = self._submit(request, context)
            return pending, (model, wanted, raw)

        def respond(request: pb.ModelInferRequest, state: tuple, result, start: float) -> pb.ModelStreamInferResponse:
            model, wanted, raw = state
            response = infer_response(request, model, result, wanted, raw)
            return self._counted(request, pb.ModelStreamInferResponse(infer_response=response), "OK", start)

        def fail(request: pb.ModelInferRequest, err: MemserveError, start: float) -> pb.ModelStreamInferResponse:
            # As Triton does: the error, and the request's id and model so the client can match it.
            response = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                             id=request.id)
            return self._counted(request, pb.ModelStreamInferResponse(error_message=err.message,
                                                                      infer_response=response),
                                 err.code.name, start)

        return pipelined(request_iterator, context, submit, respond, fail, "model-stream-infer", self.streams)

    def _counted(self, request, response, status: str, start: float):
        if self.metrics is not None:
            self.metrics.request(request.model_name, "kserve-stream", status, time.perf_counter() - start)
        return response

    def _submit(self, request: pb.ModelInferRequest, context) -> tuple[LoadedModel, Pending, list[str], bool]:
        model, arrays, wanted, raw = self._decode(request)
        start_by, finish_by = deadlines(context, _timeout_us(request))
        pending = self.registry.submit(model.id, arrays, start_by, _priority(request), finish_by)
        return model, pending, wanted, raw

    def _decode(self, request: pb.ModelInferRequest):
        model = self._model(request.model_name, request.model_version)
        raw = len(request.raw_input_contents) > 0
        if raw and len(request.raw_input_contents) != len(request.inputs):
            raise InvalidArgument(f"{len(request.inputs)} inputs but {len(request.raw_input_contents)} "
                                  "raw_input_contents; send one raw buffer per input, or none")
        specs = {spec.name: spec for spec in model.plan.inputs}
        arrays = decode.named((t.name, decode_tensor(t, request.raw_input_contents[k] if raw else None,
                                                     _most(model, specs, t)))
                              for k, t in enumerate(request.inputs))
        known = {s.name for s in model.plan.outputs}
        wanted = [o.name for o in request.outputs]
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise InvalidArgument(f"model {model.name!r} has no outputs {unknown[:8]}; it has {sorted(known)}")
        return model, arrays, wanted, raw

    # -- repository ------------------------------------------------------------------

    @handle_errors
    def RepositoryIndex(self, request, context):
        return v2.repository_index(self.registry, self.repository, request.ready)

    @handle_errors
    def RepositoryModelLoad(self, request, context):
        model = load_for_call(self.registry, context, lambda: self._repository_load(request))
        log.info("repository load of %s: model id %d", request.model_name, model.id)
        return pb.RepositoryModelLoadResponse()

    def _repository_load(self, request) -> LoadedModel:
        params = request.parameters
        files = {k[len("file:"):]: p.bytes_param for k, p in params.items() if k.startswith("file:")}
        config = params["config"].string_param if "config" in params else None
        return v2.repository_load(self.registry, self.repository, request.model_name, config, files)

    @handle_errors
    def RepositoryModelUnload(self, request, context):
        self.registry.unload(self._model(request.model_name, "").id)
        return pb.RepositoryModelUnloadResponse()

    # -- shared memory -----------------------------------------------------------------

    def _no_shared_memory(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "memserve does not take tensors through shared memory: it keeps every byte in memory it "
                      "accounts for; send tensors in the request (raw_input_contents)")

    SystemSharedMemoryStatus = SystemSharedMemoryRegister = SystemSharedMemoryUnregister = _no_shared_memory
    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _no_shared_memory

    def _model(self, name: str, version: str) -> LoadedModel:
        return v2.model(self.registry, name, version)


def _priority(request: pb.ModelInferRequest) -> int:
    """Triton's priority: 0 is the default, 1 the highest; memserve's levels are 0 (highest) to 7."""
    return v2.priority_level(_int_parameter(request, "priority", v2.MAX_PRIORITY))


def _timeout_us(request: pb.ModelInferRequest) -> int:
    return _int_parameter(request, "timeout", limits.MAX_TIMEOUT_US)


def infer_response(request, model: LoadedModel, result, wanted: list[str], raw: bool) -> pb.ModelInferResponse:
    r = pb.ModelInferResponse(model_name=model.name, model_version=VERSION, id=request.id)
    for out in result.outputs:
        if wanted and out.name not in wanted:
            continue
        name = datatype(out.dtype)
        tensor = r.outputs.add(name=out.name, datatype=name, shape=out.shape)
        field = DATATYPES[name][1] if name in DATATYPES else None
        if raw or field is None:
            r.raw_output_contents.append(out.data)
        else:
            getattr(tensor.contents, field).extend(np.frombuffer(out.data, out.dtype).tolist())
    return r
