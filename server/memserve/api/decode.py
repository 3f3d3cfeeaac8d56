"""One decode step at the protocol edge, shared by both APIs and their streams.

A request's tensors are untrusted: every way they can be malformed (an
unknown dtype, a negative, huge or overflowing shape, a byte count that does
not match, a typed value out of its type's range, an input given twice)
becomes INVALID_ARGUMENT here, with a message, before anything is queued.
Shapes are checked with Python integers (limits.check_shape), so no product
can wrap around.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .. import limits
from ..errors import InputMismatch, InvalidArgument


def tensor(name: str, dtype: np.dtype, dims: Iterable[int], raw: bytes | None = None,
           values=None, max_elements: int | None = None) -> np.ndarray:
    """An input from raw little-endian bytes, or from typed `values` (a sequence of numbers).
    `max_elements`: the most the model can take for this input, checked before any conversion."""
    shape = limits.check_shape(f"input {name[:64]!r} shape", dims)
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise InputMismatch(f"input {name[:64]!r} has {count} elements; the model takes at most {max_elements}")
    if raw is not None:
        need = count * dtype.itemsize
        if len(raw) != need:
            raise InputMismatch(f"input {name[:64]!r} carries {len(raw)} bytes; {dtype.name} {list(shape)} "
                                f"needs {need}")
        return np.frombuffer(raw, dtype).reshape(shape)
    if len(values) != count:
        raise InputMismatch(f"input {name[:64]!r} has {len(values)} values; shape {list(shape)} needs {count}")
    return typed(name, dtype, values).reshape(shape)


def typed(name: str, dtype: np.dtype, values) -> np.ndarray:
    """Typed values (a protobuf repeated field) as `dtype`, refusing values the type cannot hold."""
    # fromiter fills one array; np.asarray would first build a Python object per value (~30x the bytes).
    if dtype.kind in "iu":
        wide = np.dtype(np.uint64 if dtype.kind == "u" and dtype.itemsize == 8 else np.int64)
        try:
            a = np.fromiter(values, wide, count=len(values))
        except (TypeError, ValueError, OverflowError):
            raise InvalidArgument(f"input {name[:64]!r}: {dtype.name} values must be integers") from None
        info = np.iinfo(dtype)
        if a.size and (int(a.min()) < info.min or int(a.max()) > info.max):
            raise InputMismatch(f"input {name[:64]!r} has values outside {dtype.name}'s range "
                                f"{info.min}..{info.max}")
        return a.astype(dtype)
    return np.fromiter(values, dtype, count=len(values))


def named(pairs: Iterable[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Decoded inputs by name; a name given twice is refused."""
    arrays: dict[str, np.ndarray] = {}
    for name, array in pairs:
        if name in arrays:
            raise InputMismatch(f"input {name[:64]!r} is given twice")
        arrays[name] = array
    return arrays
