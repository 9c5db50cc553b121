"""All-to-all over nodes of several ranks (``--ranks-per-node P``): rails first, then inside the node.

Every node has P ranks, each with its own NIC (a rail), and rank ``r`` of node
``v`` is rank ``v·P + r`` (node-major, as the hierarchical AllReduce numbers
them). Rank ``i`` cuts its row of ``count`` elements into ``N·P`` blocks of
``b`` elements; block ``j`` ends up as block ``i`` of rank ``j``. Two phases
(docs/model.md §13.6), the way DeepEP's inter-node dispatch runs:

1. **Rails.** P copies of the node all-to-all of the algorithm under test
   (collectives/schedules/alltoall.py) run at once over the node topology, copy
   ``r`` among the ranks ``r`` of all nodes. Rank ``(v, r)`` hands rank
   ``(w, r)`` one super-block of ``P·b`` elements: every block it has for a
   rank of node ``w``. So the rail's row is the rank's whole row, and each byte
   crosses the network once, on the rail of its source rank.
2. **Inside the node.** Rank ``(w, r)`` now holds, for every source node, the
   blocks of all P ranks of node ``w``. In step ``s = 1 .. P-1`` it sends rank
   ``r + s`` of its node the ``N`` blocks meant for it: one pairwise step per
   peer, through host memory or the NVLink-class fabric (``intra_node.nvlink``),
   as the AllReduce's intra-node phases. The rank's own blocks stay in place.

**Memory layout (bookkeeping, no emulated time).** The rails work on the node
all-to-all's staging row of ``2·count`` elements, its node blocks cut into P
rank blocks (their destinations' local ranks, in order). Before phase 2 a
relayout gathers area 0 into P slabs of ``N`` blocks, slab ``r'`` holding the
blocks for local rank ``r'`` ordered by their label (the source node's offset);
phase 2 sends slab ``r'`` to rank ``r'``, which places it as slab ``r`` of its
area 1. :func:`pack_index` and :func:`unpack_index` translate from and to the
user's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from nicemu.collectives.schedules import alltoall
from nicemu.collectives.schedules.hierarchical import lift_rails
from nicemu.collectives.schedules.steps import Schedule, Step
from nicemu.topologies import Torus


def _rail_locations(topology: Torus) -> np.ndarray:
    """Node block (of the staging row's 2N) holding each label's super-block after the rails."""
    if topology.single:
        return np.zeros(1, dtype=np.int64)
    return alltoall.final_locations(topology.node_topology.shape)


def _slab_gather(topology: Torus) -> np.ndarray:
    """The relayout before phase 2 (rank blocks): slab r' of area 0 gathers the blocks for local rank r'."""
    p = topology.ranks_per_node
    n = topology.nodes // p
    where = _rail_locations(topology)
    perm = np.empty(2 * n * p, dtype=np.int64)
    perm[:n * p] = (where[None, :] * p + np.arange(p)[:, None]).ravel()      # [r', label]
    perm[n * p:] = np.setdiff1d(np.arange(2 * n * p), perm[:n * p])          # the rest, in order
    return perm


def _expand(perm: np.ndarray, p: int) -> np.ndarray:
    """A permutation of node blocks as one of rank blocks (each node block is P rank blocks)."""
    return (perm[:, None] * p + np.arange(p)[None, :]).ravel()


def relayouts(topology: Torus, rail_steps: int) -> dict[int, np.ndarray]:
    """{step index: rank-block gather}: the rails' relayouts between torus dimensions, then the slabs."""
    p = topology.ranks_per_node
    out = {} if topology.single else {i: _expand(perm, p)
                                       for i, perm in alltoall.relayouts(topology.node_topology.shape).items()}
    out[rail_steps] = _slab_gather(topology)
    return out


def _labels_of(topology: Torus, node: int) -> np.ndarray:
    """Label of the blocks that every source node's rail delivered to ``node``: the row-major index of
    ``node - source`` per coordinate (alltoall.py's labels, read at the end as offsets from the source)."""
    if topology.single:
        return np.zeros(1, dtype=np.int64)
    nodes = topology.node_topology
    shape = np.array(nodes.shape)
    return nodes.node_of((nodes.coords(node) - nodes.coords(np.arange(nodes.nodes))) % shape)


def pack_index(topology: Torus, ranks: np.ndarray) -> np.ndarray:
    """For each rank, the input block that goes to each rank block of area 0: (len(ranks), N·P)."""
    p = topology.ranks_per_node
    n = topology.nodes // p
    idx = np.empty((len(ranks), n * p), dtype=np.int64)
    for row, x in enumerate(ranks):
        v = int(x) // p
        if topology.single:
            node_pack = np.zeros(1, dtype=np.int64)
        else:
            node_pack = alltoall.pack_index(topology.node_topology, np.array([v]))[0]
        idx[row] = _expand(node_pack, p)
    return idx


def unpack_index(topology: Torus, ranks: np.ndarray) -> np.ndarray:
    """For each rank, the staging block that holds each source rank's block at the end: (len(ranks), N·P)."""
    p = topology.ranks_per_node
    n = topology.nodes // p
    idx = np.empty((len(ranks), n * p), dtype=np.int64)
    for row, x in enumerate(ranks):
        w, r = divmod(int(x), p)
        label = _labels_of(topology, w)          # label of each source node v, as seen from w
        for src_r in range(p):
            # own blocks stay in area 0 (slab r); the others arrived in area 1, slab of their source rank
            base = src_r * n + (n * p if src_r != r else 0)
            idx[row, np.arange(n) * p + src_r] = base + label
    return idx


def _local_steps(topology: Torus, count: int) -> Iterator[Step]:
    """Phase 2: in step s rank r sends slab r+s (the blocks for rank r+s of its node) into slab r of
    that rank's area 1; through host memory a copy is a read and a write per byte."""
    p = topology.ranks_per_node
    slab = count // p
    ranks = np.arange(topology.nodes, dtype=np.int64)
    local = topology.ndim - 1
    pos = topology.ring_position(ranks, local)
    for s in range(1, p):
        peer = topology.neighbor(ranks, local, s)
        yield Step("a2a", local, 1, s - 1, ranks, peer, ((pos + s) % p) * slab,
                   np.full(topology.nodes, slab, dtype=np.int64), engine="host", reduce=False,
                   from_host=False, to_host=False, local=True, dram_per_byte=2.0,
                   dst_offset=count + pos * slab)


def build(base: Callable[[Torus, int], Schedule], topology: Torus, count: int, algo: str = "") -> Schedule:
    """The all-to-all of ``topology``'s ranks whose rails run ``base(node_topology, count)`` (the node
    all-to-all of ``algo``); on a single node (``Torus.single_node``) phase 2 alone."""
    p = topology.ranks_per_node
    alltoall.check_count(topology, count)
    rail = None if topology.single else base(topology.node_topology, count)
    rail_steps = 0 if rail is None else sum(1 for _ in rail.steps())
    zero = np.zeros(p, dtype=np.int64)

    def steps() -> Iterator[Step]:
        if rail is not None:
            for step in rail.steps():
                yield lift_rails((step,) * p, p, zero, topology)
        yield from _local_steps(topology, count)

    return Schedule("alltoall", algo if rail is None else rail.algo, topology, count, steps, width=2 * count,
                    make_relayouts=lambda: relayouts(topology, rail_steps))
