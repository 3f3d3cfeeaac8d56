"""The Python client for memserve's native API."""
from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator, Mapping, Union

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from memserve_api import tensors
from .plan_view import Placement, PlanInfo
from memserve_api.pb.memserve.v1 import memserve_pb2 as pb
from memserve_api.pb.memserve.v1 import memserve_pb2_grpc as pb_grpc

_CODES = {code.value[0]: code.value for code in grpc.StatusCode}
CHUNK_SIZE = 512 << 10  # well under any sane --max-message-size
ModelSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]
Pem = Union[bytes, str, os.PathLike, None]  # PEM bytes, or a path to a PEM file
Progress = Callable[[int, int], None]  # (bytes sent, total bytes or 0 when unknown)


class MemserveError(Exception):
    """A failed call: the gRPC status code, its message and memserve's AscendCL-style code."""

    def __init__(self, code: grpc.StatusCode, message: str, acl_code: int | None = None, reason: str = ""):
        super().__init__(f"{code.name}: {message}" + (f" (code {acl_code})" if acl_code else ""))
        self.code = code
        self.message = message
        self.acl_code = acl_code
        self.reason = reason

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> MemserveError:
        acl_code, reason = None, ""
        status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
        for detail in status.details if status else []:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason = info.reason
                acl_code = int(info.metadata["acl_code"]) if "acl_code" in info.metadata else None
        return cls(err.code(), err.details() or "", acl_code, reason)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 marks an open dimension: the batch, or one the model leaves open
    max_shape: tuple[int, ...] = ()  # each dimension's largest size (empty from an older daemon)


@dataclass(frozen=True)
class SizeInfo:
    work_size: int
    weight_size: int
    work_lower_bound: int


@dataclass(frozen=True)
class Model:
    id: int
    name: str
    work_size: int
    weight_size: int
    work_lower_bound: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    workspace: str = ""
    max_batch: int = 0
    weight_digest: str = ""
    load_time_us: int = 0
    weights_shared: bool = False
    workspaces: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class WorkspaceStatus:
    name: str
    size: int
    model_ids: tuple[int, ...]
    executions: int
    max_concurrent: int
    queued: int


@dataclass(frozen=True)
class WeightBlockStatus:
    digest: str
    size: int
    refcount: int
    model_ids: tuple[int, ...]


@dataclass(frozen=True)
class DeviceStatus:
    device: str
    kind: str
    capacity: int
    used: int
    used_by_kind: dict[str, int] = field(default_factory=dict)
    workspaces: tuple[WorkspaceStatus, ...] = ()
    weight_blocks: tuple[WeightBlockStatus, ...] = ()
    hardware_free: int = 0  # what the hardware reports (a GPU); 0 when the device reports nothing (cpu)
    hardware_total: int = 0


@dataclass(frozen=True)
class ExecuteResult:
    outputs: dict[str, np.ndarray]
    queue_us: int
    compute_us: int


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor,
              grpc.UnaryStreamClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, d):
        return d._replace(metadata=list(d.metadata or []) + [self._header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


def _rpc(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as err:
            raise MemserveError.from_rpc(err) from None

    return wrapper


class Client:
    """`with Client("127.0.0.1:50051") as c: m = c.load("mlp.onnx"); c.execute(m, {"x": x})`."""

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: float | None = None,
                 max_message_size: int = 64 << 20, chunk_size: int = CHUNK_SIZE,
                 channel: grpc.Channel | None = None, token: str | None = None,
                 tls_ca: Pem = None, tls_cert: Pem = None, tls_key: Pem = None, tls: bool = False,
                 lb_policy: str | None = None):
        """token: the daemon's admin token; tls / tls_ca: a TLS channel (tls_ca: PEM roots, default the
        system's); tls_cert/tls_key: this client's certificate for mutual TLS (each PEM bytes or a path);
        lb_policy: gRPC's load-balancing policy over the addresses a target resolves to ("round_robin"
        spreads calls over every pod of a headless Service)."""
        self.timeout = timeout
        self.chunk_size = chunk_size
        options = [("grpc.max_receive_message_length", max_message_size),
                   ("grpc.max_send_message_length", max_message_size)]
        if lb_policy:
            options.append(("grpc.lb_policy_name", lb_policy))
        tls_ca, tls_cert, tls_key = _pem(tls_ca), _pem(tls_cert), _pem(tls_key)
        if channel is None and (tls or tls_ca or tls_cert):
            creds = grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert)
            channel = grpc.secure_channel(target, creds, options=options)
        self._channel = channel or grpc.insecure_channel(target, options=options)
        if token:
            self._channel = grpc.intercept_channel(self._channel, _Bearer(token))
        self._stub = pb_grpc.MemserveStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @_rpc
    def load(self, model: ModelSource, *, name: str | None = None, workspace: str = "private",
             max_batch: int | None = None, input_shapes: Mapping[str, tuple[int, ...]] | None = None,
             instances: int = 1, replace: bool = False, batching: bool = False, max_queue_delay_us: int = 0,
             preferred_batch_sizes: tuple[int, ...] = (), progress: Progress | None = None,
             input_values: Mapping[str, np.ndarray] | None = None) -> Model:
        """workspace: 'private', 'shared:<group>' or 'auto'; instances: private workspaces sharing
        one weight copy; replace: take over `name` from the model that has it, without failing
        requests; batching: merge queued requests into executions of up to max_batch rows;
        input_shapes: the largest size of each open input dimension; input_values: values to plan with
        for inputs that feed shape parameters (requests still send them)."""
        opts = _load_options(name, workspace, max_batch, input_shapes, input_values)
        opts.instances, opts.replace = instances, replace
        if batching or max_queue_delay_us or preferred_batch_sizes:
            opts.dynamic_batching.enabled = True
            opts.dynamic_batching.max_queue_delay_us = max_queue_delay_us
            opts.dynamic_batching.preferred_batch_sizes.extend(preferred_batch_sizes)
        r = self._stub.Load(_upload(opts, model, self.chunk_size, progress), timeout=self.timeout)
        return _model(r.model, load_time_us=r.load_time_us, weights_shared=r.weights_shared, note=r.note)

    @_rpc
    def query_size(self, model: ModelSource, *, max_batch: int | None = None,
                   input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                   input_values: Mapping[str, np.ndarray] | None = None) -> SizeInfo:
        opts = _load_options(None, "private", max_batch, input_shapes, input_values)
        r = self._stub.QuerySize(_upload(opts, model, self.chunk_size, None), timeout=self.timeout)
        return SizeInfo(r.sizes.work_size, r.sizes.weight_size, r.sizes.work_lower_bound)

    @_rpc
    def plan(self, model: ModelSource, *, max_batch: int | None = None,
             input_shapes: Mapping[str, tuple[int, ...]] | None = None,
             input_values: Mapping[str, np.ndarray] | None = None) -> PlanInfo:
        """QuerySize with the whole workspace plan: each work tensor's offset, size and lifetime."""
        opts = _load_options(None, "private", max_batch, input_shapes, input_values)
        r = self._stub.QuerySize(_upload(opts, model, self.chunk_size, None), timeout=self.timeout)
        return PlanInfo(r.sizes.work_size, r.sizes.weight_size, r.sizes.work_lower_bound, r.peak_step, r.steps,
                        tuple(Placement(t.name, t.offset, t.size, t.first_step, t.last_step) for t in r.placements))

    def execute(self, model: Model | int | str, inputs: Mapping[str, np.ndarray], *,
                timeout: float | None = None, priority: int = 0) -> dict[str, np.ndarray]:
        """timeout: seconds, as the gRPC deadline; priority: 0 (highest) to 7."""
        return self.execute_with_stats(model, inputs, timeout=timeout, priority=priority).outputs

    @_rpc
    def execute_with_stats(self, model: Model | int | str, inputs: Mapping[str, np.ndarray], *,
                           timeout: float | None = None, priority: int = 0) -> ExecuteResult:
        req = _execute_request("", model, inputs, priority)
        r = self._stub.Execute(req, timeout=timeout if timeout is not None else self.timeout)
        return ExecuteResult({t.name: tensors.from_proto(t) for t in r.outputs}, r.queue_us, r.compute_us)

    def execute_stream(self, requests: Iterable[tuple[str, Model | int | str, Mapping[str, np.ndarray]]], *,
                       priority: int = 0) -> Iterator[tuple[str, dict[str, np.ndarray] | MemserveError]]:
        """Pipeline many executions on one call: yields (id, outputs or error) as they finish."""
        def messages():
            for rid, model, inputs in requests:
                yield _execute_request(rid, model, inputs, priority)

        try:
            for r in self._stub.ExecuteStream(messages(), timeout=self.timeout):
                if r.HasField("error"):
                    yield r.id, MemserveError(grpc.StatusCode(_CODES[r.error.code]), r.error.message,
                                              r.error.acl_code or None, r.error.reason)
                else:
                    yield r.id, {t.name: tensors.from_proto(t) for t in r.outputs}
        except grpc.RpcError as err:
            raise MemserveError.from_rpc(err) from None

    @_rpc
    def unload(self, model: Model | int | str) -> int:
        """Unload; returns the device bytes freed."""
        return self._stub.Unload(pb.UnloadRequest(model=_ref(model)), timeout=self.timeout).bytes_freed

    @_rpc
    def describe(self, model: Model | int | str) -> Model:
        return _model(self._stub.DescribeModel(_ref(model), timeout=self.timeout))

    @_rpc
    def list_models(self) -> list[Model]:
        return [_model(m) for m in self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout).models]

    @_rpc
    def device_status(self) -> DeviceStatus:
        s = self._stub.GetDeviceStatus(pb.GetDeviceStatusRequest(), timeout=self.timeout)
        return DeviceStatus(
            s.device, s.kind, s.capacity, s.used,
            {"weights": s.used_by_kind.weights, "workspace": s.used_by_kind.workspace, "io": s.used_by_kind.io},
            tuple(WorkspaceStatus(w.name, w.size, tuple(w.model_ids), w.executions, w.max_concurrent, w.queued)
                  for w in s.workspaces),
            tuple(WeightBlockStatus(b.digest, b.size, b.refcount, tuple(b.model_ids)) for b in s.weight_blocks),
            s.hardware_free, s.hardware_total,
        )


def _load_options(name, workspace, max_batch, input_shapes, input_values=None) -> pb.LoadOptions:
    opts = pb.LoadOptions(name=name or "", workspace=workspace, max_batch=max_batch or 0,
                          input_shapes={k: pb.Shape(dims=list(v)) for k, v in (input_shapes or {}).items()})
    for k, v in (input_values or {}).items():
        tensors.fill(opts.input_values[k], k, np.asarray(v))
    return opts


def _pem(value: Pem) -> bytes | None:
    """PEM bytes as given, or read from a path (what users pass)."""
    if value is None or isinstance(value, (bytes, bytearray)):
        return value
    with open(value, "rb") as fh:
        return fh.read()


def _upload(opts: pb.LoadOptions, source: ModelSource, chunk: int, progress: Progress | None
            ) -> Iterator[pb.LoadRequest]:
    """Options first, then the model in chunks, read lazily so any size streams. A path is opened now,
    before any call: a missing file or a directory is the caller's OSError naming it, not a failed call."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        stream, total, owned = io.BytesIO(source), len(source), True
    elif isinstance(source, (str, os.PathLike)):
        stream = open(source, "rb")  # noqa: SIM115 - closed by the generator
        stream, total, owned = stream, os.fstat(stream.fileno()).st_size, True
    else:
        stream, total, owned = source, 0, False
    return _requests(opts, stream, total, owned, chunk, progress)


def _requests(opts: pb.LoadOptions, stream: BinaryIO, total: int, owned: bool, chunk: int,
              progress: Progress | None) -> Iterator[pb.LoadRequest]:
    yield pb.LoadRequest(options=opts)
    sent = 0
    try:
        while data := stream.read(chunk):
            yield pb.LoadRequest(chunk=data)
            sent += len(data)
            if progress:
                progress(sent, total)
    finally:
        if owned:
            stream.close()


def _ref(model: Model | int | str) -> pb.ModelRef:
    if isinstance(model, Model):
        return pb.ModelRef(id=model.id)
    if isinstance(model, (int, np.integer)) and not isinstance(model, bool):
        return pb.ModelRef(id=int(model))
    if isinstance(model, str):
        return pb.ModelRef(name=model)
    raise TypeError(f"a model is a Model, an id or a name, not {type(model).__name__}")


def _specs(descs) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(d.name, tensors.dtype_from_pb(d.dtype), tuple(d.shape), tuple(d.max_shape))
                 for d in descs)


def _model(m: pb.ModelInfo, **extra) -> Model:
    return Model(m.id, m.name, m.sizes.work_size, m.sizes.weight_size, m.sizes.work_lower_bound,
                 _specs(m.inputs), _specs(m.outputs), m.workspace, m.max_batch, m.weight_digest,
                 workspaces=tuple(m.workspaces), **extra)


def _execute_request(rid: str, model, inputs: Mapping[str, np.ndarray], priority: int) -> pb.ExecuteRequest:
    req = pb.ExecuteRequest(id=rid, model=_ref(model), priority=priority)
    for name, value in inputs.items():
        tensors.add(req.inputs, name, value)
    return req
