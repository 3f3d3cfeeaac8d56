"""The Open Inference Protocol (KServe v2), protocol-neutral: what its gRPC servicer (kserve.py) and its
HTTP/REST server (rest.py) share.

Datatypes, the metadata, configuration, statistics and repository index of models (as the protocol's
messages; REST sends them as JSON with `as_json`), model lookup by name and version, the most elements a
model takes for an input (checked before typed values are decoded), Triton's priority and the
model-repository load (a Triton config plus one ONNX file, or a name from --model-repository).
"""
from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from memserve_api.pb.inference import grpc_service_pb2 as pb
from memserve_api.pb.inference import model_config_pb2 as mc

from .. import __version__, budget, limits
from ..errors import InputMismatch, InvalidArgument, NotFound, UnsupportedModel
from ..registry import Batching, LoadedModel, LoadOptions, Registry
from . import decode

VERSION = "1"
PLATFORM = "memserve_onnx"
EXTENSIONS = ["model_repository", "model_configuration", "statistics", "schedule_policy"]
SERVER_NAME = "memserve"

# datatype string <-> numpy, and which typed-contents field carries it
DATATYPES = {"BOOL": ("?", "bool_contents"), "UINT8": ("u1", "uint_contents"), "UINT16": ("<u2", "uint_contents"),
             "UINT32": ("<u4", "uint_contents"), "UINT64": ("<u8", "uint64_contents"), "INT8": ("i1", "int_contents"),
             "INT16": ("<i2", "int_contents"), "INT32": ("<i4", "int_contents"), "INT64": ("<i8", "int64_contents"),
             "FP16": ("<f2", None), "FP32": ("<f4", "fp32_contents"), "FP64": ("<f8", "fp64_contents"),
             "BF16": (ml_dtypes.bfloat16, None)}
BY_DTYPE = {np.dtype(code).name: name for name, (code, _) in DATATYPES.items()}
CONFIG_TYPES = {name: getattr(mc, f"TYPE_{name}") for name in DATATYPES}
MAX_PRIORITY = 2**63 - 1  # Triton's priority is a uint64; memserve caps the level it maps to (priority_level)


def datatype(dtype: np.dtype) -> str:
    """The protocol's name for a dtype; the narrow types it has no name for (float8, int4, ...) are shown by
    their ONNX names, and requests cannot send them (dtype_of)."""
    name = np.dtype(dtype).name
    return BY_DTYPE.get(name) or name.upper().replace("_", "")


def dtype_of(name: str, datatype_: str) -> np.dtype:
    """The numpy dtype of a v2 datatype; an unknown one is INVALID_ARGUMENT naming the input."""
    if datatype_ not in DATATYPES:
        raise InvalidArgument(f"input {name[:64]!r}: datatype {str(datatype_)[:32]!r} is not supported; use one of "
                              f"{sorted(DATATYPES)}")
    return np.dtype(DATATYPES[datatype_][0])


def most(model: LoadedModel, specs: dict, name: str, datatype_: str) -> int:
    """The most elements the model takes for input `name`; its name and datatype are checked first, all before
    its values are decoded (typed contents cost far more to decode than to send)."""
    spec = specs.get(name)
    if spec is None:
        raise InputMismatch(f"model {model.name!r} has no input {name[:64]!r}; its inputs are {sorted(specs)}")
    if datatype_ in DATATYPES and np.dtype(DATATYPES[datatype_][0]) != spec.dtype:
        raise InputMismatch(f"input {name[:64]!r} must be {datatype(spec.dtype)}, got {datatype_[:32]}")
    return math.prod(spec.max_shape)


def _most(model: LoadedModel, specs: dict, t) -> int:
    """most() of a tensor message (anything with `name` and `datatype`)."""
    return most(model, specs, t.name, t.datatype)


def decode_tensor(t, raw: bytes | None, most: int | None = None) -> np.ndarray:
    """A ModelInferRequest input tensor `t`, from its raw bytes or its typed contents."""
    dtype = dtype_of(t.name, t.datatype)
    if raw is not None:
        return decode.tensor(t.name, dtype, t.shape, raw=raw, max_elements=most)
    field = DATATYPES[t.datatype][1]
    if field is None:
        raise InvalidArgument(f"input {t.name[:64]!r}: {t.datatype} travels only as raw_input_contents")
    return decode.tensor(t.name, dtype, t.shape, values=getattr(t.contents, field), max_elements=most)


def priority_level(priority: int) -> int:
    """Triton's priority: 0 is the default, 1 the highest; memserve's levels are 0 (highest) to 7."""
    return min(max(priority - 1, 0), 7)


def int_parameter(name: str, value: int, high: int) -> int:
    """An integer request parameter's value, within 0..high."""
    return limits.check_range(f"parameter {name!r}", value, 0, high)


def _int_parameter(request: pb.ModelInferRequest, name: str, high: int) -> int:
    """An integer request parameter (int64 or uint64, as clients send either), within 0..high."""
    p = request.parameters.get(name)
    if p is None:
        return 0
    which = p.WhichOneof("parameter_choice")
    if which not in ("int64_param", "uint64_param"):
        raise InvalidArgument(f"parameter {name!r} must be an integer, got {which or 'nothing'}")
    return int_parameter(name, getattr(p, which), high)


# -- models: lookup, metadata, configuration, statistics ------------------------------------------

def model(registry: Registry, name: str, version: str) -> LoadedModel:
    """A loaded model by name; every model has one version, "1" ("" means the latest)."""
    if version not in ("", VERSION):
        raise NotFound(f"model {name[:256]!r} has only version {VERSION}, not {version[:32]!r}")
    return registry.get(name)


def server_metadata() -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


def model_metadata(m: LoadedModel) -> pb.ModelMetadataResponse:
    meta = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=m.name, versions=[VERSION], platform=PLATFORM,
        inputs=[meta(name=s.name, datatype=datatype(s.dtype), shape=s.shape) for s in m.plan.inputs],
        outputs=[meta(name=s.name, datatype=datatype(s.dtype), shape=s.shape) for s in m.plan.outputs])


INSTANCE_KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "cuda": mc.ModelInstanceGroup.KIND_GPU}


def config_type(dtype: np.dtype) -> int:
    """Triton's config type of a dtype; TYPE_INVALID for the narrow ones it has no name for (float8, int4)."""
    return CONFIG_TYPES.get(datatype(dtype), mc.TYPE_INVALID)


def model_config(m: LoadedModel, device_kind: str = "cpu") -> mc.ModelConfig:
    batched = m.plan.max_batch > 0
    dims = (lambda shape: shape[1:]) if batched else (lambda shape: shape)
    config = mc.ModelConfig(
        name=m.name, platform=PLATFORM, backend="memserve", max_batch_size=m.plan.max_batch,
        input=[mc.ModelInput(name=s.name, data_type=config_type(s.dtype), dims=dims(s.shape)) for s in m.plan.inputs],
        output=[mc.ModelOutput(name=s.name, data_type=config_type(s.dtype), dims=dims(s.shape))
                for s in m.plan.outputs],
        instance_group=[mc.ModelInstanceGroup(count=len(m.workspaces), kind=INSTANCE_KINDS.get(
            device_kind, mc.ModelInstanceGroup.KIND_CPU))],
        parameters={"workspace": mc.ModelParameter(string_value=m.workspace.name),
                    "work_size": mc.ModelParameter(string_value=str(m.plan.work_size)),
                    "weight_size": mc.ModelParameter(string_value=str(m.plan.weight_size))},
    )
    b = m.options.batching
    if b is not None:
        config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(
            preferred_batch_size=b.preferred_batch_sizes, max_queue_delay_microseconds=b.max_queue_delay_us))
    return config


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


# -- the model repository ----------------------------------------------------------------------------

def repository_index(registry: Registry, repository, ready_only: bool) -> pb.RepositoryIndexResponse:
    """Every loaded model (READY), and unless `ready_only` every model of --model-repository not loaded now."""
    index = pb.RepositoryIndexResponse.ModelIndex
    loaded = {m.name: index(name=m.name, version=VERSION, state="READY") for m in registry.list()}
    if repository is not None and not ready_only:
        for name in repository.names():
            loaded.setdefault(name, index(name=name, version=VERSION, state="UNAVAILABLE", reason="unloaded"))
    return pb.RepositoryIndexResponse(models=[loaded[n] for n in sorted(loaded)])


def repository_load(registry: Registry, repository, name: str, config_json: str | None,
                    files: dict[str, bytes]) -> LoadedModel:
    """RepositoryModelLoad on either protocol: from one uploaded `file:<version>/<name>.onnx` and an optional
    Triton config in JSON, or by name from --model-repository. Runs inside the caller's load job."""
    budget.charge(sum(len(v) for v in files.values()), "the model upload")
    config = mc.ModelConfig()
    if config_json is not None:
        try:
            json_format.Parse(config_json, config, ignore_unknown_fields=True)
        except (json_format.ParseError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"parameter 'config' is not a model configuration in JSON: {exc}") from None
    if files:
        onnx_files = [v for k, v in sorted(files.items()) if k.endswith(".onnx")]
        if len(onnx_files) != 1:
            raise InvalidArgument(f"send exactly one ONNX file as 'file:<version>/<name>.onnx'; got "
                                  f"{sorted(files)[:8]}")
        data = onnx_files[0]
    elif repository is not None:
        data, stored = repository.read(name)
        if config_json is None and stored is not None:
            config = stored
    else:
        raise InvalidArgument("send the model as parameter 'file:1/model.onnx' (memserved has no "
                              "--model-repository to load it from)")
    return registry.load(data, load_options(name, config))


def load_options(name: str, config: mc.ModelConfig) -> LoadOptions:
    """Triton's model configuration as memserve load options (docs/kserve.md)."""
    max_batch = config.max_batch_size
    shapes = {}
    for i in config.input:
        dims = list(i.dims)
        if any(d < 0 for d in dims):
            raise UnsupportedModel(f"input {i.name!r} has variable dims {dims} in the config; give each dimension's "
                                   "largest size (memory is planned for it; requests may be smaller along the "
                                   "dimensions the model leaves open)")
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


# -- JSON ----------------------------------------------------------------------------------------------

_WIDE = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)


def as_json(message, defaults: bool = True) -> dict:
    """A message as Triton's REST API writes it: proto field names, enums by name, every field (with
    `defaults`), and 64-bit integers as JSON numbers (protobuf's own mapping writes them as strings)."""
    d = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=defaults)
    return _numbers(message.DESCRIPTOR, d)


def _numbers(descriptor, d: dict) -> dict:
    for key, value in d.items():
        field = descriptor.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                if value_field.message_type is not None:
                    for k, v in value.items():
                        value[k] = _numbers(value_field.message_type, v)
                elif value_field.cpp_type in _WIDE:
                    for k, v in value.items():
                        value[k] = int(v)
            elif isinstance(value, list):
                d[key] = [_numbers(field.message_type, v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                d[key] = _numbers(field.message_type, value)
        elif field.cpp_type in _WIDE:
            d[key] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return d
