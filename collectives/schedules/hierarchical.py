"""AllReduce over nodes of several ranks (``--ranks-per-node P``), the way NCCL runs rail-optimised clusters.

Every node has P ranks, each with its own NIC (a rail). The AllReduce of all
N·P ranks runs in three phases (docs/model.md §19.3):

1. an intra-node reduce-scatter through host memory: rank ``r`` of every node
   reads shard ``r`` of each other rank of its node and reduces it into its
   own, in one cache-blocked pass (host DRAM: the first peer's shard, its own
   and the result, then one more shard per peer);
2. P rail-parallel copies of the algorithm under test over the node
   topology, copy ``r`` among the ranks ``r`` of all nodes, on shard ``r``;
3. an intra-node allgather through host memory: every rank copies the other
   ranks' shards of the result (host DRAM: a read and a write per byte).

Phases 1 and 3 are the same for every algorithm (the host does them), so the
algorithms differ only in phase 2. Ranks are numbered node-major: rank ``r``
of node ``v`` is ``v·P + r`` (the topology's last dimension, see
``Torus.with_ranks_per_node``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from nicemu.collectives.schedules.routing import Route
from nicemu.collectives.schedules.steps import Schedule, Step, split
from nicemu.errors import CollectiveError
from nicemu.topologies import Torus


def build(base: Callable[[Torus, int], Schedule], topology: Torus, count: int, algo: str = "") -> Schedule:
    """The AllReduce of ``topology``'s ranks whose phase 2 is ``base(node_topology, shard_count)``; on a
    single node (``Torus.single_node``) phases 1 and 3 alone, under the name ``algo``."""
    p = topology.ranks_per_node
    shard_off, shard_cnt = split(np.zeros(p, np.int64), np.full(p, count, np.int64), p, np.arange(p))
    counts = sorted({int(c) for c in shard_cnt})
    if topology.single:          # one node: the intra-node phases are the whole AllReduce
        shards = {}
        sample = Schedule("allreduce", algo, topology, count, iter, transfers=1)
    else:
        nodes = topology.node_topology
        shards = {c: base(nodes, c) for c in counts}
        sample = shards[counts[-1]]
    if len({s.transfers for s in shards.values()}) > 1 or len({s.segment_elems for s in shards.values()}) > 1:
        raise CollectiveError(f"{sample.algo} splits shards of {counts[0]} and {counts[-1]} elements into "
                              f"different schedules; use a count that is a multiple of the {p} ranks per node")
    ranks = np.arange(topology.nodes, dtype=np.int64)
    local = topology.ndim - 1
    pos = topology.ring_position(ranks, local)
    full_off, full_cnt = np.zeros(topology.nodes, np.int64), np.full(topology.nodes, count, np.int64)

    def local_phase(phase: str, group0: int) -> Iterator[Step]:
        # pairwise: in step s rank r takes shard r (reduce-scatter) or shard r+s (allgather) from rank r+s
        for s in range(1, p):
            peer = topology.neighbor(ranks, local, -s)        # the rank this one sends to
            which = (pos - s) % p if phase == "rs" else pos
            off, cnt = split(full_off, full_cnt, p, which)
            rs = phase == "rs"
            yield Step(phase, local, -1, s - 1, ranks, peer, off, cnt, engine="host", reduce=rs,
                       from_host=False, to_host=False, local=True, group=group0 + s - 1,
                       dram_per_byte=(3.0 if s == 1 else 1.0) if rs else 2.0)

    def steps() -> Iterator[Step]:
        yield from local_phase("rs", 0)
        shift, last = p - 1, p - 2
        which = [counts.index(int(c)) for c in shard_cnt]    # each rail's shard schedule
        for per_count in zip(*(shards[c].steps() for c in counts), strict=True) if shards else ():
            step = lift_rails(tuple(per_count[w] for w in which), p, shard_off, topology)
            if step.group >= 0:
                step = replace(step, group=step.group + shift)
                last = max(last, step.group)
            yield step
        yield from local_phase("ag", last + 1)

    transfers = sample.transfers * p + 2 * (p - 1) * topology.nodes if sample.transfers else 0
    return Schedule("allreduce", sample.algo, topology, count, steps, shard_off, shard_cnt,
                    sample.bidirectional, segment_elems=sample.segment_elems, transfers=transfers)


def lift_rails(per_rail: tuple[Step, ...], p: int, shard_off: np.ndarray, topology: Torus) -> Step:
    """One step of every rail's copy as one step over all ranks (rail ``r`` is rank ``r`` of every node)."""
    first = per_rail[0]
    for other in per_rail[1:]:
        if (other.phase, other.dim, other.direction, other.group, len(other.src)) != \
                (first.phase, first.dim, first.direction, first.group, len(first.src)):
            raise CollectiveError(f"the rail copies of {first.phase} step {first.index} differ; use a count "
                                  f"that is a multiple of the {p} ranks per node")
    src = np.concatenate([s.src * p + r for r, s in enumerate(per_rail)])
    dst = np.concatenate([s.dst * p + r for r, s in enumerate(per_rail)])
    offset = np.concatenate([s.offset + shard_off[r] for r, s in enumerate(per_rail)])
    count = np.concatenate([s.count for s in per_rail])
    # all-to-all rails (collectives/schedules/hierarchical_alltoall.py) carry their per-transfer fields
    extra = {}
    if first.dst_offset is not None:
        extra["dst_offset"] = np.concatenate([s.dst_offset + shard_off[r] for r, s in enumerate(per_rail)])
    for name in ("host_count", "final_count", "hold_count"):
        if getattr(first, name) is not None:
            extra[name] = np.concatenate([getattr(s, name) for s in per_rail])
    route = None
    if first.route is not None:
        route = Route(np.concatenate([s.route.cum for s in per_rail]),
                      np.concatenate([s.route.first_dim for s in per_rail]),
                      np.concatenate([s.route.first_dir for s in per_rail]),
                      max(s.route.load for s in per_rail),
                      np.concatenate([s.route.dirs for s in per_rail]))
    return replace(first, src=src, dst=dst, offset=offset, count=count, route=route, **extra)
