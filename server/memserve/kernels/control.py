"""Control flow's one kernel: Select, which ends an If whose condition comes with the request.

The compiler places both branches' nodes in the plan, each guarded by the condition (model/compile.py);
a request runs the steps of the branch its condition picks, and Select copies that branch's output into
the If's. The other branch's output is never read: its steps did not run.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedModel
from . import INTERNAL_DOMAIN, OpDef, TensorInfo, node_error, register


def _select_infer(node, ins):
    cond, then, other = ins
    if cond.dtype != np.dtype(bool) or int(np.prod(cond.shape)) != 1:
        raise node_error(node, f"the condition must be one bool, got {cond.dtype} of shape {cond.shape}")
    if then.dtype != other.dtype or then.shape != other.shape:
        raise UnsupportedModel(
            f"node {node.name!r} (If): its branches give {node.outputs[0]!r} as {then.dtype}{list(then.shape)} "
            f"and {other.dtype}{list(other.shape)}; an If whose condition comes with the request needs branches "
            "whose outputs agree in type and shape")
    return [TensorInfo(then.dtype, then.shape)]


def _build_select(node, ins, outs):
    def run(i, o):
        np.copyto(o[0], i[1] if i[0].item() else i[2])

    return run


# Ops the compiler itself expands (their subgraphs become steps): no kernel of their own.
CONTROL_FLOW = frozenset({"If"})

SELECT = register(OpDef("Select", _select_infer, _build_select), domain=INTERNAL_DOMAIN)
