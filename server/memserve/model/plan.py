"""The compiled form of a model: tensors with their storage, steps, sizes.

A plan is planned once, with every open input dimension at its maximum: the
batch (up to max_batch) and any other dimension the model leaves open (a
sequence length, an image side: up to what input_shapes gave). A request is
keyed by its open dimensions' sizes, `key_of(arrays)` = (batch, d1, ...,
dS), checked against their maxima and, where two inputs share a dimension's
name (ids and mask both "seq"), against each other. Smaller requests reuse
the plan's offsets: `infos_at(key)` re-derives every shape for that key (pure
arithmetic, a bounded cache) and checks that each tensor still fits the bytes
planned for it, so no request can write past its planned bytes whatever
shape the model's arithmetic gives it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputMismatch, InvalidArgument, MemserveError
from ..kernels import Node, OpDef, TensorInfo, evaluate

# Where a tensor's bytes live. An alias lives where its root lives. A VALUE
# is small, derived from shapes, and recomputed per batch size at bind time.
INPUT, WEIGHT, WORK, IO, VALUE = "input", "weight", "work", "io", "value"
# When a step runs: BIND steps compute VALUEs once per batch size, RUN steps per request.
BIND, RUN = "bind", "run"


@dataclass
class TensorSlot:
    name: str
    info: TensorInfo  # at the maximum batch
    storage: str  # of the root; see `root`
    root: int  # index of the slot that owns the bytes (itself unless an alias)
    offset: int = -1  # in the workspace (WORK) or the weight block (WEIGHT)


@dataclass
class Step:
    node: Node
    op: OpDef
    inputs: list[int]  # slot indices; -1 for an omitted optional input
    outputs: list[int]
    scratch: list[int] = field(default_factory=list)
    phase: str = RUN
    guard: list[tuple[int, bool]] = field(default_factory=list)  # (condition slot, wanted): runs when all hold

    def reads(self) -> list[int]:
        """The slots this step reads: its inputs and its guard's conditions."""
        return [i for i in self.inputs if i >= 0] + [c for c, _ in self.guard]


FIXED, BATCH = -1, 0  # IOSpec.symbols: a fixed dimension, the batch; k >= 1 is the open dimension Plan.dims[k - 1]
MAX_SHAPE_KEYS = 64  # request shapes whose infos a plan keeps; a client cycling through more costs only CPU


@dataclass(frozen=True)
class IOSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 marks an open dimension (the batch or another)
    slot: int
    max_shape: tuple[int, ...] = ()  # each dimension's largest size: the planned shape
    symbols: tuple[int, ...] = ()  # per dimension: FIXED, BATCH or k, its position in the request's key
    param: bool = False  # feeds parameters and was planned with a value (input_values): its value is keyed


@dataclass(frozen=True)
class OpenDim:
    """An open input dimension other than the batch."""

    name: str  # the model's name for it (dim_param), else "input[axis]"
    max: int


@dataclass(frozen=True)
class Placement:
    """Where and when a work tensor lives: the picture `memserve plan` draws."""

    name: str
    offset: int
    nbytes: int
    first: int  # first and last execution step (RUN steps, counted from 0)
    last: int


@dataclass
class Plan:
    tensors: list[TensorSlot]
    steps: list[Step]
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    max_batch: int  # 0: the model has no batch dimension
    work_size: int
    work_lower_bound: int
    peak_step: int
    weight_size: int
    weight_digest: str
    weight_slots: list[int]  # WEIGHT roots, in layout order
    placements: list[Placement] = field(default_factory=list)
    dims: list[OpenDim] = field(default_factory=list)  # open dimensions but the batch: key positions 1..
    param_values: list[tuple] = field(default_factory=list)  # planned values of the param inputs, then in the key
    staged_weights: dict[int, np.ndarray] | None = None  # host copies until the load uploads them
    _infos: dict[int, list[TensorInfo]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def release_staging(self) -> None:
        self.staged_weights = None

    def input_infos(self, key: tuple) -> list[TensorInfo]:
        infos, at = [], 1 + len(self.dims)
        for spec in self.inputs:
            shape = tuple(d if s == FIXED else key[s] for d, s in zip(spec.max_shape, spec.symbols))
            value = None
            if spec.param:
                value, at = np.array(key[at], spec.dtype).reshape(shape), at + 1
            infos.append(TensorInfo(spec.dtype, shape, value))
        return infos

    def max_key(self) -> tuple:
        return (self.max_batch,) + tuple(d.max for d in self.dims) + tuple(self.param_values)

    def describe_key(self, key: tuple) -> str:
        parts = [f"batch {key[0]}"] if self.max_batch else []
        parts += [f"{d.name} {n}" for d, n in zip(self.dims, key[1:])]
        params = [s.name for s in self.inputs if s.param]
        parts += [f"{name} = {list(v)}"[:80] for name, v in zip(params, key[1 + len(self.dims):])]
        return ", ".join(parts) or "its fixed shapes"

    def infos_at(self, key: tuple[int, ...]) -> list[TensorInfo]:
        """Every slot's dtype and shape for a request of this key (key_of)."""
        infos = self._infos.get(key)
        if infos is None:
            try:
                infos = infer_all(self, self.input_infos(key), self, key)
            except MemserveError:
                raise
            except Exception as exc:  # noqa: BLE001 - the model's shape functions at these sizes
                raise InvalidArgument(f"this model cannot run {self.describe_key(key)}: "
                                      f"{type(exc).__name__}: {exc}") from None
            self._check_fits(infos, key)
            with self._lock:
                if len(self._infos) >= MAX_SHAPE_KEYS:
                    self._infos.pop(next(iter(self._infos)))
                self._infos[key] = infos
        return infos

    def _check_fits(self, infos: list[TensorInfo], key: tuple[int, ...]) -> None:
        for slot, info in zip(self.tensors, infos):
            if info.nbytes > slot.info.nbytes:
                self.outgrown(slot, info, key)

    def outgrown(self, slot: TensorSlot, info: TensorInfo, key: tuple) -> None:
        where = self.describe_key(key)
        raise InvalidArgument(
            f"tensor {slot.name!r} grows to {info.shape} at {where}, past its planned {slot.info.shape}; this "
            f"model cannot run {where}: load it with larger max_batch, input_shapes or input_values")

    def key_of(self, arrays: dict[str, np.ndarray]) -> tuple[int, ...]:
        """Validate request inputs against the model; return the sizes of its open dimensions,
        (batch, d1, ..., dS), the batch 0 for a model without one."""
        if len(arrays) != len(self.inputs):
            self._mismatch(arrays)
        key: list = [0] * (1 + len(self.dims))
        for spec in self.inputs:
            a = arrays.get(spec.name)
            if a is None:
                self._mismatch(arrays)
            _check_input(self, spec, a, key)
            if spec.param:  # small by construction: its shape is fixed, and at most MAX_VALUE_ELEMENTS
                key.append(tuple(a.reshape(-1).tolist()))
        return tuple(key)

    def batch_of(self, arrays: dict[str, np.ndarray]) -> int:
        return self.key_of(arrays)[0]

    def _mismatch(self, arrays: dict[str, np.ndarray]) -> None:
        unknown = sorted(set(arrays) - {s.name for s in self.inputs})
        missing = [s.name for s in self.inputs if s.name not in arrays]
        if unknown or missing:
            raise InputMismatch(
                f"inputs do not match the model: expected {[s.name for s in self.inputs]}"
                + (f", missing {missing}" if missing else "")
                + (f", unknown {unknown}" if unknown else "")
            )


def _check_input(plan: Plan, spec: IOSpec, a: np.ndarray, key: list[int]) -> None:
    if a.dtype != spec.dtype:
        raise InputMismatch(f"input {spec.name!r} must be {spec.dtype}, got {a.dtype}")
    if len(a.shape) != len(spec.shape):
        _wrong_shape(spec, a)
    for axis, (d, s, n) in enumerate(zip(spec.shape, spec.symbols, a.shape)):
        if s == FIXED:
            if n != d:
                _wrong_shape(spec, a)
            continue
        top = spec.max_shape[axis]
        if not 1 <= n <= top:
            if s == BATCH:
                raise InputMismatch(f"input {spec.name!r} has batch {n}; this model was loaded for 1 to {top}")
            raise InputMismatch(f"input {spec.name!r} dimension {axis} ({plan.dims[s - 1].name}) is {n}; this model "
                                f"was loaded for 1 to {top}: load it with a larger input_shapes to raise that")
        if key[s] != n:
            if key[s]:
                what = "the batch size" if s == BATCH else repr(plan.dims[s - 1].name)
                raise InputMismatch(f"inputs disagree on {what}: {key[s]} and {n}")
            key[s] = n


def _wrong_shape(spec: IOSpec, a: np.ndarray) -> None:
    raise InputMismatch(f"input {spec.name!r} must have shape {list(spec.shape)} (-1: open, up to "
                        f"{list(spec.max_shape)}), got {list(a.shape)}")


def infer_all(plan: Plan, input_infos: list[TensorInfo], bounded: Plan | None = None,
              key: tuple = ()) -> list[TensorInfo]:
    """Propagate dtypes, shapes and BIND values through the steps, from the given inputs. `bounded`: a
    value computed on the way (BIND) may not outgrow its planned bytes: checked before it is computed, so
    a request's parameter values cannot make the host allocate more than the plan did."""
    infos: list[TensorInfo | None] = [s.info if s.storage in (WEIGHT, VALUE) else None for s in plan.tensors]
    for spec, info in zip(plan.inputs, input_infos):
        infos[spec.slot] = info
    for step in plan.steps:
        run_infer(step, infos, bounded, key)
    return infos


def run_infer(step: Step, infos: list[TensorInfo | None], bounded: Plan | None = None, key: tuple = ()) -> None:
    ins = [infos[i] if i >= 0 else None for i in step.inputs]
    outs = step.op.infer(step.node, ins)
    if step.phase == BIND and bounded is not None:
        for i, o in zip(step.outputs, outs):
            if o.nbytes > bounded.tensors[i].info.nbytes:
                bounded.outgrown(bounded.tensors[i], o, key)
    if step.phase == BIND:
        outs = [TensorInfo(o.dtype, o.shape, v) for o, v in zip(outs, evaluate(step.op, step.node, ins, outs))]
    for i, info in zip(step.outputs, outs):
        infos[i] = info
    if step.scratch:
        for i, info in zip(step.scratch, step.op.scratch(step.node, ins, outs)):
            infos[i] = info
