"""Recursive doubling and Rabenseifner's algorithm, as MPICH runs them on the host.

Both work on a power-of-two number of nodes p' = 2^⌊lg p⌋. With p nodes and
r = p - p' left over, MPICH first *folds* the extra nodes in: for i < r, node
2i sends its whole vector to node 2i+1, which reduces it (allgather: its
segment, which it places), and node 2i sits out. The p' remaining nodes
(core rank q: node 2q+1 for q < r, else node q + r) run the algorithm; at the
end every node 2i+1 sends node 2i what it needs (fold-out). Thakur,
Rabenseifner and Gropp (2005) give the costs; docs/model.md lists them.

* ``recursive-doubling`` (allreduce): in step k (k = 0 .. lg p' - 1) every core
  node swaps its whole vector with core partner q XOR 2^k and reduces: lg p'
  steps of the full size (an ``exchange`` step: each send reads the vector from
  before the step). Allgather: the same pattern on segments, each step
  doubling what a node holds.
* ``rabenseifner``: reduce-scatter by recursive halving, then allgather by
  recursive doubling. In AllReduce (as MPICH does) the halving pairs nodes at
  distance 1 first, where the halves are largest, so on a ring or torus the
  biggest transfers cross the fewest links; the allgather runs the pattern
  backwards. As a ReduceScatter it halves from distance p'/2 down so that node
  i ends with segment i, as ``ring`` does.

Every transfer is host to host (engine ``host``: DMA read, link(s), DMA write,
host reduce), routed over the topology (collectives/schedules/routing.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from nicemu.collectives.schedules.routing import route
from nicemu.collectives.schedules.steps import Schedule, Step, final_segments, split
from nicemu.topologies import Torus


def core_nodes(p: int) -> tuple[int, int, np.ndarray]:
    """(p', r, node of every core rank) for MPICH's non-power-of-two fold."""
    pof2 = 1 << (p.bit_length() - 1)
    rem = p - pof2
    q = np.arange(pof2, dtype=np.int64)
    return pof2, rem, np.where(q < rem, 2 * q + 1, q + rem)


def node_segments(topology: Torus, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Node i's segment of a ReduceScatter / AllGather: the same as ``ring``'s (contiguous, in node order)."""
    return final_segments(topology, count)


def host_step(topology: Torus, phase: str, index: int, src: np.ndarray, dst: np.ndarray, off: np.ndarray,
              cnt: np.ndarray, reduce: bool, exchange: bool = False) -> Step:
    """A host-to-host step between partners that need not be neighbours."""
    return Step(phase, 0, 1, index, src, dst, off, cnt, engine="host", reduce=reduce, from_host=True,
                to_host=True, route=route(topology, src, dst), exchange=exchange)


def _fold_in(topology: Torus, rem: int, off: np.ndarray, cnt: np.ndarray, reduce: bool) -> Iterator[Step]:
    """Nodes 2i -> 2i+1 for i < rem (``off``/``cnt``: the range each even node sends)."""
    if rem:
        even = np.arange(0, 2 * rem, 2, dtype=np.int64)
        yield host_step(topology, "fold", 0, even, even + 1, off[even], cnt[even], reduce)


def _fold_out(topology: Torus, rem: int, off: np.ndarray, cnt: np.ndarray) -> Iterator[Step]:
    """Nodes 2i+1 -> 2i for i < rem: the range the even node must end with."""
    if rem:
        even = np.arange(0, 2 * rem, 2, dtype=np.int64)
        yield host_step(topology, "unfold", 0, even + 1, even, off[even], cnt[even], False)


def recursive_doubling_steps(topology: Torus, count: int) -> Iterator[Step]:
    """AllReduce by recursive doubling (MPICH's short-message algorithm)."""
    p = topology.nodes
    pof2, rem, node = core_nodes(p)
    full_off, full_cnt = np.zeros(p, dtype=np.int64), np.full(p, count, dtype=np.int64)
    yield from _fold_in(topology, rem, full_off, full_cnt, True)
    q = np.arange(pof2, dtype=np.int64)
    for k in range(pof2.bit_length() - 1):
        src, dst = node, node[q ^ (1 << k)]
        yield host_step(topology, "rd", k, src, dst, full_off[:pof2], full_cnt[:pof2], True, exchange=True)
    yield from _fold_out(topology, rem, full_off, full_cnt)


def _blocks(seg_off: np.ndarray, seg_cnt: np.ndarray, lo: np.ndarray, hi: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Element range of the contiguous blocks lo..hi-1 (per transfer)."""
    ends = seg_off + seg_cnt
    return seg_off[lo], ends[hi - 1] - seg_off[lo]


def _core_blocks(topology: Torus, count: int, pieces: str) -> tuple[np.ndarray, np.ndarray]:
    """The pieces the core ranks split the vector into: one per core rank (``allreduce``: p' near-equal
    pieces) or, for ReduceScatter/AllGather, the node segments each core rank stands for."""
    pof2, rem, _ = core_nodes(topology.nodes)
    if pieces == "even":
        return split(np.zeros(pof2, dtype=np.int64), np.full(pof2, count, dtype=np.int64), pof2, np.arange(pof2))
    seg_off, seg_cnt = node_segments(topology, count)
    q = np.arange(pof2)
    first = np.where(q < rem, 2 * q, q + rem)              # core rank q stands for nodes first..last
    last = np.where(q < rem, 2 * q + 1, q + rem)
    return seg_off[first], seg_off[last] + seg_cnt[last] - seg_off[first]


def halving_steps(topology: Torus, count: int, near_first: bool, pieces: str,
                  index0: int = 0) -> Iterator[Step]:
    """Reduce-scatter by recursive halving over the core ranks; core rank q ends with piece
    ``q`` (far partners first) or piece bitreverse(q) (near partners first)."""
    pof2, _, node = core_nodes(topology.nodes)
    b_off, b_cnt = _core_blocks(topology, count, pieces)
    q = np.arange(pof2, dtype=np.int64)
    lo, hi = np.zeros(pof2, dtype=np.int64), np.full(pof2, pof2, dtype=np.int64)
    levels = pof2.bit_length() - 1
    for i in range(levels):
        k = i if near_first else levels - 1 - i
        partner = q ^ (1 << k)
        mid = (lo + hi) // 2
        keep_low = (q & (1 << k)) == 0
        # send the half this node gives up; the partner reduces it into the same range
        s_lo, s_hi = np.where(keep_low, mid, lo), np.where(keep_low, hi, mid)
        off, cnt = _blocks(b_off, b_cnt, s_lo, s_hi)
        yield host_step(topology, "rs", index0 + i, node, node[partner], off, cnt, True)
        lo, hi = np.where(keep_low, lo, mid), np.where(keep_low, mid, hi)


def doubling_allgather_steps(topology: Torus, count: int, near_first: bool, pieces: str,
                             index0: int = 0) -> Iterator[Step]:
    """Allgather by recursive doubling over the core ranks (the inverse of :func:`halving_steps`
    with the same ``near_first``: every step doubles what a node holds)."""
    pof2, _, node = core_nodes(topology.nodes)
    b_off, b_cnt = _core_blocks(topology, count, pieces)
    q = np.arange(pof2, dtype=np.int64)
    levels = pof2.bit_length() - 1
    # what each core rank holds at the start: its piece after the matching halving
    held = _reverse_bits(q, levels) if near_first else q
    lo, hi = held.copy(), held + 1
    for i in range(levels):
        k = levels - 1 - i if near_first else i
        partner = q ^ (1 << k)
        off, cnt = _blocks(b_off, b_cnt, lo, hi)
        yield host_step(topology, "ag", index0 + i, node, node[partner], off, cnt, False)
        size = hi - lo
        lo, hi = np.minimum(lo, lo[partner]), np.maximum(hi, hi[partner])
        assert np.all(hi - lo == 2 * size)


def _reverse_bits(q: np.ndarray, bits: int) -> np.ndarray:
    out = np.zeros_like(q)
    for b in range(bits):
        out |= ((q >> b) & 1) << (bits - 1 - b)
    return out


def rabenseifner_steps(topology: Torus, count: int, collective: str) -> Iterator[Step]:
    p = topology.nodes
    pof2, rem, _ = core_nodes(p)
    full_off, full_cnt = np.zeros(p, dtype=np.int64), np.full(p, count, dtype=np.int64)
    seg_off, seg_cnt = node_segments(topology, count)
    if collective == "allreduce":
        yield from _fold_in(topology, rem, full_off, full_cnt, True)
        yield from halving_steps(topology, count, True, "even")
        yield from doubling_allgather_steps(topology, count, True, "even")
        yield from _fold_out(topology, rem, full_off, full_cnt)
    elif collective == "reducescatter":
        yield from _fold_in(topology, rem, full_off, full_cnt, True)
        yield from halving_steps(topology, count, False, "nodes")
        yield from _fold_out(topology, rem, seg_off, seg_cnt)
    else:
        yield from _fold_in(topology, rem, seg_off, seg_cnt, False)
        yield from doubling_allgather_steps(topology, count, False, "nodes")
        yield from _fold_out(topology, rem, full_off, full_cnt)


def recursive_doubling_allgather_steps(topology: Torus, count: int) -> Iterator[Step]:
    p = topology.nodes
    _, rem, _ = core_nodes(p)
    seg_off, seg_cnt = node_segments(topology, count)
    full_off, full_cnt = np.zeros(p, dtype=np.int64), np.full(p, count, dtype=np.int64)
    yield from _fold_in(topology, rem, seg_off, seg_cnt, False)
    yield from doubling_allgather_steps(topology, count, False, "nodes")
    yield from _fold_out(topology, rem, full_off, full_cnt)


def build_recursive_doubling(collective: str, topology: Torus, count: int, bidirectional: bool = False
                             ) -> Schedule:
    off, cnt = node_segments(topology, count)
    if collective == "allreduce":
        make = lambda: recursive_doubling_steps(topology, count)   # noqa: E731
    else:
        make = lambda: recursive_doubling_allgather_steps(topology, count)   # noqa: E731
    return Schedule(collective, "recursive-doubling", topology, count, make, off, cnt)


def build_rabenseifner(collective: str, topology: Torus, count: int, bidirectional: bool = False) -> Schedule:
    off, cnt = node_segments(topology, count)
    return Schedule(collective, "rabenseifner", topology, count,
                    lambda: rabenseifner_steps(topology, count, collective), off, cnt)
