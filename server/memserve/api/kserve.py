"""The Open Inference Protocol (KServe v2) servicer, as tritonclient speaks it.

Thin over the same registry as the native API: a model loaded through either
is visible, executable and unloadable through both. Models have one version,
"1". How Triton's model configuration maps onto memserve's load options is in
docs/kserve.md.
"""
from __future__ import annotations

import json
import logging
import math
import time

import grpc
import numpy as np
from google.protobuf import json_format

from memserve_api.pb.inference import grpc_service_pb2 as pb
from memserve_api.pb.inference import grpc_service_pb2_grpc as pb_grpc
from memserve_api.pb.inference import model_config_pb2 as mc

from .. import __version__, budget, limits
from ..errors import InputMismatch, InvalidArgument, MemserveError, NotFound, UnsupportedModel
from ..registry import Batching, LoadedModel, LoadOptions, Pending, Registry
from . import decode
from .calls import deadlines, load_for_call
from .status import counted, handle_errors
from .streams import StreamLimit, pipelined

log = logging.getLogger("memserve.api")
VERSION = "1"
PLATFORM = "memserve_onnx"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "schedule_policy"]

# datatype string <-> numpy, and which typed-contents field carries it
DATATYPES = {"BOOL": ("?", "bool_contents"), "UINT8": ("u1", "uint_contents"), "UINT16": ("<u2", "uint_contents"),
             "UINT32": ("<u4", "uint_contents"), "UINT64": ("<u8", "uint64_contents"), "INT8": ("i1", "int_contents"),
             "INT16": ("<i2", "int_contents"), "INT32": ("<i4", "int_contents"), "INT64": ("<i8", "int64_contents"),
             "FP16": ("<f2", None), "FP32": ("<f4", "fp32_contents"), "FP64": ("<f8", "fp64_contents")}
BY_DTYPE = {np.dtype(code).name: name for name, (code, _) in DATATYPES.items()}
CONFIG_TYPES = {name: getattr(mc, f"TYPE_{name}") for name in DATATYPES}


def datatype(dtype: np.dtype) -> str:
    return BY_DTYPE[np.dtype(dtype).name]


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
        return pb.ServerMetadataResponse(name="memserve", version=__version__, extensions=EXTENSIONS)

    @handle_errors
    def ModelMetadata(self, request, context):
        m = self._model(request.name, request.version)
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=m.name, versions=[VERSION], platform=PLATFORM,
            inputs=[meta(name=s.name, datatype=datatype(s.dtype), shape=s.shape) for s in m.plan.inputs],
            outputs=[meta(name=s.name, datatype=datatype(s.dtype), shape=s.shape) for s in m.plan.outputs])

    @handle_errors
    def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=model_config(self._model(request.name, request.version)))

    @handle_errors
    def ModelStatistics(self, request, context):
        models = [self._model(request.name, request.version)] if request.name else self.registry.list()
        return pb.ModelStatisticsResponse(model_stats=[statistics(m) for m in models])

    # -- inference ---------------------------------------------------------------------

    @counted("kserve", lambda self, r: r.model_name)
    @handle_errors
    def ModelInfer(self, request, context):
        model, pending, wanted, raw = self._submit(request, context)
        context.add_callback(pending.cancel)
        return infer_response(request, model, pending.result(), wanted, raw)

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
        index = pb.RepositoryIndexResponse.ModelIndex
        loaded = {m.name: index(name=m.name, version=VERSION, state="READY") for m in self.registry.list()}
        if self.repository is not None and not request.ready:
            for name in self.repository.names():
                loaded.setdefault(name, index(name=name, version=VERSION, state="UNAVAILABLE", reason="unloaded"))
        return pb.RepositoryIndexResponse(models=[loaded[n] for n in sorted(loaded)])

    @handle_errors
    def RepositoryModelLoad(self, request, context):
        model = load_for_call(self.registry, context, lambda: self._repository_load(request))
        log.info("repository load of %s: model id %d", request.model_name, model.id)
        return pb.RepositoryModelLoadResponse()

    def _repository_load(self, request) -> LoadedModel:
        params = request.parameters
        files = {k[len("file:"):]: p.bytes_param for k, p in params.items() if k.startswith("file:")}
        budget.charge(sum(len(v) for v in files.values()), "the model upload")
        config = mc.ModelConfig()
        if "config" in params:
            try:
                json_format.Parse(params["config"].string_param, config, ignore_unknown_fields=True)
            except (json_format.ParseError, json.JSONDecodeError) as exc:
                raise InvalidArgument(f"parameter 'config' is not a model configuration in JSON: {exc}") from None
        if files:
            onnx_files = [v for k, v in sorted(files.items()) if k.endswith(".onnx")]
            if len(onnx_files) != 1:
                raise InvalidArgument(f"send exactly one ONNX file as 'file:<version>/<name>.onnx'; got {sorted(files)}")
            data = onnx_files[0]
        elif self.repository is not None:
            data, stored = self.repository.read(request.model_name)
            if "config" not in params and stored is not None:
                config = stored
        else:
            raise InvalidArgument("send the model as parameter 'file:1/model.onnx' (memserved has no "
                                  "--model-repository to load it from)")
        return self.registry.load(data, load_options(request.model_name, config))

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
        if version not in ("", VERSION):
            raise NotFound(f"model {name!r} has only version {VERSION}, not {version!r}")
        return self.registry.get(name)


def _int_parameter(request: pb.ModelInferRequest, name: str, high: int) -> int:
    """An integer request parameter (int64 or uint64, as clients send either), within 0..high."""
    p = request.parameters.get(name)
    if p is None:
        return 0
    which = p.WhichOneof("parameter_choice")
    if which not in ("int64_param", "uint64_param"):
        raise InvalidArgument(f"parameter {name!r} must be an integer, got {which or 'nothing'}")
    return limits.check_range(f"parameter {name!r}", getattr(p, which), 0, high)


def _priority(request: pb.ModelInferRequest) -> int:
    """Triton's priority: 0 is the default, 1 the highest; memserve's levels are 0 (highest) to 7."""
    return min(max(_int_parameter(request, "priority", 2**63 - 1) - 1, 0), 7)


def _timeout_us(request: pb.ModelInferRequest) -> int:
    return _int_parameter(request, "timeout", limits.MAX_TIMEOUT_US)


def _most(model: LoadedModel, specs: dict, t) -> int:
    """The most elements the model takes for input `t`; its name and datatype are checked first, all before
    its values are decoded (typed contents cost far more to decode than to send)."""
    spec = specs.get(t.name)
    if spec is None:
        raise InputMismatch(f"model {model.name!r} has no input {t.name[:64]!r}; its inputs are {sorted(specs)}")
    if t.datatype in DATATYPES and np.dtype(DATATYPES[t.datatype][0]) != spec.dtype:
        raise InputMismatch(f"input {t.name[:64]!r} must be {datatype(spec.dtype)}, got {t.datatype[:32]}")
    return math.prod(model.plan.max_batch if d == -1 else d for d in spec.shape)


def decode_tensor(t, raw: bytes | None, most: int | None = None) -> np.ndarray:
    if t.datatype not in DATATYPES:
        raise InvalidArgument(f"input {t.name[:64]!r}: datatype {t.datatype[:32]!r} is not supported; use one of "
                              f"{sorted(DATATYPES)}")
    dtype = np.dtype(DATATYPES[t.datatype][0])
    if raw is not None:
        return decode.tensor(t.name, dtype, t.shape, raw=raw, max_elements=most)
    field = DATATYPES[t.datatype][1]
    if field is None:
        raise InvalidArgument(f"input {t.name[:64]!r}: {t.datatype} travels only as raw_input_contents")
    return decode.tensor(t.name, dtype, t.shape, values=getattr(t.contents, field), max_elements=most)


def infer_response(request, model: LoadedModel, result, wanted: list[str], raw: bool) -> pb.ModelInferResponse:
    r = pb.ModelInferResponse(model_name=model.name, model_version=VERSION, id=request.id)
    for out in result.outputs:
        if wanted and out.name not in wanted:
            continue
        name = datatype(out.dtype)
        tensor = r.outputs.add(name=out.name, datatype=name, shape=out.shape)
        field = DATATYPES[name][1]
        if raw or field is None:
            r.raw_output_contents.append(out.data)
        else:
            getattr(tensor.contents, field).extend(np.frombuffer(out.data, out.dtype).tolist())
    return r


def model_config(m: LoadedModel) -> mc.ModelConfig:
    batched = m.plan.max_batch > 0
    dims = (lambda shape: shape[1:]) if batched else (lambda shape: shape)
    config = mc.ModelConfig(
        name=m.name, platform=PLATFORM, backend="memserve", max_batch_size=m.plan.max_batch,
        input=[mc.ModelInput(name=s.name, data_type=CONFIG_TYPES[datatype(s.dtype)], dims=dims(s.shape))
               for s in m.plan.inputs],
        output=[mc.ModelOutput(name=s.name, data_type=CONFIG_TYPES[datatype(s.dtype)], dims=dims(s.shape))
                for s in m.plan.outputs],
        instance_group=[mc.ModelInstanceGroup(count=len(m.workspaces), kind=mc.ModelInstanceGroup.KIND_CPU)],
        parameters={"workspace": mc.ModelParameter(string_value=m.workspace.name),
                    "work_size": mc.ModelParameter(string_value=str(m.plan.work_size)),
                    "weight_size": mc.ModelParameter(string_value=str(m.plan.weight_size))},
    )
    b = m.options.batching
    if b is not None:
        config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(
            preferred_batch_size=b.preferred_batch_sizes, max_queue_delay_microseconds=b.max_queue_delay_us))
    return config


def load_options(name: str, config: mc.ModelConfig) -> LoadOptions:
    """Triton's model configuration as memserve load options (docs/kserve.md)."""
    max_batch = config.max_batch_size
    shapes = {}
    for i in config.input:
        dims = list(i.dims)
        if any(d < 0 for d in dims):
            raise UnsupportedModel(f"input {i.name!r} has variable dims {dims} in the config; give fixed sizes")
        if dims:
            shapes[i.name] = tuple(([max_batch] if max_batch > 0 else []) + dims)
    count = sum(g.count or 1 for g in config.instance_group) or 1
    workspace = config.parameters["workspace"].string_value if "workspace" in config.parameters else "private"
    batching = None
    if config.HasField("dynamic_batching"):
        d = config.dynamic_batching
        batching = Batching(d.max_queue_delay_microseconds, tuple(d.preferred_batch_size))
    return LoadOptions(name=name, workspace=workspace, max_batch=max(max_batch, 0), input_shapes=shapes,
                       instances=count, replace=True, batching=batching)


def statistics(m: LoadedModel) -> pb.ModelStatistics:
    s = m.stats
    d = pb.StatisticDuration
    with s.lock():
        return pb.ModelStatistics(
            name=m.name, version=VERSION, last_inference=s.last_inference_ms, inference_count=s.inference_count,
            execution_count=s.execution_count,
            inference_stats=pb.InferStatistics(
                success=d(count=s.success.count, ns=s.success.ns), fail=d(count=s.fail.count, ns=s.fail.ns),
                queue=d(count=s.queue.count, ns=s.queue.ns),
                compute_input=d(count=s.compute.count), compute_infer=d(count=s.compute.count, ns=s.compute.ns),
                compute_output=d(count=s.compute.count)),
            batch_stats=[pb.InferBatchStatistics(batch_size=rows, compute_infer=d(count=v.count, ns=v.ns))
                         for rows, v in sorted(s.batches.items())],
            memory_usage=[pb.MemoryUsage(type="CPU", id=0, byte_size=m.plan.weight_size),
                          pb.MemoryUsage(type="CPU", id=0, byte_size=sum(ws.size for ws in m.workspaces))])
