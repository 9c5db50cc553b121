"""Benchmark input data and its independent reference.

Node ``n`` contributes ``v(n, j) = ((7 j + 13 n) mod 17) - 8``, with 0 replaced
by 9: small non-zero integers, so every dtype holds them exactly and sums,
maxima and minima have an exact reference in float64 whatever order the
algorithm reduces in. ``--density``, ``--overlap`` and ``--seed`` zero whole
blocks of ``--block-size`` elements per node (see collectives/schedules/sparse_patterns.py),
which is what the sparse algorithms exploit; dense algorithms still move every byte.
"""

from __future__ import annotations

import numpy as np

from nicemu.collectives.schedules.sparse_patterns import pattern_mask
from nicemu.nic.ops import OPS


def node_input(node: int, nodes: int, count: int, dtype: np.dtype, density: float = 1.0,
               block_size: int = 256, overlap: str = "random", seed: int = 0, start: int = 0,
               stop: int | None = None) -> np.ndarray:
    """Elements ``start:stop`` of the vector node ``node`` contributes."""
    stop = count if stop is None else stop
    j = np.arange(start, stop, dtype=np.int64)
    raw = (7 * j + 13 * node) % 17 - 8
    values = np.where(raw == 0, 9, raw).astype(dtype)
    if density < 1.0:
        keep = pattern_mask(node, nodes, count, block_size, density, overlap, seed)[j // block_size]
        values[~keep] = 0
    return values


def reduced_reference(nodes: int, count: int, op: str, density: float, block_size: int,
                      overlap: str, seed: int) -> np.ndarray:
    """The full reduction over all nodes, in float64."""
    f64 = np.dtype(np.float64)
    if density >= 1.0:
        # v(n, j) depends on j only through j mod 17: reduce 17 columns, then tile
        period = np.stack([node_input(n, nodes, 17, f64) for n in range(nodes)])
        pattern = OPS[op].reduce(period, axis=0)
        return np.resize(pattern, count)
    acc = node_input(0, nodes, count, f64, density, block_size, overlap, seed)
    for n in range(1, nodes):
        OPS[op](acc, node_input(n, nodes, count, f64, density, block_size, overlap, seed), out=acc)
    return acc


def gathered_reference(seg_off: np.ndarray, seg_cnt: np.ndarray, count: int, density: float,
                       block_size: int, overlap: str, seed: int) -> np.ndarray:
    """What an allgather of every node's own range yields."""
    out = np.empty(count)
    nodes = len(seg_off)
    for n, (o, c) in enumerate(zip(seg_off, seg_cnt)):
        out[o:o + c] = node_input(n, nodes, count, np.dtype(np.float64), density, block_size,
                                  overlap, seed, o, o + c)
    return out


def alltoall_reference(node: int, nodes: int, count: int, density: float, block_size: int,
                       overlap: str, seed: int) -> np.ndarray:
    """What node ``node`` holds after an all-to-all: block ``i`` is block ``node`` of node ``i``'s input."""
    block = count // nodes
    f64 = np.dtype(np.float64)
    return np.concatenate([node_input(i, nodes, count, f64, density, block_size, overlap, seed,
                                      node * block, (node + 1) * block) for i in range(nodes)])


def count_wrong(result: np.ndarray, reference: np.ndarray, nodes: int) -> int:
    """Elements that differ from the reference (exact for integers, tolerance for floats)."""
    if result.dtype.kind in "iu":
        return int(np.count_nonzero(result.astype(np.int64) != reference.astype(np.int64)))
    tol = np.finfo(result.dtype).eps * 8.0 * nodes
    diff = np.abs(result.astype(np.float64) - reference)
    return int(np.count_nonzero(~(diff <= tol * np.maximum(1.0, np.abs(reference)))))
