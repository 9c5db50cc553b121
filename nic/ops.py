"""Reduction operators and the element types the emulator supports.

Element types are numpy's and ml-dtypes' (``bfloat16``, ``float8_e4m3fn``,
``float8_e5m2``): every reduction runs in the input type, one rounding per
operation, as a NIC or GPU kernel without a wider accumulator would.

``avg`` is a sum followed by one division by the number of contributing nodes
(:func:`finish`): integers divide the (wrapped) sum with C's integer division,
truncating toward zero, as NCCL does; floats divide the sum in the input type.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

#: the ufunc every reduction step applies (avg sums; its division comes once, at the end)
OPS: dict[str, np.ufunc] = {"sum": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum,
                            "avg": np.add}
#: canonical name -> dtype (numpy's and ml-dtypes' names)
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(getattr(ml_dtypes, name, name)) for name in (
        "float32", "float64", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
        "int8", "uint8", "int32", "uint32", "int64", "uint64")
}
#: nccl-tests' names of the same types
ALIASES: dict[str, str] = {"half": "float16", "float": "float32", "double": "float64",
                           "f8e4m3": "float8_e4m3fn", "f8e5m2": "float8_e5m2"}
#: the types MPI has no datatype for (MPI's own collective reduces them with a user-defined op)
NON_MPI_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def is_integer(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in "iu"


def unit_roundoff(dtype: np.dtype) -> float:
    """u = 2**-p of a float type with p significand bits (0 for integer types: they are exact)."""
    if is_integer(dtype):
        return 0.0
    return 2.0 ** -(int(ml_dtypes.finfo(dtype).nmant) + 1)


def reduce_into(op: str, acc: np.ndarray, incoming: np.ndarray) -> None:
    """acc <- acc (op) incoming, in place and in acc's dtype (as a NIC or CPU would)."""
    OPS[op](acc, incoming, out=acc)


def finish(op: str, data: np.ndarray, nodes: int) -> None:
    """The post-operation of ``op`` on a reduced result, in place: avg divides by ``nodes``."""
    if op != "avg" or nodes == 1:
        return
    data[...] = divide(data, nodes)


def divide(x: np.ndarray, n: int) -> np.ndarray:
    """``x / n`` in x's type: integers truncate toward zero (C's ``/``) on the wrapped value, floats
    round the quotient once."""
    x = np.asarray(x)
    if not is_integer(x.dtype):
        return (x.astype(np.float64) / n).astype(x.dtype) if x.dtype.itemsize < 4 else x / x.dtype.type(n)
    if x.dtype.kind == "u":
        return x // x.dtype.type(n)
    bits = np.dtype(f"u{x.dtype.itemsize}")
    neg = x < 0
    mag = np.where(neg, (0 - x.view(bits)), x.view(bits))    # |x| as unsigned: INT_MIN's too
    q = (mag // bits.type(n)).astype(bits)
    return np.where(neg, 0 - q, q).astype(bits).view(x.dtype)
