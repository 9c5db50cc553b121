"""The pipelined host ring (``ring-pipelined``): the host ring with segmented chunks.

The transfer pattern is the host ring's (collectives/schedules/dimension_rings.py,
dimension by dimension on a torus, optionally bidirectional), and every step is
handled by the host exactly as in ``ring``. The difference: every chunk is cut
into ``S`` near-equal *segments* (``S = ceil(largest chunk / segment)``, at
least 1, ``segment = host.segment_KiB``), and a segment travels on as soon as
the host has reduced it, without waiting for the rest of its chunk or for the
ring step to end. This is the segmented ring of MPI libraries and NCCL.

How it is expressed without new timing machinery: the transfer of segment ``j``
in ring step ``t`` is a Step, and the Steps are ordered by wavefront. Group
``g`` (``Step.group``; Steps of one group run concurrently) holds every
``(t, j)`` with ``t + j = g``, in increasing ``t``. Segment ``j`` of step
``t + 1`` depends only on segment ``j`` of step ``t``, which was received and
reduced in group ``g - 1``, so every sender of a group has its data. Within a
group a node sends up to ``min(S, steps)`` segments on its one link; the
link's busy-until serialises them, and the receiver's PCIe write engine and
host take them in the same order, so the host reduces a segment while the next
one arrives. A run of ``T`` ring steps takes ``T + S - 1`` groups instead of
``T`` steps of whole chunks.

The Step invariants hold in every group: each Step is one transfer per node;
the ranges a node writes in a group (segment ``j`` of the chunk it receives in
step ``t``) never overlap the ranges it sends (for the same ``j`` the received
chunk of step ``t`` is the sent chunk of step ``t + 1``, which belongs to the
next group; other ``j`` are disjoint sub-ranges; the two directions of a
bidirectional ring move disjoint halves).

Where the pipeline runs, and where it stops:

* **Reduce-scatter to allgather**: pipelined. On a ring, and in the last
  dimension of a torus, the allgather's step 0 sends segment ``j`` of the
  chunk the reduce-scatter's last step completed with segment ``j``, so the two
  phases form one run of ``2(k-1)`` steps.
* **Between torus dimensions**: not pipelined (a barrier). A chunk of the next
  dimension is a sub-range of the node's piece of this one, put together from
  pieces of several segments, which node depends on which differs from node to
  node, and the steps of a group are the same for all nodes. Each dimension's
  ring therefore pays its own pipeline fill.

The wavefront is a conservative pipeline: a node's sends in group ``g`` wait
for everything it received in group ``g - 1`` (the node clock), not only for
the one segment each depends on. Each group therefore exposes one segment's
latency (link latency, PCIe latencies, host overhead, one segment's reduction);
docs/model.md §4.5 gives the closed form.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from nicemu.collectives.schedules.dimension_rings import PHASES, Policy
from nicemu.collectives.schedules.host_ring import host_policy
from nicemu.collectives.schedules.steps import Schedule, Step, final_segments, split
from nicemu.topologies import Torus

ALGO = "ring-pipelined"


@dataclass(frozen=True)
class RingStep:
    """One ring step of a run: its phase and its index in that phase's ring."""

    phase: str                 # "rs" or "ag"
    index: int                 # step within its phase's ring (0 .. k-2)


@dataclass(frozen=True)
class Run:
    """Consecutive ring steps on one dimension, pipelined together with ``segments`` per chunk."""

    dim: int
    steps: tuple[RingStep, ...]
    segments: int


def _bases(topology: Torus, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every node's range before each dimension's reduce-scatter (the nested near-equal split)."""
    nodes = np.arange(topology.nodes, dtype=np.int64)
    off = np.zeros(topology.nodes, dtype=np.int64)
    cnt = np.full(topology.nodes, count, dtype=np.int64)
    out = []
    for d, k in enumerate(topology.shape):
        out.append((off, cnt))
        off, cnt = split(off, cnt, k, topology.ring_position(nodes, d))
    return out


def segments_per_chunk(largest_chunk: int, segment_elems: int, bidirectional: bool) -> int:
    """``S``: segments of the largest chunk (half chunk when bidirectional) a run sends, at least 1."""
    largest = -(-largest_chunk // 2) if bidirectional else largest_chunk
    return max(1, -(-largest // segment_elems))


def plan_runs(topology: Torus, count: int, collective: str, segment_elems: int,
              bidirectional: bool = False) -> list[Run]:
    """The runs of ``collective``: per dimension, and the last dimension's two phases as one."""
    phases = PHASES[collective]
    bases = _bases(topology, count)
    order = ([("rs", d) for d in range(topology.ndim)] if "rs" in phases else []) + \
            ([("ag", d) for d in range(topology.ndim - 1, -1, -1)] if "ag" in phases else [])
    runs: list[Run] = []
    for phase, d in order:
        k = topology.shape[d]
        # nodes of one dimension-d ring share their range, so every piece of it is sent by someone
        largest = int(-(-bases[d][1].max() // k)) if topology.nodes else 0
        steps = tuple(RingStep(phase, s) for s in range(k - 1))
        if runs and runs[-1].dim == d:           # the last dimension's allgather follows its reduce-scatter
            runs[-1] = Run(d, runs[-1].steps + steps, runs[-1].segments)
        else:
            runs.append(Run(d, steps, segments_per_chunk(largest, segment_elems, bidirectional)))
    return runs


def transfer_count(topology: Torus, runs: list[Run], bidirectional: bool) -> int:
    """Transfers of the whole schedule (nodes x segment steps), for the size check."""
    return topology.nodes * sum(len(r.steps) * r.segments for r in runs) * (2 if bidirectional else 1)


def _chunks(topology: Torus, d: int, base: tuple[np.ndarray, np.ndarray], rs: RingStep,
            bidirectional: bool) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(direction, dst, offset, count) of the chunk every node sends in ring step ``rs``, as ``ring``."""
    k = topology.shape[d]
    nodes = np.arange(topology.nodes, dtype=np.int64)
    pos = topology.ring_position(nodes, d)
    shift = rs.index + 1 if rs.phase == "rs" else rs.index
    off, cnt = split(base[0], base[1], k, (pos - shift) % k)
    nxt = topology.neighbor(nodes, d, 1)
    if not bidirectional:
        return [(1, nxt, off, cnt)]
    zero, one = np.zeros_like(off), np.ones_like(off)
    o1, c1 = split(off, cnt, 2, zero)
    off2, cnt2 = split(base[0], base[1], k, (pos + shift) % k)
    o2, c2 = split(off2, cnt2, 2, one)
    return [(1, nxt, o1, c1), (-1, topology.neighbor(nodes, d, -1), o2, c2)]


def pipelined_steps(topology: Torus, count: int, collective: str, segment_elems: int,
                    bidirectional: bool = False, policy: Policy = host_policy) -> Iterator[Step]:
    """Every segment transfer, in wavefront groups (see the module docstring).

    ``policy`` says who handles a ring step (``host_policy`` here, the NIC's for ``directreduce-pipelined``).
    With the NIC engine every transfer of a group may hold ``1 / (2 x transfers in the group)`` of
    ``nic.memory_KiB`` (its operand and its result; docs/model.md §4.6): a node's NIC holds the segments of
    one group, not whole chunks.
    """
    bases = _bases(topology, count)
    nodes = np.arange(topology.nodes, dtype=np.int64)
    last = topology.ndim - 1
    group = 0
    for run in plan_runs(topology, count, collective, segment_elems, bidirectional):
        d, n, S = run.dim, len(run.steps), run.segments
        k = topology.shape[d]
        for g in range(n + S - 1):
            active = range(max(0, g - S + 1), min(g, n - 1) + 1)
            share = 1.0 / (2 * len(active) * (2 if bidirectional else 1))
            for t in active:
                rs = run.steps[t]
                first_ring = d == (0 if rs.phase == "rs" else last)
                last_ring = d == (last if rs.phase == "rs" else 0)
                follows_rs = rs.phase == "ag" and "rs" in PHASES[collective] and d == last
                flags = policy(rs.phase, rs.index, k, first_ring, last_ring, follows_rs)
                if flags["engine"] == "nic":
                    flags = {**flags, "nic_share": share}
                which = np.full(topology.nodes, g - t, dtype=np.int64)
                for direction, dst, off, cnt in _chunks(topology, d, bases[d], rs, bidirectional):
                    o, c = split(off, cnt, S, which)
                    yield Step(rs.phase, d, direction, rs.index, nodes, dst, o, c, **flags, group=group)
            group += 1


def pipelined_schedule(algo: str, collective: str, topology: Torus, count: int, bidirectional: bool,
                       segment_elems: int, policy: Policy = host_policy) -> Schedule:
    """The schedule of a pipelined ring algorithm: :func:`pipelined_steps` with ``policy`` and segments of
    ``segment_elems`` elements (at least 1)."""
    segment_elems = max(1, int(segment_elems))
    off, cnt = final_segments(topology, count)
    runs = plan_runs(topology, count, collective, segment_elems, bidirectional)
    return Schedule(collective, algo, topology, count,
                    lambda: pipelined_steps(topology, count, collective, segment_elems, bidirectional, policy),
                    off, cnt, bidirectional, segment_elems=segment_elems,
                    transfers=transfer_count(topology, runs, bidirectional))


def build(collective: str, topology: Torus, count: int, bidirectional: bool = False, *,
          segment_elems: int) -> Schedule:
    """The pipelined host ring with segments of ``segment_elems`` elements (at least 1)."""
    return pipelined_schedule(ALGO, collective, topology, count, bidirectional, segment_elems)
