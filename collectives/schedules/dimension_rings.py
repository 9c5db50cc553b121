"""Ring reduce-scatter and allgather, dimension by dimension.

On a torus of shape k1 x ... x kD the bandwidth-optimal AllReduce runs a ring
reduce-scatter along every dimension in turn (each on the piece the previous
dimension left), then ring allgathers in reverse order. A ring is the 1-D case.

Chunk numbering makes node ``i`` of a ring of ``k`` own chunk ``i`` at the end
of the reduce-scatter: in step ``s`` node ``i`` sends chunk ``(i - s - 1) mod k``
to node ``i + 1``; in allgather step ``s`` it sends chunk ``(i - s) mod k``.

The algorithms (host ring, DirectReduce) share this transfer pattern and differ
only in the per-step policy: who handles the data and what crosses PCIe.

Bidirectional rings split every chunk in two halves: the first half travels
the ring in direction +1 exactly as above, the second half in direction -1
(reduce-scatter step ``s`` sends chunk ``(i + s + 1) mod k`` to node ``i - 1``,
allgather step ``s`` chunk ``(i + s) mod k``). Node ``i`` still ends up owning
all of chunk ``i``, so segments stay contiguous, and each link carries half
the bytes. The two directions of a step form one concurrent group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from nicemu.collectives.schedules.steps import Step, split
from nicemu.topologies import Torus

#: policy(phase, step_index, ring_size, first_ring, last_ring, follows_rs) -> Step kwargs.
#: first_ring/last_ring: whether this ring is the first/last of its phase; follows_rs:
#: an allgather ring that runs right after the reduce-scatter of the same ring.
Policy = Callable[[str, int, int, bool, bool, bool], dict]

PHASES = {"allreduce": ("rs", "ag"), "reducescatter": ("rs",), "allgather": ("ag",)}


def _halves(off: np.ndarray, cnt: np.ndarray):
    return split(off, cnt, 2, np.zeros_like(off)), split(off, cnt, 2, np.ones_like(off))


def dimension_ring_steps(topology: Torus, count: int, collective: str,
                         policy: Policy, bidirectional: bool = False) -> Iterator[Step]:
    phases = PHASES[collective]
    group = 0
    nodes = np.arange(topology.nodes, dtype=np.int64)
    seg_off = np.zeros(topology.nodes, dtype=np.int64)
    seg_cnt = np.full(topology.nodes, count, dtype=np.int64)
    before: list[tuple[np.ndarray, np.ndarray]] = []
    for d, k in enumerate(topology.shape):
        pos = topology.ring_position(nodes, d)
        if "rs" in phases:
            nxt = topology.neighbor(nodes, d, 1)
            prv = topology.neighbor(nodes, d, -1)
            for s in range(k - 1):
                flags = policy("rs", s, k, d == 0, d == topology.ndim - 1, False)
                off, cnt = split(seg_off, seg_cnt, k, (pos - s - 1) % k)
                if not bidirectional:
                    yield Step("rs", d, 1, s, nodes, nxt, off, cnt, **flags, group=group)
                else:
                    (o1, c1), _ = _halves(off, cnt)
                    yield Step("rs", d, 1, s, nodes, nxt, o1, c1, **flags, group=group, nic_share=0.5)
                    off, cnt = split(seg_off, seg_cnt, k, (pos + s + 1) % k)
                    _, (o2, c2) = _halves(off, cnt)
                    yield Step("rs", d, -1, s, nodes, prv, o2, c2, **flags, group=group, nic_share=0.5)
                group += 1
        before.append((seg_off, seg_cnt))
        seg_off, seg_cnt = split(seg_off, seg_cnt, k, pos)
    if "ag" not in phases:
        return
    last = topology.ndim - 1
    for d in range(last, -1, -1):
        k = topology.shape[d]
        pos = topology.ring_position(nodes, d)
        nxt = topology.neighbor(nodes, d, 1)
        prv = topology.neighbor(nodes, d, -1)
        seg_off, seg_cnt = before[d]
        follows_rs = "rs" in phases and d == last
        for s in range(k - 1):
            flags = policy("ag", s, k, d == last, d == 0, follows_rs)
            off, cnt = split(seg_off, seg_cnt, k, (pos - s) % k)
            if not bidirectional:
                yield Step("ag", d, 1, s, nodes, nxt, off, cnt, **flags, group=group)
            else:
                (o1, c1), _ = _halves(off, cnt)
                yield Step("ag", d, 1, s, nodes, nxt, o1, c1, **flags, group=group, nic_share=0.5)
                off, cnt = split(seg_off, seg_cnt, k, (pos + s) % k)
                _, (o2, c2) = _halves(off, cnt)
                yield Step("ag", d, -1, s, nodes, prv, o2, c2, **flags, group=group, nic_share=0.5)
            group += 1
