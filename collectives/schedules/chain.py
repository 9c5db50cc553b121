"""``ring-pipelined`` Broadcast and Reduce: a segmented chain through every node (pipelined rooted collectives).

Open MPI's pipeline/chain broadcast and reduce: the nodes form one chain in
ring order from the root (virtual node ``0 -> 1 -> ... -> p-1`` for a
broadcast, ``p-1 -> ... -> 0`` for a reduce; collectives/schedules/rooted.py
moves it to the real root). The vector is cut into ``S`` near-equal segments
(``S = ceil(count / segment)``, at least 1, ``segment = host.segment_KiB``).
Hop ``t`` (the ``t``-th link of the chain) carries segment ``j`` in wavefront
``g = t + j``: every wavefront is one step whose transfers are the active hops,
each with its own segment. A node receives segment ``j`` in wavefront ``g``
and sends it on (reduced with its own segment, for a reduce) in wavefront
``g + 1``, while it receives segment ``j + 1``. ``p - 1`` hops and ``S``
segments take ``p + S - 2`` wavefronts. Every transfer is host to host (DMA
read, link, DMA write, host pass), routed over the topology (on a torus the
chain in node order takes a few non-neighbour hops).

A node posts its sends as soon as it has the data, so the root (which never
waits) streams its segments back to back, and so does every node behind it.
Under the α-β-γ model on ``switch:p`` with segments of ``s`` bytes
(``n = S s``): broadcast ``(p - 1)α + (p + S - 2)sβ``; reduce
``(p - 1)(α + sγ) + (p + S - 2)sβ`` while the host reduces a segment no slower
than it arrives (γ <= β).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from nicemu.collectives.schedules.recursive import host_step
from nicemu.collectives.schedules.rooted import at_root
from nicemu.collectives.schedules.steps import Schedule, Step, final_segments, split
from nicemu.topologies import Torus

ALGO = "ring-pipelined"


def segments(count: int, segment_elems: int) -> int:
    """``S``: segments of the vector, at least 1."""
    return max(1, -(-count // segment_elems))


def chain_steps(topology: Torus, count: int, collective: str, segment_elems: int) -> Iterator[Step]:
    """The wavefronts of the root-0 chain (see the module docstring)."""
    p = topology.nodes
    hops = p - 1
    S = segments(count, segment_elems)
    reduce = collective == "reduce"
    for g in range(hops + S - 1):
        t = np.arange(max(0, g - S + 1), min(g, hops - 1) + 1, dtype=np.int64)
        src, dst = (p - 1 - t, p - 2 - t) if reduce else (t, t + 1)
        off, cnt = split(np.zeros(len(t), dtype=np.int64), np.full(len(t), count, dtype=np.int64), S, g - t)
        yield host_step(topology, "chain", g, src, dst, off, cnt, reduce)


def build(collective: str, topology: Torus, count: int, bidirectional: bool = False, *,
          segment_elems: int, root: int = 0) -> Schedule:
    """The chain broadcast or reduce with segments of ``segment_elems`` elements (at least 1)."""
    segment_elems = max(1, int(segment_elems))
    off, cnt = final_segments(topology, count)
    return Schedule(collective, ALGO, topology, count,
                    lambda: at_root(chain_steps(topology, count, collective, segment_elems), topology, root),
                    off, cnt, segment_elems=segment_elems,
                    transfers=(topology.nodes - 1) * segments(count, segment_elems), root=root)
