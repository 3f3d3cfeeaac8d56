"""The memserve.v1 servicer: message <-> registry call, nothing more."""
from __future__ import annotations

import logging
import time
from typing import Iterator

import grpc

from memserve_api import tensors
from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc

from .. import budget, limits
from ..errors import Cancelled, InputMismatch, InvalidArgument, MemserveError, ResourceExhausted
from ..model import IOSpec, Plan
from ..model.plan import RUN
from ..registry import Batching, ExecuteResult, LoadedModel, LoadOptions, ModelRef, Pending, Registry
from . import decode
from .calls import answer, deadline, deadlines, load_for_call
from .status import counted, handle_errors
from .streams import StreamLimit, pipelined

_CODES = {code.value[0]: code.value for code in grpc.StatusCode}

log = logging.getLogger("memserve.api")


class NativeServicer(pb_grpc.MemserveServicer):
    def __init__(self, registry: Registry, max_model_size: int, streams: StreamLimit | None = None):
        self.registry = registry
        self.max_model_size = max_model_size
        self.metrics = registry.metrics
        self.streams = streams

    @handle_errors
    def Load(self, request_iterator, context):
        def load() -> LoadedModel:
            options, data = read_upload(request_iterator, context, self.max_model_size)
            return self.registry.load(data, options)

        model = load_for_call(self.registry, context, load)
        return pb.LoadResponse(model=model_info(model), load_time_us=model.load_time_us,
                               weights_shared=model.weights_shared, note=model.note)

    @handle_errors
    def QuerySize(self, request_iterator, context):
        with self.registry.load_job(alive=context.is_active, deadline=deadline(context)):
            options, data = read_upload(request_iterator, context, self.max_model_size)
            plan = self.registry.query_size(data, options)
        return pb.QuerySizeResponse(
            sizes=size_info(plan), inputs=tensor_descs(plan.inputs), outputs=tensor_descs(plan.outputs),
            placements=[pb.Placement(name=p.name, offset=p.offset, size=p.nbytes, first_step=p.first,
                                     last_step=p.last) for p in plan.placements],
            peak_step=plan.peak_step, steps=sum(1 for s in plan.steps if s.phase == RUN))

    def _model_label(self, request) -> str:
        """Metrics name models by name, whichever way the request referred to them."""
        if request.model.name or not request.model.id:
            return request.model.name
        try:
            return self.registry.get(request.model.id).name
        except MemserveError:
            return str(request.model.id)

    @counted("native", _model_label)
    @handle_errors
    def Execute(self, request, context):
        return execute_response(request.id, answer(self._submit(request, context), context))

    def ExecuteStream(self, request_iterator, context):
        """Submit requests as they arrive; answer each as it finishes, errors included."""

        def submit(request: pb.ExecuteRequest) -> tuple[Pending, None]:
            return self._submit(request, context), None

        def respond(request: pb.ExecuteRequest, _, result: ExecuteResult, start: float) -> pb.ExecuteResponse:
            return self._counted(request, execute_response(request.id, result), start)

        def fail(request: pb.ExecuteRequest, err: MemserveError, start: float) -> pb.ExecuteResponse:
            return self._counted(request, error_response(request.id, err), start)

        return pipelined(request_iterator, context, submit, respond, fail, "execute-stream", self.streams)

    def _counted(self, request: pb.ExecuteRequest, response: pb.ExecuteResponse, start: float) -> pb.ExecuteResponse:
        if self.metrics is not None:
            status = grpc.StatusCode(_CODES[response.error.code]).name if response.HasField("error") else "OK"
            self.metrics.request(self._model_label(request), "native-stream", status, time.perf_counter() - start)
        return response

    def _submit(self, request: pb.ExecuteRequest, context) -> Pending:
        limits.check_range("timeout_us", request.timeout_us, 0, limits.MAX_TIMEOUT_US)
        start_by, finish_by = deadlines(context, request.timeout_us)
        return self.registry.submit(model_ref(request.model), input_arrays(request.inputs), start_by,
                                    request.priority, finish_by)

    @handle_errors
    def Unload(self, request, context):
        return pb.UnloadResponse(bytes_freed=self.registry.unload(model_ref(request.model)))

    @handle_errors
    def DescribeModel(self, request, context):
        return model_info(self.registry.get(model_ref(request)))

    @handle_errors
    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[model_info(m) for m in self.registry.list()])

    @handle_errors
    def GetDeviceStatus(self, request, context):
        snap = self.registry.snapshot()
        used = snap.used_by_kind
        free, total = self.registry.device.memory_info() or (0, 0)
        return pb.DeviceStatus(
            hardware_free=free, hardware_total=total,
            device=snap.device, kind=snap.kind, capacity=snap.capacity, used=snap.used,
            used_by_kind=pb.UsedBytes(weights=used["weights"], workspace=used["workspace"], io=used["io"]),
            workspaces=[pb.WorkspaceInfo(name=ws.name, size=ws.size, model_ids=ws.model_ids, executions=ws.executions,
                                         max_concurrent=ws.max_concurrent, queued=ws.queued)
                        for ws in snap.workspaces],
            weight_blocks=[pb.WeightBlockInfo(digest=b.digest, size=b.size, refcount=len(b.model_ids),
                                              model_ids=b.model_ids) for b in snap.weight_blocks],
        )


def execute_response(request_id: str, result: ExecuteResult) -> pb.ExecuteResponse:
    # Filled in place: Tensors passed to the constructor are copied, and serialize ~20x slower.
    r = pb.ExecuteResponse(queue_us=result.queue_us, compute_us=result.compute_us, id=request_id)
    for o in result.outputs:
        t = r.outputs.add(name=o.name, dtype=tensors.dtype_to_pb(o.dtype), data=o.data)
        t.shape.extend(o.shape)
    return r


def error_response(request_id: str, err: MemserveError) -> pb.ExecuteResponse:
    return pb.ExecuteResponse(id=request_id, error=pb.Error(code=err.code.value[0], message=err.message,
                                                            acl_code=err.acl_code, reason=err.reason))


def read_upload(request_iterator: Iterator[pb.LoadRequest], context: grpc.ServicerContext,
                max_size: int) -> tuple[LoadOptions, bytes]:
    """Options from the first message, then the model bytes from the chunks."""
    options = None
    chunks: list[bytes] = []
    total = 0
    try:
        for msg in request_iterator:
            part = msg.WhichOneof("part")
            if part == "options":
                if options is not None or chunks:
                    raise InvalidArgument("load options must come once, in the first message")
                options = load_options(msg.options)
            elif part == "chunk":
                total += len(msg.chunk)
                if total > max_size:
                    raise ResourceExhausted(f"model is larger than the daemon's --max-model-size of {max_size} bytes")
                budget.charge(len(msg.chunk), "the model upload")  # staged in host memory until the load ends
                chunks.append(msg.chunk)
            budget.checkpoint()
    except grpc.RpcError:
        raise Cancelled("client cancelled the upload") from None
    if not context.is_active():
        raise Cancelled("client cancelled the upload")
    budget.charge(total, "the model upload")  # joined into one buffer, then the chunks are dropped
    data = b"".join(chunks)
    chunks.clear()
    budget.release(total)
    return options or LoadOptions(), data


def load_options(o: pb.LoadOptions) -> LoadOptions:
    """The options as the registry takes them; LoadOptions.check() bounds every number."""
    b = o.dynamic_batching
    shapes = {k: limits.check_shape(f"input_shapes[{k[:64]!r}]", v.dims) for k, v in o.input_shapes.items()}
    if len(o.input_values) > limits.MAX_INPUT_VALUES:
        raise InvalidArgument(f"at most {limits.MAX_INPUT_VALUES} input_values, got {len(o.input_values)}")
    values = {k: input_array(v, k, limits.MAX_VALUE_ELEMENTS).copy() for k, v in o.input_values.items()}
    return LoadOptions(name=o.name, workspace=o.workspace or "private", max_batch=o.max_batch,
                       input_shapes=shapes, instances=o.instances or 1, replace=o.replace,
                       batching=Batching(b.max_queue_delay_us, tuple(b.preferred_batch_sizes)) if b.enabled else None,
                       input_values=values)


def model_ref(ref: pb.ModelRef) -> ModelRef:
    which = ref.WhichOneof("ref")
    if which is None:
        raise InvalidArgument("name the model by id or by name")
    return getattr(ref, which)


def input_arrays(inputs) -> dict:
    return decode.named((t.name, input_array(t)) for t in inputs)


def input_array(t: pb.Tensor, name: str | None = None, max_elements: int | None = None):
    name = t.name if name is None else name
    try:
        dtype = tensors.dtype_from_pb(t.dtype)
    except ValueError:
        raise InputMismatch(f"input {name[:64]!r} has unknown data type code {t.dtype}") from None
    return decode.tensor(name, dtype, t.shape, raw=t.data, max_elements=max_elements)


def size_info(plan: Plan) -> pb.SizeInfo:
    return pb.SizeInfo(work_size=plan.work_size, weight_size=plan.weight_size,
                       work_lower_bound=plan.work_lower_bound)


def tensor_descs(specs: list[IOSpec]) -> list[pb.TensorDesc]:
    return [pb.TensorDesc(name=s.name, dtype=tensors.dtype_to_pb(s.dtype), shape=s.shape, max_shape=s.max_shape)
            for s in specs]


def model_info(m: LoadedModel) -> pb.ModelInfo:
    return pb.ModelInfo(id=m.id, name=m.name, sizes=size_info(m.plan), inputs=tensor_descs(m.plan.inputs),
                        outputs=tensor_descs(m.plan.outputs), workspace=m.workspace.name,
                        max_batch=m.plan.max_batch, weight_digest=m.plan.weight_digest,
                        workspaces=[ws.name for ws in m.workspaces], dynamic_batching=batching_info(m))


def batching_info(m: LoadedModel) -> pb.DynamicBatching | None:
    b = m.options.batching
    return None if b is None else pb.DynamicBatching(enabled=True, max_queue_delay_us=b.max_queue_delay_us,
                                                     preferred_batch_sizes=b.preferred_batch_sizes)
