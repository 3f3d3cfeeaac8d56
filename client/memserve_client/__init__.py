"""Client library for memserve: `Client`, its result types and `MemserveError`."""
from .client import (Client, DeviceStatus, ExecuteResult, MemserveError, Model, SizeInfo, TensorSpec,
                     WeightBlockStatus, WorkspaceStatus)

__all__ = ["Client", "DeviceStatus", "ExecuteResult", "MemserveError", "Model", "SizeInfo", "TensorSpec",
           "WeightBlockStatus", "WorkspaceStatus"]
