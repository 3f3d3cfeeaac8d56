"""Every number a client controls has a bound, checked at the edge (docs/security.md lists them).

The bounds are generous for real models and small enough that no value within
them can overflow a timer, start thousands of threads, or make load-time work
grow without limit. Tensor dimensions and element counts are checked with
Python integers, never with fixed-width arithmetic that could wrap.
"""
from __future__ import annotations

import math
import re

from .errors import InvalidArgument

MAX_NODES = 100_000  # nodes in a model, subgraphs and functions included
MAX_SUBGRAPH_DEPTH = 16  # If branches inside If branches
# Conditions guarding the steps of runtime Ifs, summed over steps: a full tree of nested Ifs multiplies them,
# and the generated run function (a line per step) grows with them.
MAX_GUARD_TERMS = 100_000
MAX_LOOP_TRIPS = 1 << 16  # iterations of one Loop in one request: a Loop that has not stopped by then is refused
MAX_RANK = 32  # dimensions of a tensor (numpy allows 64)
MAX_DIM = 2**31 - 1  # one dimension
MAX_ELEMENTS = 2**40  # elements of one tensor: beyond any device memory
MAX_BATCH = 65_536  # max_batch, and the leading dimension of input_shapes
MAX_INSTANCES = 64  # instances of one model: one lane thread and one workspace each
MAX_QUEUE_DELAY_US = 10_000_000  # dynamic batching delay: 10 s
MAX_PREFERRED_BATCH_SIZES = 32
MAX_INPUT_VALUES = 32  # input_values entries of one load
MAX_VALUE_ELEMENTS = 4096  # elements of one input_values tensor (a shape, axes, scales: small by nature)
MAX_NAME = 256  # characters of a model name
MAX_TIMEOUT_US = 24 * 3600 * 10**6  # a request's own timeout: one day
NAME = re.compile(r"^[^\x00-\x1f\x7f/\\]*$")  # printable, no path separators


def check_name(name: str) -> None:
    if len(name) > MAX_NAME or not NAME.match(name) or name in (".", ".."):
        raise InvalidArgument(f"model name {name[:64]!r} is not allowed: use at most {MAX_NAME} printable "
                              "characters without '/' or '\\'")


def check_shape(what: str, dims, lowest: int = 0) -> tuple[int, ...]:
    """A tensor shape from a client: rank, each dimension and the element count bounded."""
    dims = tuple(map(int, dims))
    if len(dims) > MAX_RANK:
        raise InvalidArgument(f"{what} has rank {len(dims)}; memserve accepts at most {MAX_RANK} dimensions")
    if dims and (min(dims) < lowest or max(dims) > MAX_DIM):
        bad = [d for d in dims if not lowest <= d <= MAX_DIM]
        raise InvalidArgument(f"{what} has dimension {bad[0]} in {list(dims)}; each must be {lowest} to {MAX_DIM}")
    if math.prod(dims) > MAX_ELEMENTS:
        raise InvalidArgument(f"{what} {list(dims)} has more than {MAX_ELEMENTS} elements")
    return dims


def check_range(what: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{what} must be {low} to {high}, got {value}")
    return value
