"""Benchmark input data and its independent reference.

Node ``n`` contributes ``v(n, j) = ((7 j + 13 n) mod 17) - 8``, with 0 replaced
by 9: small non-zero integers. For ``--op prod`` the magnitudes become 1, and 2
on the one node ``n = j mod nodes``, with the same signs, so that every product
is ±1 or ±2 and no partial product can overflow even an 8-bit float.
``--density``, ``--overlap`` and ``--seed`` zero whole blocks of
``--block-size`` elements per node (see collectives/schedules/sparse_patterns.py),
which is what the sparse algorithms exploit; dense algorithms still move every byte.

The reference never comes from an algorithm:

* integer types: numpy's reduction of the inputs in the type itself, wrapping
  modulo 2**bits as the algorithms do (wrapped sums and products do not depend
  on the order); avg divides the wrapped sum with C's truncating division;
* float types: the float64 reduction of the inputs (as rounded to the type)
  with an error bound. Summing N values in any order takes N - 1 additions,
  each rounded once in the type, so ``|result - sum| <= ((1+u)**(N-1) - 1) * sum|x|``
  with the type's unit roundoff ``u`` (2**-8 for bfloat16, 2**-4 for
  float8_e4m3fn, 2**-3 for float8_e5m2); avg adds one rounding of the quotient
  (and half the smallest subnormal, should it underflow); prod's N - 1
  multiplications give ``((1+u)**(N-1) - 1) * |product|``; max and min are exact.
  The same term with float64's u = 2**-53 is added for the reference's own
  rounding (zero for the bench inputs, whose float64 sums are exact).
  The bound holds for every order the algorithms reduce in; it assumes no
  partial result overflows, which the inputs above guarantee up to
  largest/9 nodes (49 for float8_e4m3fn).
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from nicemu.collectives.schedules.sparse_patterns import pattern_mask
from nicemu.nic.ops import OPS, divide, is_integer, unit_roundoff

PERIOD = 17
F64 = np.dtype(np.float64)
U64 = 2.0 ** -53      # float64's unit roundoff: the reference's own rounding


#: elements per chunk where a whole-vector temporary would cost several times the data
CHUNK = 1 << 22

def node_input(node: int, nodes: int, count: int, dtype: np.dtype, density: float = 1.0,
               block_size: int = 256, overlap: str = "random", seed: int = 0, start: int = 0,
               stop: int | None = None, op: str = "sum") -> np.ndarray:
    """Elements ``start:stop`` of the vector node ``node`` contributes."""
    stop = count if stop is None else stop
    j = np.arange(start, stop, dtype=np.int64)
    raw = (7 * j + 13 * node) % PERIOD - 8
    raw = np.where(raw == 0, 9, raw)
    if op == "prod":
        raw = np.sign(raw) * np.where(j % nodes == node, 2, 1)
    values = raw.astype(dtype)
    if density < 1.0:
        keep = pattern_mask(node, nodes, count, block_size, density, overlap, seed)[j // block_size]
        values[~keep] = 0
    return values


def _exact(values: np.ndarray) -> np.ndarray:
    """Inputs as the reference holds them: in their own type for integers, float64 for floats."""
    return values if is_integer(values.dtype) else values.astype(np.float64)


def reduced_reference(nodes: int, count: int, op: str, density: float, block_size: int,
                      overlap: str, seed: int, dtype: np.dtype = F64
                      ) -> tuple[np.ndarray, np.ndarray | float]:
    """(reference, bound): the full reduction over all nodes (in ``dtype`` for integers, float64 for
    floats) and the largest error a correct result of ``dtype`` can have, per element."""
    dtype = np.dtype(dtype)
    if density >= 1.0:
        # v(n, j) depends on j only through j mod 17 (and j mod nodes for prod): reduce one period, then tile
        period = PERIOD * nodes if op == "prod" else PERIOD
        value, bound = _reduce(nodes, period, op, dtype, 1.0, block_size, overlap, seed)
        return np.resize(value, count), (np.resize(bound, count) if np.ndim(bound) else bound)
    return _reduce(nodes, count, op, dtype, density, block_size, overlap, seed)


def _reduce(nodes: int, count: int, op: str, dtype: np.dtype, density: float, block_size: int,
            overlap: str, seed: int) -> tuple[np.ndarray, np.ndarray | float]:
    ufunc = OPS[op]

    def inp(n: int) -> np.ndarray:
        return _exact(node_input(n, nodes, count, dtype, density, block_size, overlap, seed, op=op))

    acc = inp(0).copy()
    abs_sum = np.abs(acc) if op in ("sum", "avg") and not is_integer(dtype) else None
    for n in range(1, nodes):
        x = inp(n)
        ufunc(acc, x, out=acc)
        if abs_sum is not None:
            abs_sum += np.abs(x)
    if is_integer(dtype):
        return (divide(acc, nodes) if op == "avg" else acc), 0.0
    u = unit_roundoff(dtype)

    def grow(k: int) -> float:
        """k rounded operations in the type, and the same k in the float64 reference."""
        return math.expm1(k * math.log1p(u)) + math.expm1(k * math.log1p(U64))   # (1+u)**k - 1 without
                                                                                # 1 + 2**-53 rounding to 1

    if op == "sum":
        return acc, grow(nodes - 1) * abs_sum
    if op == "avg":
        tiny = float(ml_dtypes.finfo(dtype).smallest_subnormal) / 2
        return acc / nodes, grow(nodes) * abs_sum / nodes + tiny
    if op == "prod":
        return acc, grow(nodes - 1) * np.abs(acc)
    return acc, 0.0                              # max, min: one of the inputs, exactly


def gathered_reference(seg_off: np.ndarray, seg_cnt: np.ndarray, count: int, density: float,
                       block_size: int, overlap: str, seed: int,
                       dtype: np.dtype = F64) -> np.ndarray:
    """What an allgather of every node's own range yields (exactly: nothing is computed)."""
    nodes = len(seg_off)
    out = np.empty(count, dtype=dtype if is_integer(dtype) else np.float64)
    for n, (o, c) in enumerate(zip(seg_off, seg_cnt)):
        out[o:o + c] = _exact(node_input(n, nodes, count, dtype, density, block_size, overlap, seed, o, o + c))
    return out


def broadcast_reference(root: int, nodes: int, count: int, density: float, block_size: int, overlap: str,
                        seed: int, dtype: np.dtype = F64) -> np.ndarray:
    """What every node holds after a broadcast: the root's input (exactly: nothing is computed)."""
    return _exact(node_input(root, nodes, count, dtype, density, block_size, overlap, seed))


def alltoall_reference(node: int, nodes: int, count: int, density: float, block_size: int,
                       overlap: str, seed: int, dtype: np.dtype = F64) -> np.ndarray:
    """What node ``node`` holds after an all-to-all: block ``i`` is block ``node`` of node ``i``'s input."""
    block = count // nodes
    return np.concatenate([_exact(node_input(i, nodes, count, dtype, density, block_size, overlap, seed,
                                             node * block, (node + 1) * block)) for i in range(nodes)])


def count_wrong(result: np.ndarray, reference: np.ndarray, bound: np.ndarray | float = 0.0) -> int:
    """Elements that differ from the reference: integers exactly, floats by more than ``bound``
    (NaN and an infinity where the reference is finite always count)."""
    if is_integer(result.dtype):
        return int(np.count_nonzero(result != reference))
    wrong = 0
    per_element = np.ndim(bound) > 0
    for lo in range(0, len(result), CHUNK):    # float64 temporaries of one chunk, not of the whole vector
        hi = lo + CHUNK
        diff = np.abs(result[lo:hi].astype(np.float64) - reference[lo:hi])
        wrong += int(np.count_nonzero(~(diff <= (bound[lo:hi] if per_element else bound))))
    return wrong


def fill_inputs(out: np.ndarray, nodes_here: range | list, nodes: int, density: float = 1.0, block_size: int = 256,
                overlap: str = "random", seed: int = 0, op: str = "sum") -> np.ndarray:
    """``out[i]`` = :func:`node_input` of ``nodes_here[i]``, made a chunk at a time (its int64 temporaries are a
    chunk's, not the vector's)."""
    count = out.shape[1]
    for i, n in enumerate(nodes_here):
        for lo in range(0, count, CHUNK):
            hi = min(count, lo + CHUNK)
            out[i, lo:hi] = node_input(n, nodes, count, out.dtype, density, block_size, overlap, seed, lo, hi, op)
    return out
