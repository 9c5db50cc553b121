"""Reduction operators and the dtypes the emulator supports."""

from __future__ import annotations

import numpy as np

OPS: dict[str, np.ufunc] = {"sum": np.add, "max": np.maximum, "min": np.minimum}
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name) for name in ("float32", "float64", "float16", "int32", "int64")
}


def reduce_into(op: str, acc: np.ndarray, incoming: np.ndarray) -> None:
    """acc <- acc (op) incoming, in place and in acc's dtype (as a NIC or CPU would)."""
    OPS[op](acc, incoming, out=acc)
