"""``tree``: AllReduce as a binomial-tree reduce to node 0 followed by a binomial broadcast.

This is what MPICH does for short messages when it reduces to a root
(``MPIR_Reduce`` and ``MPIR_Bcast``, binomial). In reduce step k
(k = 0 .. ⌈lg p⌉ - 1) every node i with i mod 2^(k+1) = 2^k sends its whole
partial vector to node i - 2^k, whose host reduces it; the broadcast runs the
same tree backwards (node i with i mod 2^(k+1) = 0 sends to i + 2^k). Both
phases take ⌈lg p⌉ steps of the full vector, for any p. Cost under the
α-β-γ model: 2⌈lg p⌉(α + nβ) + ⌈lg p⌉nγ (docs/model.md).

The rooted collectives are the two halves on their own, from or to any root
(MPICH's short-message ``MPI_Bcast`` and ``MPI_Reduce``; the tree is written
for root 0 and translated, collectives/schedules/rooted.py): broadcast takes
⌈lg p⌉(α + nβ), reduce ⌈lg p⌉(α + nβ + nγ).

NCCL's double binary tree (two complementary trees, each carrying half the
data, pipelined in chunks) is not modelled: its pipelining belongs with the
segmented ring (``ring-pipelined``), and the binomial tree is the one whose
closed form the MPI literature gives, so it can be checked exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from nicemu.collectives.schedules.recursive import host_step, node_segments
from nicemu.collectives.schedules.rooted import at_root
from nicemu.collectives.schedules.steps import Schedule, Step
from nicemu.topologies import Torus


def reduce_steps(topology: Torus, count: int) -> Iterator[Step]:
    """Binomial reduce of the whole vector to node 0."""
    p = topology.nodes
    nodes = np.arange(p, dtype=np.int64)
    for k in range((p - 1).bit_length()):
        src = nodes[(nodes % (2 << k)) == (1 << k)]
        yield host_step(topology, "reduce", k, src, src - (1 << k), np.zeros_like(src),
                        np.full(len(src), count, dtype=np.int64), True)


def bcast_steps(topology: Torus, count: int) -> Iterator[Step]:
    """Binomial broadcast of the whole vector from node 0."""
    p = topology.nodes
    levels = (p - 1).bit_length()
    nodes = np.arange(p, dtype=np.int64)
    for i, k in enumerate(range(levels - 1, -1, -1)):
        src = nodes[((nodes % (2 << k)) == 0) & (nodes + (1 << k) < p)]
        yield host_step(topology, "bcast", i, src, src + (1 << k), np.zeros_like(src),
                        np.full(len(src), count, dtype=np.int64), False)


def tree_steps(topology: Torus, count: int) -> Iterator[Step]:
    yield from reduce_steps(topology, count)
    yield from bcast_steps(topology, count)


def build(collective: str, topology: Torus, count: int, bidirectional: bool = False, root: int = 0) -> Schedule:
    off, cnt = node_segments(topology, count)
    if collective == "broadcast":
        make = lambda: at_root(bcast_steps(topology, count), topology, root)     # noqa: E731
    elif collective == "reduce":
        make = lambda: at_root(reduce_steps(topology, count), topology, root)    # noqa: E731
    else:
        make = lambda: tree_steps(topology, count)                               # noqa: E731
    return Schedule(collective, "tree", topology, count, make, off, cnt, root=root)
