"""What the daemon holds, as plain values: the one read that status RPCs and metrics make.

Readers (GetDeviceStatus, the Prometheus collector) take a Snapshot from the
registry instead of reaching into the device, pool, weight store and
scheduler, so that the way those keep their state can change without them.
Each part is read under its owner's lock; a load or unload running at the
same time may show in one part and not yet in another.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .stats import ModelStats


@dataclass(frozen=True)
class WorkspaceState:
    name: str
    size: int  # bytes of its buffer now
    model_ids: tuple[int, ...]
    executions: int
    max_concurrent: int  # the I1 probe: never above 1
    queued: int  # requests waiting on its lane


@dataclass(frozen=True)
class WeightBlockState:
    digest: str
    size: int
    model_ids: tuple[int, ...]


@dataclass(frozen=True)
class ModelState:
    id: int
    name: str
    weight_size: int
    work_size: int  # planned, per instance
    instances: int
    stats: ModelStats = field(compare=False, repr=False)  # its live counters: read them with stats.snapshot()


@dataclass(frozen=True)
class Snapshot:
    device: str
    kind: str
    capacity: int
    used_by_kind: dict[str, int]
    models: tuple[ModelState, ...]
    workspaces: tuple[WorkspaceState, ...]
    weight_blocks: tuple[WeightBlockState, ...]

    @property
    def used(self) -> int:
        return sum(self.used_by_kind.values())
