"""Zero-block sparsity: which blocks are non-zero, and inputs with a given pattern.

A vector of ``count`` elements is cut into blocks of ``block_size`` elements
(the last one may be partial). A block is zero when every element is exactly
zero (|x| <= 0; NaN and Inf make a block non-zero, so they travel). The
patterns follow OmniReduce's benchmark method:

* ``overlap="random"``: every node keeps each block with probability D;
* ``overlap="all"``: every node has the same ``round(D * nblocks)`` non-zero blocks;
* ``overlap="none"``: the nodes' non-zero blocks are disjoint (needs D <= 1/N).

The same ``seed`` gives the same pattern on every rank, so each rank can build
any node's input (and the reference) without communication.
"""

from __future__ import annotations

import numpy as np

from nicemu.errors import CollectiveError

OVERLAPS = ("random", "all", "none")


def nblocks_of(count: int, block_size: int) -> int:
    return -(-count // block_size)


def check_pattern(nodes: int, density: float, overlap: str) -> None:
    if overlap not in OVERLAPS:
        raise CollectiveError(f"unknown overlap '{overlap}'; use one of {', '.join(OVERLAPS)}")
    if not 0.0 <= density <= 1.0:     # NaN fails too
        raise CollectiveError(f"density {density} is outside [0, 1]; 0 is an all-zero input, 1 a dense one")
    if overlap == "none" and density * nodes > 1.0 + 1e-12:
        raise CollectiveError(
            f"overlap none needs density <= 1/nodes = {1 / nodes:.4g} so that the {nodes} nodes' "
            f"non-zero blocks can be disjoint; lower --density or use --overlap random")


def pattern_mask(node: int, nodes: int, count: int, block_size: int, density: float,
                 overlap: str = "random", seed: int = 0) -> np.ndarray:
    """Non-zero blocks of ``node`` (bool per block) under a benchmark pattern."""
    check_pattern(nodes, density, overlap)
    nb = nblocks_of(count, block_size)
    if density >= 1.0:
        return np.ones(nb, dtype=bool)
    if density <= 0.0:          # an all-zero input (e.g. a frozen layer's gradient): no draws needed
        return np.zeros(nb, dtype=bool)
    if overlap == "random":
        return np.random.default_rng([seed, node]).random(nb) < density
    k = int(round(density * nb))
    order = np.random.default_rng([seed, 7919]).permutation(nb)
    mask = np.zeros(nb, dtype=bool)
    if overlap == "all":
        mask[order[:k]] = True
    else:
        mask[order[node * k:(node + 1) * k]] = True
    return mask


def block_mask(data: np.ndarray, block_size: int) -> np.ndarray:
    """Which blocks of a 1-D vector (or of each row of a 2-D array) hold a non-zero element."""
    arr = np.asarray(data)
    rows = arr.reshape(-1, arr.shape[-1])
    count = rows.shape[1]
    nb = nblocks_of(count, block_size)
    pad = nb * block_size - count
    nonzero = rows != 0
    if pad:
        nonzero = np.concatenate([nonzero, np.zeros((rows.shape[0], pad), dtype=bool)], axis=1)
    mask = nonzero.reshape(rows.shape[0], nb, block_size).any(axis=2)
    return mask[0] if arr.ndim == 1 else mask


def sparse_input(node: int, nodes: int, count: int, dtype: str | np.dtype = "float32",
                 density: float = 1.0, block_size: int = 256, overlap: str = "random",
                 seed: int = 0) -> np.ndarray:
    """A node's input: small non-zero integers in its non-zero blocks, zeros elsewhere."""
    mask = pattern_mask(node, nodes, count, block_size, density, overlap, seed)
    j = np.arange(count, dtype=np.int64)
    values = ((7 * j + 13 * node) % 16 + 1).astype(dtype)   # 1..16: never zero
    values[~np.repeat(mask, block_size)[:count]] = 0
    return values
