"""Schedules: what every node sends where, and how the receiver handles it.

An algorithm compiles a collective into a list of :class:`Step` objects. A step
is plain data: arrays over its transfers (source node, destination node, the
element range of the chunk), plus where the data is handled (host CPU or NIC),
whether it is reduced or placed, and what crosses PCIe. Both executors consume
the same steps and neither knows which algorithm produced them; printing a
schedule (``describe``) shows the whole algorithm as a chunk-level program.

Within one step every node sends at most one chunk and receives at most one,
and no node writes a range it sends in the same step, so a step can run in any
order; the one exception is an ``exchange`` step (recursive doubling), whose
nodes swap whole vectors with their partners: its sends read the state from
before the step. Consecutive steps with the same ``group`` run concurrently: every
sender half of the group sees the node state from before the group (this is
how a bidirectional ring sends one half of each chunk each way at once, and
how the pipelined ring sends several segments of different ring steps in one
wavefront); no node writes, anywhere in a group, a range it sends in that group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from nicemu.collectives.schedules.routing import Route
from nicemu.topologies import Torus


@dataclass(frozen=True)
class Step:
    phase: str                 # "rs" (reduce-scatter) or "ag" (allgather)
    dim: int                   # topology dimension whose links are used
    direction: int             # +1 or -1 along that dimension
    index: int                 # step number within its ring (0 .. k-2)
    src: np.ndarray            # sending node of each transfer
    dst: np.ndarray            # receiving node of each transfer
    offset: np.ndarray         # first element of the chunk (same range at both ends)
    count: np.ndarray          # elements in the chunk
    engine: str                # "host" or "nic": who handles the data at the receiver
    reduce: bool               # combine with the receiver's copy, or place it
    from_host: bool            # the sender's chunk must be DMA-read from host memory
    to_host: bool              # the result must be DMA-written to host memory
    operand_from_host: bool = True  # nic engine: the local operand is fetched from host memory
    group: int = -1            # steps of one group run concurrently (bidirectional rings)
    # All-to-all only (collectives/schedules/alltoall.py); the defaults leave every other schedule as it was.
    dst_offset: np.ndarray | None = None   # first element at the receiver (None: same as offset)
    host_count: np.ndarray | None = None   # nic engine: elements of a NIC-resident chunk that are DMA-read
    final_count: np.ndarray | None = None  # nic engine: elements that reach their destination (DMA-written)
    hold_count: np.ndarray | None = None   # nic engine: elements that stay in the NIC for a later torus dimension
    cut_through: bool = False  # forward the previous step's incoming stream as its packets arrive
    # Partners that are not neighbours (recursive doubling, Rabenseifner, trees; collectives/schedules/routing.py):
    # the transfers' routes and link sharing; ``dim``/``direction`` are then unused.
    route: Route | None = None
    exchange: bool = False     # a node receives into the range it sends: every send reads the state
                               # from before the step (the transports complete the sends first)
    local: bool = False        # ranks of one node (--ranks-per-node): through host memory, no NIC or link
    dram_per_byte: float | None = None  # local steps: host DRAM bytes per byte of the receiver's pass
    nic_share: float = 1.0     # nic engine: the share of nic.memory_KiB this transfer's chunk may hold
                               # (the two directions of a bidirectional ring hold one chunk each at once)
    early_operand: bool = False  # nic engine, reduce: the host-resident operand is prefetched when the
                                 # receiver's group begins (its sends), not after its earlier receives

    def describe(self, limit: int = 4) -> str:
        head = (f"{self.phase} dim={self.dim} dir={self.direction:+d} step={self.index} "
                f"engine={self.engine} {'reduce' if self.reduce else 'place'} "
                f"from_host={self.from_host} to_host={self.to_host}"
                + ("" if self.engine == "host" or not self.reduce
                   else f" operand_from_host={self.operand_from_host}")
                + (" early_operand" if self.early_operand else "")
                + (" cut_through" if self.cut_through else "")
                + ("" if self.route is None else f" routed(load={self.route.load})")
                + (" exchange" if self.exchange else "")
                + (f" local(dram {self.dram_per_byte:g} B/B)" if self.local else "")
                + ("" if self.host_count is None else f" host_count={int(self.host_count[0])}")
                + ("" if self.final_count is None else f" final_count={int(self.final_count[0])}")
                + ("" if self.hold_count is None or not self.hold_count[0] else
                   f" hold_count={int(self.hold_count[0])}"))
        if self.dst_offset is None:
            items = [f"{s}->{d}[{o}:{o + c}]" for s, d, o, c in
                     zip(self.src[:limit], self.dst[:limit], self.offset[:limit], self.count[:limit])]
        else:
            items = [f"{s}[{o}:{o + c}]->{d}[{t}:{t + c}]" for s, d, o, t, c in
                     zip(self.src[:limit], self.dst[:limit], self.offset[:limit],
                         self.dst_offset[:limit], self.count[:limit])]
        more = f" ... ({len(self.src)} transfers)" if len(self.src) > limit else ""
        return head + "\n    " + "  ".join(items) + more


@dataclass
class Schedule:
    """A collective compiled for one topology and element count."""

    collective: str
    algo: str
    topology: Torus
    count: int
    make_steps: Callable[[], Iterator[Step]] = field(repr=False)
    #: element range each node owns after a reduce-scatter / contributes to an allgather
    segment_offset: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    segment_count: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    bidirectional: bool = False
    #: all-to-all: elements per node row the executor works on (a staging area; 0: ``count``)
    width: int = 0
    #: all-to-all: {step index: block permutation applied to every node's row before that step}.
    #: It only re-indexes host memory between torus dimensions, so it takes no emulated time.
    make_relayouts: Callable[[], dict[int, np.ndarray]] | None = field(repr=False, default=None)
    #: segmented algorithms (``ring-pipelined``): elements per pipeline segment (0: not segmented)
    segment_elems: int = 0
    #: segmented algorithms: transfers in the whole schedule, known before it is generated (0: not counted)
    transfers: int = 0
    #: rooted collectives (broadcast, reduce): the root node (collectives/schedules/rooted.py)
    root: int = 0

    def steps(self) -> Iterator[Step]:
        """Steps are generated lazily: a 262,144-node schedule never sits in memory whole."""
        return self.make_steps()

    def describe(self, limit: int = 4) -> str:
        lines = [f"{self.collective} {self.algo} on {self.topology.describe()}, count={self.count}"]
        if self.segment_elems:
            lines[0] += f", segments of at most {self.segment_elems} elements"
        if self.collective in ("broadcast", "reduce"):
            lines[0] += f", root {self.root}"
        if self.width:
            lines[0] += f", staging row of {self.width} elements"
        relayouts = self.make_relayouts() if self.make_relayouts is not None else {}
        for i, s in enumerate(self.steps()):
            if i in relayouts:
                lines.append(f"  relayout: every node regroups its {len(relayouts[i])} staging blocks "
                             f"for dim {s.dim} (host memory, no emulated time)")
            lines.append("  " + (f"[group {s.group}] " if self.segment_elems else "") + s.describe(limit))
        return "\n".join(lines)


def step_groups(steps: Iterable) -> Iterator[list]:
    """Consecutive steps (or per-step plans with a ``step``) that share a group."""
    group: list = []
    for item in steps:
        g = getattr(item, "group", None)
        g = item.step.group if g is None else g
        if group:
            first = getattr(group[0], "group", None)
            first = group[0].step.group if first is None else first
            if g != first or g < 0:
                yield group
                group = []
        group.append(item)
    if group:
        yield group


def split(offset: np.ndarray, count: np.ndarray, parts: int, which: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Sub-range ``which`` of ``parts`` near-equal pieces of each range (first pieces get the extra)."""
    q, r = np.divmod(count, parts)
    return offset + which * q + np.minimum(which, r), q + (which < r)


def final_segments(topology: Torus, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The element range every node owns after a dimension-wise reduce-scatter.

    Splitting dimension by dimension with nested near-equal pieces gives node
    ``i`` the ``i``-th contiguous range, because node ids are row-major.
    """
    nodes = np.arange(topology.nodes, dtype=np.int64)
    off = np.zeros(topology.nodes, dtype=np.int64)
    cnt = np.full(topology.nodes, count, dtype=np.int64)
    for d, k in enumerate(topology.shape):
        off, cnt = split(off, cnt, k, topology.ring_position(nodes, d))
    return off, cnt
