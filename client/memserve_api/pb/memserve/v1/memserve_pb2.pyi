from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    FLOAT32: _ClassVar[DataType]
    FLOAT16: _ClassVar[DataType]
    FLOAT64: _ClassVar[DataType]
    INT8: _ClassVar[DataType]
    INT16: _ClassVar[DataType]
    INT32: _ClassVar[DataType]
    INT64: _ClassVar[DataType]
    UINT8: _ClassVar[DataType]
    UINT16: _ClassVar[DataType]
    UINT32: _ClassVar[DataType]
    UINT64: _ClassVar[DataType]
    BOOL: _ClassVar[DataType]
    BFLOAT16: _ClassVar[DataType]
    FLOAT8E4M3FN: _ClassVar[DataType]
    FLOAT8E4M3FNUZ: _ClassVar[DataType]
    FLOAT8E5M2: _ClassVar[DataType]
    FLOAT8E5M2FNUZ: _ClassVar[DataType]
    FLOAT8E8M0: _ClassVar[DataType]
    FLOAT4E2M1: _ClassVar[DataType]
    INT4: _ClassVar[DataType]
    UINT4: _ClassVar[DataType]
    INT2: _ClassVar[DataType]
    UINT2: _ClassVar[DataType]
DATA_TYPE_UNSPECIFIED: DataType
FLOAT32: DataType
FLOAT16: DataType
FLOAT64: DataType
INT8: DataType
INT16: DataType
INT32: DataType
INT64: DataType
UINT8: DataType
UINT16: DataType
UINT32: DataType
UINT64: DataType
BOOL: DataType
BFLOAT16: DataType
FLOAT8E4M3FN: DataType
FLOAT8E4M3FNUZ: DataType
FLOAT8E5M2: DataType
FLOAT8E5M2FNUZ: DataType
FLOAT8E8M0: DataType
FLOAT4E2M1: DataType
INT4: DataType
UINT4: DataType
INT2: DataType
UINT2: DataType

class Shape(_message.Message):
    __slots__ = ("dims",)
    DIMS_FIELD_NUMBER: _ClassVar[int]
    dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dims: _Optional[_Iterable[int]] = ...) -> None: ...

class LoadOptions(_message.Message):
    __slots__ = ("name", "workspace", "max_batch", "input_shapes", "instances", "replace", "dynamic_batching", "input_values")
    class InputShapesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Shape
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Shape, _Mapping]] = ...) -> None: ...
    class InputValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPES_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCHING_FIELD_NUMBER: _ClassVar[int]
    INPUT_VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    workspace: str
    max_batch: int
    input_shapes: _containers.MessageMap[str, Shape]
    instances: int
    replace: bool
    dynamic_batching: DynamicBatching
    input_values: _containers.MessageMap[str, Tensor]
    def __init__(self, name: _Optional[str] = ..., workspace: _Optional[str] = ..., max_batch: _Optional[int] = ..., input_shapes: _Optional[_Mapping[str, Shape]] = ..., instances: _Optional[int] = ..., replace: _Optional[bool] = ..., dynamic_batching: _Optional[_Union[DynamicBatching, _Mapping]] = ..., input_values: _Optional[_Mapping[str, Tensor]] = ...) -> None: ...

class DynamicBatching(_message.Message):
    __slots__ = ("enabled", "max_queue_delay_us", "preferred_batch_sizes")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    max_queue_delay_us: int
    preferred_batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, enabled: _Optional[bool] = ..., max_queue_delay_us: _Optional[int] = ..., preferred_batch_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("options", "chunk")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    options: LoadOptions
    chunk: bytes
    def __init__(self, options: _Optional[_Union[LoadOptions, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class SizeInfo(_message.Message):
    __slots__ = ("work_size", "weight_size", "work_lower_bound")
    WORK_SIZE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_SIZE_FIELD_NUMBER: _ClassVar[int]
    WORK_LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    work_size: int
    weight_size: int
    work_lower_bound: int
    def __init__(self, work_size: _Optional[int] = ..., weight_size: _Optional[int] = ..., work_lower_bound: _Optional[int] = ...) -> None: ...

class TensorDesc(_message.Message):
    __slots__ = ("name", "dtype", "shape", "max_shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    MAX_SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    max_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., max_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("id", "name", "sizes", "inputs", "outputs", "workspace", "max_batch", "weight_digest", "workspaces", "dynamic_batching")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    WORKSPACES_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCHING_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    sizes: SizeInfo
    inputs: _containers.RepeatedCompositeFieldContainer[TensorDesc]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorDesc]
    workspace: str
    max_batch: int
    weight_digest: str
    workspaces: _containers.RepeatedScalarFieldContainer[str]
    dynamic_batching: DynamicBatching
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., sizes: _Optional[_Union[SizeInfo, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[TensorDesc, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorDesc, _Mapping]]] = ..., workspace: _Optional[str] = ..., max_batch: _Optional[int] = ..., weight_digest: _Optional[str] = ..., workspaces: _Optional[_Iterable[str]] = ..., dynamic_batching: _Optional[_Union[DynamicBatching, _Mapping]] = ...) -> None: ...

class LoadResponse(_message.Message):
    __slots__ = ("model", "load_time_us", "weights_shared", "note")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIME_US_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHARED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    load_time_us: int
    weights_shared: bool
    note: str
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., load_time_us: _Optional[int] = ..., weights_shared: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...

class QuerySizeResponse(_message.Message):
    __slots__ = ("sizes", "inputs", "outputs", "placements", "peak_step", "steps")
    SIZES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENTS_FIELD_NUMBER: _ClassVar[int]
    PEAK_STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    sizes: SizeInfo
    inputs: _containers.RepeatedCompositeFieldContainer[TensorDesc]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorDesc]
    placements: _containers.RepeatedCompositeFieldContainer[Placement]
    peak_step: int
    steps: int
    def __init__(self, sizes: _Optional[_Union[SizeInfo, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[TensorDesc, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorDesc, _Mapping]]] = ..., placements: _Optional[_Iterable[_Union[Placement, _Mapping]]] = ..., peak_step: _Optional[int] = ..., steps: _Optional[int] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("name", "offset", "size", "first_step", "last_step")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    size: int
    first_step: int
    last_step: int
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ..., first_step: _Optional[int] = ..., last_step: _Optional[int] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("model", "inputs", "priority", "timeout_us", "id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_US_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    priority: int
    timeout_us: int
    id: str
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., priority: _Optional[int] = ..., timeout_us: _Optional[int] = ..., id: _Optional[str] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("outputs", "queue_us", "compute_us", "id", "error")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_US_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_US_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    queue_us: int
    compute_us: int
    id: str
    error: Error
    def __init__(self, outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., queue_us: _Optional[int] = ..., compute_us: _Optional[int] = ..., id: _Optional[str] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "acl_code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACL_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    acl_code: int
    reason: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., acl_code: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class UnloadRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class UnloadResponse(_message.Message):
    __slots__ = ("bytes_freed",)
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    bytes_freed: int
    def __init__(self, bytes_freed: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetDeviceStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UsedBytes(_message.Message):
    __slots__ = ("weights", "workspace", "io")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    IO_FIELD_NUMBER: _ClassVar[int]
    weights: int
    workspace: int
    io: int
    def __init__(self, weights: _Optional[int] = ..., workspace: _Optional[int] = ..., io: _Optional[int] = ...) -> None: ...

class WorkspaceInfo(_message.Message):
    __slots__ = ("name", "size", "model_ids", "executions", "max_concurrent", "queued")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    model_ids: _containers.RepeatedScalarFieldContainer[int]
    executions: int
    max_concurrent: int
    queued: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., model_ids: _Optional[_Iterable[int]] = ..., executions: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...

class WeightBlockInfo(_message.Message):
    __slots__ = ("digest", "size", "refcount", "model_ids")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REFCOUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    refcount: int
    model_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., refcount: _Optional[int] = ..., model_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeviceStatus(_message.Message):
    __slots__ = ("device", "kind", "capacity", "used", "used_by_kind", "workspaces", "weight_blocks", "hardware_free", "hardware_total")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    USED_BY_KIND_FIELD_NUMBER: _ClassVar[int]
    WORKSPACES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FREE_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    device: str
    kind: str
    capacity: int
    used: int
    used_by_kind: UsedBytes
    workspaces: _containers.RepeatedCompositeFieldContainer[WorkspaceInfo]
    weight_blocks: _containers.RepeatedCompositeFieldContainer[WeightBlockInfo]
    hardware_free: int
    hardware_total: int
    def __init__(self, device: _Optional[str] = ..., kind: _Optional[str] = ..., capacity: _Optional[int] = ..., used: _Optional[int] = ..., used_by_kind: _Optional[_Union[UsedBytes, _Mapping]] = ..., workspaces: _Optional[_Iterable[_Union[WorkspaceInfo, _Mapping]]] = ..., weight_blocks: _Optional[_Iterable[_Union[WeightBlockInfo, _Mapping]]] = ..., hardware_free: _Optional[int] = ..., hardware_total: _Optional[int] = ...) -> None: ...
