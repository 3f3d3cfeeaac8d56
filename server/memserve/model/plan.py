"""The compiled form of a model: tensors with their storage, steps, sizes.

A plan is planned once, at the maximum batch. Smaller batches reuse its
offsets: `infos_at(n)` re-derives every shape for batch n (pure arithmetic,
cached per n) and checks that each tensor still fits the bytes planned for it.
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


@dataclass(frozen=True)
class IOSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 marks the batch dimension
    slot: int


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
    staged_weights: dict[int, np.ndarray] | None = None  # host copies until the load uploads them
    _infos: dict[int, list[TensorInfo]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def release_staging(self) -> None:
        self.staged_weights = None

    def input_infos(self, batch: int) -> list[TensorInfo]:
        return [
            TensorInfo(spec.dtype, tuple(batch if d == -1 else d for d in spec.shape))
            for spec in self.inputs
        ]

    def infos_at(self, batch: int) -> list[TensorInfo]:
        """Every slot's dtype and shape when the request carries `batch` rows."""
        infos = self._infos.get(batch)
        if infos is None:
            try:
                infos = infer_all(self, self.input_infos(batch))
            except MemserveError:
                raise
            except Exception as exc:  # noqa: BLE001 - the model's shape functions at this batch size
                raise InvalidArgument(f"this model cannot run batch {batch}: {type(exc).__name__}: {exc}") from None
            self._check_fits(infos, batch)
            with self._lock:
                self._infos[batch] = infos
        return infos

    def _check_fits(self, infos: list[TensorInfo], batch: int) -> None:
        for slot, info in zip(self.tensors, infos):
            if info.nbytes > slot.info.nbytes:
                raise InvalidArgument(
                    f"tensor {slot.name!r} grows to {info.shape} at batch {batch}, past its planned "
                    f"{slot.info.shape}; this model cannot run batch {batch}"
                )

    def batch_of(self, arrays: dict[str, np.ndarray]) -> int:
        """Validate request inputs against the model; return their batch size."""
        if len(arrays) != len(self.inputs):
            self._mismatch(arrays)
        batch = None
        for spec in self.inputs:
            a = arrays.get(spec.name)
            if a is None:
                self._mismatch(arrays)
            batch = _check_input(spec, a, self.max_batch, batch)
        return batch or 0

    def _mismatch(self, arrays: dict[str, np.ndarray]) -> None:
        unknown = sorted(set(arrays) - {s.name for s in self.inputs})
        missing = [s.name for s in self.inputs if s.name not in arrays]
        if unknown or missing:
            raise InputMismatch(
                f"inputs do not match the model: expected {[s.name for s in self.inputs]}"
                + (f", missing {missing}" if missing else "")
                + (f", unknown {unknown}" if unknown else "")
            )


def _check_input(spec: IOSpec, a: np.ndarray, max_batch: int, batch: int | None) -> int | None:
    if a.dtype != spec.dtype:
        raise InputMismatch(f"input {spec.name!r} must be {spec.dtype}, got {a.dtype}")
    n = None
    if len(a.shape) == len(spec.shape):
        for d, s in zip(spec.shape, a.shape):
            if d != s:
                if d != -1:
                    break
                n = s  # the batch dimension: dimensions are never -1
        else:
            if n is None:
                return batch
            if not 1 <= n <= max_batch:
                raise InputMismatch(f"input {spec.name!r} has batch {n}; this model was loaded for 1 to {max_batch}")
            if batch is not None and n != batch:
                raise InputMismatch(f"inputs disagree on the batch size: {batch} and {n}")
            return n
    raise InputMismatch(f"input {spec.name!r} must have shape {list(spec.shape)} (-1: batch), got {list(a.shape)}")


def infer_all(plan: Plan, input_infos: list[TensorInfo]) -> list[TensorInfo]:
    """Propagate dtypes, shapes and BIND values through the steps, from the given inputs."""
    infos: list[TensorInfo | None] = [s.info if s.storage in (WEIGHT, VALUE) else None for s in plan.tensors]
    for spec, info in zip(plan.inputs, input_infos):
        infos[spec.slot] = info
    for step in plan.steps:
        run_infer(step, infos)
    return infos


def run_infer(step: Step, infos: list[TensorInfo | None]) -> None:
    ins = [infos[i] if i >= 0 else None for i in step.inputs]
    outs = step.op.infer(step.node, ins)
    if step.phase == BIND:
        outs = [TensorInfo(o.dtype, o.shape, v) for o, v in zip(outs, evaluate(step.op, step.node, ins, outs))]
    for i, info in zip(step.outputs, outs):
        infos[i] = info
    if step.scratch:
        for i, info in zip(step.scratch, step.op.scratch(step.node, ins, outs)):
            infos[i] = info
