"""The Open Inference Protocol (KServe v2) servicer, as tritonclient speaks it.

Thin over the same registry as the native API: a model loaded through either
is visible, executable and unloadable through both. Models have one version,
"1". How Triton's model configuration maps onto memserve's load options is in
docs/kserve.md.
"""
from __future__ import annotations

import json
import logging
import time

import grpc
import numpy as np
from google.protobuf import json_format

from memserve_client.pb.inference import grpc_service_pb2 as pb
from memserve_client.pb.inference import grpc_service_pb2_grpc as pb_grpc
from memserve_client.pb.inference import model_config_pb2 as mc

from .. import __version__
from ..errors import InputMismatch, InvalidArgument, MemserveError, NotFound, UnsupportedModel
from ..registry import Batching, LoadedModel, LoadOptions, Registry
from .native import deadline
from .status import counted, handle_errors
from .streams import pipelined

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
    def __init__(self, registry: Registry, repository=None):
        self.registry = registry
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
        model, arrays, wanted, raw = self._decode(request)
        pending = self.registry.submit(model.id, arrays, deadline(context, _timeout_us(request)), _priority(request))
        context.add_callback(pending.cancel)
        return infer_response(request, model, pending.result(), wanted, raw)

    def ModelStreamInfer(self, request_iterator, context):
        submitted = []
        context.add_callback(lambda: [p.cancel() for p in list(submitted)])

        def fail(err: BaseException, request, start) -> pb.ModelStreamInferResponse:
            message = err.message if isinstance(err, MemserveError) else f"internal error: {err}"
            status = err.code.name if isinstance(err, MemserveError) else "INTERNAL"
            return self._counted(request, pb.ModelStreamInferResponse(error_message=message), status, start)

        def handle(request: pb.ModelInferRequest, answer) -> None:
            start = time.perf_counter()
            try:
                model, arrays, wanted, raw = self._decode(request)
                pending = self.registry.submit(model.id, arrays, deadline(context, _timeout_us(request)),
                                               _priority(request))
            except MemserveError as err:
                answer(fail(err, request, start))
                return
            submitted.append(pending)

            def done(f) -> None:
                if f.exception() is not None:
                    answer(fail(f.exception(), request, start))
                else:
                    response = infer_response(request, model, f.result(), wanted, raw)
                    answer(self._counted(request, pb.ModelStreamInferResponse(infer_response=response), "OK", start))

            pending.request.future.add_done_callback(done)

        return pipelined(request_iterator, handle, "model-stream-infer")

    def _counted(self, request, response, status: str, start: float):
        if self.metrics is not None:
            self.metrics.request(request.model_name, "kserve-stream", status, time.perf_counter() - start)
        return response

    def _decode(self, request: pb.ModelInferRequest):
        model = self._model(request.model_name, request.model_version)
        raw = len(request.raw_input_contents) > 0
        if raw and len(request.raw_input_contents) != len(request.inputs):
            raise InvalidArgument(f"{len(request.inputs)} inputs but {len(request.raw_input_contents)} "
                                  "raw_input_contents; send one raw buffer per input, or none")
        arrays = {}
        for k, t in enumerate(request.inputs):
            if t.name in arrays:
                raise InputMismatch(f"input {t.name!r} is given twice")
            arrays[t.name] = decode_tensor(t, request.raw_input_contents[k] if raw else None)
        known = {s.name for s in model.plan.outputs}
        wanted = [o.name for o in request.outputs]
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise InvalidArgument(f"model {model.name!r} has no outputs {unknown}; it has {sorted(known)}")
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
        params = request.parameters
        files = {k[len("file:"):]: p.bytes_param for k, p in params.items() if k.startswith("file:")}
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
        self.registry.load(data, load_options(request.model_name, config))
        return pb.RepositoryModelLoadResponse()

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


def _priority(request: pb.ModelInferRequest) -> int:
    """Triton's priority: 0 is the default, 1 the highest; memserve's levels are 0 (highest) to 7."""
    p = request.parameters.get("priority")
    value = 0 if p is None else (p.uint64_param or p.int64_param)
    return min(max(value - 1, 0), 7)


def _timeout_us(request: pb.ModelInferRequest) -> int:
    p = request.parameters.get("timeout")
    return 0 if p is None else (p.uint64_param or p.int64_param)


def decode_tensor(t, raw: bytes | None) -> np.ndarray:
    if t.datatype not in DATATYPES:
        raise InvalidArgument(f"input {t.name!r}: datatype {t.datatype!r} is not supported; use one of "
                              f"{sorted(DATATYPES)}")
    dtype = np.dtype(DATATYPES[t.datatype][0])
    shape = tuple(t.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InputMismatch(f"input {t.name!r} has {len(raw)} raw bytes; {t.datatype} {list(shape)} needs "
                                f"{count * dtype.itemsize}")
        return np.frombuffer(raw, dtype).reshape(shape)
    field = DATATYPES[t.datatype][1]
    if field is None:
        raise InvalidArgument(f"input {t.name!r}: {t.datatype} travels only as raw_input_contents")
    values = getattr(t.contents, field)
    if len(values) != count:
        raise InputMismatch(f"input {t.name!r} has {len(values)} values; shape {list(shape)} needs {count}")
    return np.asarray(values, dtype=dtype).reshape(shape)


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
    with s._lock:
        return pb.ModelStatistics(
            name=m.name, version=VERSION, last_inference=s.last_inference_ms, inference_count=s.inference_count,
            execution_count=s.execution_count,
            inference_stats=pb.InferStatistics(
                success=d(count=s.success.count, ns=s.success.ns), fail=d(count=s.fail.count, ns=s.fail.ns),
                queue=d(count=s.queue.count, ns=s.queue.ns),
                compute_infer=d(count=s.compute.count, ns=s.compute.ns)),
            batch_stats=[pb.InferBatchStatistics(batch_size=rows, compute_infer=d(count=v.count, ns=v.ns))
                         for rows, v in sorted(s.batches.items())],
            memory_usage=[pb.MemoryUsage(type="CPU", id=0, byte_size=m.plan.weight_size),
                          pb.MemoryUsage(type="CPU", id=0, byte_size=sum(ws.size for ws in m.workspaces))])
