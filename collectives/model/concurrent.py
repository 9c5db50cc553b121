"""Concurrent collectives on one fabric: each call's flows, their dependencies, and the shared replay.

A call runs alone through the model executor's own step timing (the same
``send_half``/``receive_half`` as ``run_model``), which gives every transfer's
window (first to last byte at the receiver) and every node's completion. The
transfers become flows on the physical fabric (collectives/model/fabric.py:
the directed links of a ring or torus, the ports of a switch), a call's
logical node ``i`` sitting on physical node ``nodes[i]``. A transfer depends on
what its sender received and sent in the latest earlier step group it took part
in. nic/fabric_replay.py then shares the links among all calls' flows and
returns delays; a node finishes its alone completion plus the largest delay of
the flows it sent or received. docs/model.md §21.6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nicemu.collectives.model.fabric import Fabric
from nicemu.collectives.model.node_work import (
    NODE_RESOURCES,
    PCIE_READ,
    WorkRecorder,
    node_capacity,
    quiet,
    work_dependencies,
)
from nicemu.collectives.model.step_timing import make_agents, part_bytes, receive_half, send_half
from nicemu.collectives.schedules.steps import Schedule, step_groups
from nicemu.errors import CollectiveError
from nicemu.nic.fabric import Routes
from nicemu.nic.fabric_replay import Edges, by_window, matches, replay
from nicemu.nic.profile import Profile
from nicemu.topologies import LinkParams, Torus, switch


@dataclass(frozen=True)
class Call:
    """One collective call on the fabric: its schedule (on its own topology) and where its nodes sit."""

    schedule: Schedule
    nodes: np.ndarray     # physical node of each of the schedule's nodes
    itemsize: int
    start_us: float = 0.0  # when its first iteration starts
    repeat: int = 1        # iterations, each after the previous one has finished on every node
    gap_us: float = 0.0    # idle time between iterations (compute, or nothing)


@dataclass
class CallFlows:
    """A call alone: its transfers (logical nodes), their windows, and each node's completion."""

    src: np.ndarray
    dst: np.ndarray
    nbytes: np.ndarray        # payload plus headers after the first packet (bytes): what the window moves
    framed: np.ndarray        # payload plus headers (bytes)
    first: np.ndarray         # first byte at the receiver (µs), alone
    last: np.ndarray          # last byte at the receiver (µs), alone
    after_end: tuple[np.ndarray, np.ndarray]    # (dependency, dependent) pairs, call-local flow ids
    after_start: tuple[np.ndarray, np.ndarray]
    node_done: np.ndarray     # completion of every node alone (µs)
    wire_bytes: int
    uses: np.ndarray          # per flow: the node resources its stream crosses (bits, see _node_uses)
    slot: np.ndarray | None = None   # per flow: -1 for a transfer, a work flow's node resource (node_work.py)

    def __post_init__(self) -> None:
        if self.slot is None:                   # transfers only
            self.slot = np.full(len(self.src), -1, dtype=np.int64)


@dataclass
class ConcurrentTiming:
    """One call's outcome on the shared fabric."""

    emulated_us: float        # from the call's start to its slowest node's end, sharing the fabric
    alone_us: float           # the same, alone
    node_done_us: np.ndarray  # per node of the call, sharing (from its start)
    wire_bytes: int           # over all its iterations
    slowed_flows: int         # transfers that ran below their alone rate at some time

    @property
    def slowdown_vs_alone(self) -> float:
        return self.emulated_us / self.alone_us if self.alone_us > 0 else 1.0


#: transfers the replay of one run may hold (about 300 bytes each at its peak)
MAX_FLOWS = 8_000_000


def transfers(schedule: Schedule) -> int:
    """The transfers of a schedule, counted without timing it."""
    if schedule.transfers:
        return schedule.transfers
    return sum(len(step.src) for step in schedule.steps())


def call_flows(schedule: Schedule, profile: Profile, itemsize: int) -> CallFlows:
    """Run ``schedule`` alone (as ``run_model`` does) and keep what the replay needs: its transfers, then
    the work its receivers do on their node resources (collectives/model/node_work.py)."""
    topo = schedule.topology
    if topo.ranks_per_node > 1:
        raise CollectiveError("concurrent calls run with one rank per node; drop --ranks-per-node")
    agents = make_agents(topo, profile, topo.nodes)
    recorder = WorkRecorder(profile)
    agents.telemetry = recorder         # reports services only; the timing is the same without it
    n = topo.nodes
    recv_group = np.full(n, -1, dtype=np.int64)    # latest group in which each node received
    src, dst, size, first, last, grp, rg, uses = ([] for _ in range(8))
    number = 0
    for group in step_groups(schedule.steps()):
        arrivals = []
        for step in group:
            f, la = send_half(agents, step, step.src, step.count * itemsize, part_bytes(step.host_count, itemsize))
            arrivals.append((f, la))
            keep = step.src != step.dst
            src.append(step.src[keep])
            dst.append(step.dst[keep])
            size.append((step.count * itemsize)[keep])
            first.append(np.broadcast_to(f, step.src.shape)[keep])
            last.append(np.broadcast_to(la, step.src.shape)[keep])
            grp.append(np.full(int(keep.sum()), number, dtype=np.int64))
            rg.append(recv_group[step.src[keep]])
            uses.append(np.full(int(keep.sum()), _node_uses(step), dtype=np.int64))
        recorder.group = number
        for step, (f, la) in zip(group, arrivals):
            receive_half(agents, step, step.dst, f, la, step.count * itemsize, part_bytes(step.final_count, itemsize))
        recorder.group = -1
        for step in group:
            recv_group[step.dst] = number
        number += 1
    agents.telemetry = None
    src, dst, size = _cat(src, np.int64), _cat(dst, np.int64), _cat(size, np.int64)
    first, last = _cat(first, np.float64), _cat(last, np.float64)
    grp, rg, uses = _cat(grp, np.int64), _cat(rg, np.int64), _cat(uses, np.int64)
    header, packet = profile.link.header_bytes, profile.nic.packet_bytes
    framed = size + np.ceil(size / packet) * header
    # a stream's first packet arrives one packet time after it starts: the window holds the rest
    rest = framed - np.where(size > 0, np.minimum(size, packet) + header, 0)
    k = len(src)
    recv_key = grp * n + dst
    recv_dep, recv_tgt = matches(recv_key, rg * n + src, rg >= 0)       # what the sender received last
    by_sender = np.lexsort((np.arange(k), first, src))                   # and its previous send
    same = src[by_sender[1:]] == src[by_sender[:-1]]
    work = recorder.flows()
    w_dep, w_tgt, w_key = work_dependencies(work, n, recv_key)
    sw_dep, sw_tgt = matches(w_key, rg * n + src, rg >= 0)               # and the work it did on that
    dep = np.concatenate([recv_dep, by_sender[:-1][same], w_dep, sw_dep + k])
    tgt = np.concatenate([recv_tgt, by_sender[1:][same], w_tgt, sw_tgt])
    src, dst = np.concatenate([src, work["node"]]), np.concatenate([dst, work["node"]])
    first, last = np.concatenate([first, work["first"]]), np.concatenate([last, work["last"]])
    after_end, after_start = by_window(first, last, dep, tgt)
    return CallFlows(src, dst, np.concatenate([rest, work["nbytes"]]), np.concatenate([framed, work["nbytes"]]),
                     first, last, after_end, after_start, agents.clock.copy(),
                     int(agents.links.bytes_sent), np.concatenate([uses, np.zeros(len(work["node"]), np.int64)]),
                     np.concatenate([np.full(k, -1, dtype=np.int64), work["slot"]]))


#: node resources a stream crosses while it flows, besides links (bits of CallFlows.uses)
_SRC_PCIE_READ = 1


def _node_uses(step) -> int:
    """The node resources a step's streams cross while they flow: the sender's DMA read when the chunk
    comes from host memory (it feeds the link packet by packet). What the receiver does with the chunk
    (DMA write, NIC engine, host pass, DRAM) is a work flow of its own (collectives/model/node_work.py)."""
    return _SRC_PCIE_READ if step.from_host else 0


def _cat(parts: list, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def run_concurrent(calls: list[Call], topology: Torus, profile: Profile,
                   loads: list | None = None) -> list[ConcurrentTiming]:
    """Every call of ``calls`` started at time 0 on the fabric of ``topology`` (docs/model.md §21.6).

    Calls that share no link with any other keep their alone timing exactly. The others are replayed
    together; a node's delay is what the shared replay adds over the call's replay alone, so a call's
    own overlaps (which its step model may time without sharing) are not counted as contention.
    ``loads``: a list that receives the bytes every resource carried over all calls (ids as
    :func:`resource_name` reads them), for the hot links of a run."""
    if not calls:
        return []
    fabric = Fabric(topology, profile)
    capacity = resource_capacity(fabric)
    entries = dense_entries(calls, fabric, capacity)
    if loads is not None:
        carried = np.zeros(len(capacity))
        for c, e in zip(calls, entries):
            routes = e.placed.routes
            k = len(e.flows.src)
            weights = np.repeat(e.flows.framed, np.diff(routes.offsets[:k + 1])) * c.repeat
            carried += np.bincount(routes.resources[:routes.offsets[k]], weights=weights, minlength=len(carried))
        loads.append(carried)
    return share(entries, fabric, capacity)


@dataclass
class Entry:
    """A call ready for the shared replay: alone, placed over all its iterations, and how it replays alone."""

    flows: CallFlows          # alone: node_done per node, wire_bytes of one iteration
    placed: PlacedFlows
    key: tuple                # entries with equal keys replay alone alike
    repeat: int
    nodes: int                # its nodes: the first ``nodes`` of the replay's endpoints
    native: Callable[[], np.ndarray] | None = None   # its replay alone on its own topology; None: all of
                                                     # its replay alone is the step model's own overlaps


def check_calls(calls: list[Call]) -> None:
    for c in calls:
        if isinstance(c.repeat, bool) or not isinstance(c.repeat, (int, np.integer)) or c.repeat < 1:
            raise CollectiveError(f"a call repeats a whole number >= 1 of times, got {c.repeat!r}")
        if not (np.isfinite(c.start_us) and c.start_us >= 0 and np.isfinite(c.gap_us) and c.gap_us >= 0):
            raise CollectiveError(f"start_us and gap_us must be finite and >= 0, got {c.start_us}, {c.gap_us}")


def dense_entries(calls: list[Call], fabric: Fabric, capacity: np.ndarray) -> list[Entry]:
    """Time and place each distinct call once (train's buckets of one size, K calls of bench share one)."""
    check_calls(calls)
    topology, profile = fabric.topology, fabric.profile
    _fits(calls, topology, sum(transfers(c.schedule) * c.repeat for c in calls), "transfers")
    seen: dict[tuple, tuple[CallFlows, tuple[Routes, np.ndarray]]] = {}
    out = []
    for c in calls:
        key = (id(c.schedule), c.itemsize, np.asarray(c.nodes).tobytes())
        if key not in seen:
            a = call_flows(c.schedule, profile, c.itemsize)
            seen[key] = a, _placed(fabric, c, a, capacity)
        a, p = seen[key]
        out.append(Entry(a, _expand(c, a, *p), _key(c), c.repeat, len(a.node_done),
                         lambda c=c, a=a: _native(c, a, profile)))
    _fits(calls, topology, sum(len(e.flows.src) * c.repeat for e, c in zip(out, calls)),
          "flows (transfers and their receivers' work on PCIe, NIC, host and DRAM)")
    return out


def share(entries: list[Entry], fabric: Fabric, capacity: np.ndarray,
          own_cache: dict | None = None) -> list[ConcurrentTiming]:
    """Each entry's timing on the shared fabric (docs/model.md §21.6, step 5). ``own_cache``: a dict kept
    by the caller between runs, for entries whose keys stay valid across runs, holding their replays alone."""
    own: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def own_of(i: int) -> tuple[np.ndarray, np.ndarray]:
        """Per node of entry ``i``: what its replay alone on its own topology adds (the step model's own
        overlaps, not contention), and what its messages sharing the fabric's links among themselves add."""
        e = entries[i]
        if e.key not in own:
            keep = own_cache if own_cache is not None and e.native is None else {}
            if e.key in keep:
                own[e.key] = keep[e.key]
            else:
                zero = np.zeros(e.nodes)
                here = _replay([e.placed], fabric, capacity)[0][0][:e.nodes] if _self_overlap(e.placed) else zero
                step = here if e.native is None else e.native()[:e.nodes] if np.any(here > 0) else zero
                own[e.key] = keep[e.key] = step, np.maximum(here - step, 0.0)
        return own[e.key]

    delays = [own_of(i)[1] for i in range(len(entries))]
    slowed = [0] * len(entries)
    for comp in connected([np.unique(e.placed.routes.resources) for e in entries]):
        if len(comp) < 2:
            continue
        shared, counts = _replay([entries[i].placed for i in comp], fabric, capacity)
        for i, d, c in zip(comp, shared, counts):
            delays[i] = np.maximum(d[:entries[i].nodes] - own_of(i)[0], 0.0)
            slowed[i] = c
    out = []
    for i, (e, d, n) in enumerate(zip(entries, delays, slowed)):
        base = e.placed.before_last + e.flows.node_done[:e.nodes]
        out.append(ConcurrentTiming(float((base + d).max()), float((base + own_of(i)[1]).max()), base + d,
                                    e.flows.wire_bytes * e.repeat, n))
    return out


def _self_overlap(p: PlacedFlows) -> bool:
    """Whether two of a call's flows that take time cross one resource in overlapping windows (alone, the
    replay can slow a flow only then)."""
    lengths = np.diff(p.routes.offsets)
    flow = np.repeat(np.arange(len(p.first)), lengths)
    moving = np.isfinite(p.rate[flow]) & (p.last[flow] > p.first[flow])
    flow, res = flow[moving], p.routes.resources[moving]
    order = np.lexsort((p.first[flow], res))
    flow, res = flow[order], res[order]
    same = res[1:] == res[:-1]
    return bool(np.any(same & (p.first[flow[1:]] < p.last[flow[:-1]])))


def _native(call: Call, a: CallFlows, profile: Profile) -> np.ndarray:
    """Per node, the delays of ``call``'s replay alone on its own topology as a fabric of its own: what the
    step model's own overlaps add (routed algorithms, §21.6 step 5), as opposed to its messages meeting on
    physical links of the fabric that its topology keeps apart."""
    topo = call.schedule.topology
    fab = Fabric(topo, profile)
    cap = resource_capacity(fab)
    home = Call(call.schedule, np.arange(topo.nodes, dtype=np.int64), call.itemsize, 0.0, call.repeat, call.gap_us)
    return _replay([_expand(home, a, *_placed(fab, home, a, cap))], fab, cap)[0][0]


def _fits(calls: list[Call], topology: Torus, flows: int, what: str) -> None:
    """Refuse a replay larger than the memory it may take (checked on transfers before timing, on all flows
    after)."""
    if flows > MAX_FLOWS:
        raise CollectiveError(f"{len(calls)} calls of {calls[0].schedule.algo} on {topology.name} make {flows:,} "
                              f"{what}, over the {MAX_FLOWS:,} the fabric replay holds in memory (about 300 B "
                              f"each); use fewer calls, a smaller size or topology, or an unsegmented algorithm")


def _key(call: Call) -> tuple:
    """Calls with equal keys replay alone alike (a start time only shifts a call's replay alone)."""
    return (id(call.schedule), np.asarray(call.nodes).tobytes(), call.repeat, call.gap_us)


@dataclass
class PlacedFlows:
    """A call's flows over all its iterations, ready for the replay (times absolute, µs)."""

    routes: Routes
    rate: np.ndarray
    first: np.ndarray
    last: np.ndarray
    after_end: tuple[np.ndarray, np.ndarray]
    after_start: tuple[np.ndarray, np.ndarray]
    last_lo: int              # the last iteration's flows are [last_lo, last_lo + len(src))
    src: np.ndarray           # of one iteration's flows (call nodes)
    dst: np.ndarray
    nodes: int
    before_last: float        # start of the last iteration, relative to the call's start


def _expand(call: Call, a: CallFlows, routes: Routes, rate: np.ndarray) -> PlacedFlows:
    """``call.repeat`` iterations of ``a`` from ``call.start_us``. Iteration ``i + 1`` starts ``gap_us`` after
    iteration ``i`` ended on every node: between them sits a flow of no time that waits for all of
    iteration ``i``'s flows (their tails to the nodes' completion are its gaps) and that all of
    iteration ``i + 1``'s flows wait for."""
    k, reps = len(a.src), call.repeat
    span = float(a.node_done.max()) if len(a.node_done) else 0.0
    period = span + call.gap_us
    if reps == 1:
        return PlacedFlows(routes, rate, a.first + call.start_us, a.last + call.start_us, a.after_end, a.after_start,
                      0, a.src, a.dst, len(a.node_done), 0.0)
    block = k + 1                                   # an iteration's flows, then its barrier
    base = np.arange(reps) * block
    first = np.concatenate([np.append(a.first + call.start_us + i * period, call.start_us + i * period + span)
                            for i in range(reps)])
    last = first.copy()
    for i in range(reps):
        last[i * block:i * block + k] = a.last + call.start_us + i * period
    ends = [(a.after_end[0] + b, a.after_end[1] + b) for b in base]
    starts = [(a.after_start[0] + b, a.after_start[1] + b) for b in base]
    every = np.arange(k)
    for i in range(reps):
        barrier = i * block + k
        ends.append((i * block + every, np.full(k, barrier)))                 # iteration i, then its barrier
        if i + 1 < reps:
            ends.append((np.full(k, barrier), (i + 1) * block + every))       # the barrier, then iteration i+1
    lengths = np.diff(routes.offsets)
    all_lengths = np.tile(np.append(lengths, 0), reps)
    offsets = np.concatenate([[0], np.cumsum(all_lengths)]).astype(np.int64)
    res = np.tile(routes.resources, reps)
    rates = np.tile(np.append(rate, np.inf), reps)
    cat = np.concatenate
    return PlacedFlows(Routes(offsets, res), rates, first, last, (cat([e[0] for e in ends]), cat([e[1] for e in ends])),
                  (cat([e[0] for e in starts]), cat([e[1] for e in starts])), (reps - 1) * block, a.src, a.dst,
                  len(a.node_done), (reps - 1) * period)


def _placed(fabric: Fabric, call: Call, a: CallFlows, capacity: np.ndarray | None = None) -> tuple[Routes, np.ndarray]:
    """A call's flows on the physical fabric: (routes, alone rate in bytes/µs per flow). ``capacity``:
    :func:`resource_capacity` of ``fabric``, if the caller has it."""
    nodes = np.asarray(call.nodes, dtype=np.int64)
    topo = call.schedule.topology
    if nodes.shape != (topo.nodes,) or len(np.unique(nodes)) != len(nodes):
        raise CollectiveError(f"a call on {topo.name} needs {topo.nodes} distinct physical nodes, got "
                              f"{len(nodes)} ({len(np.unique(nodes))} distinct)")
    if not len(a.src):
        return Routes(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)), np.zeros(0)
    capacity = resource_capacity(fabric) if capacity is None else capacity
    links, per = len(fabric.capacity), len(NODE_RESOURCES)
    t = np.flatnonzero(a.slot < 0)
    w = np.flatnonzero(a.slot >= 0)
    fs = fabric.flows(nodes[a.src[t]], nodes[a.dst[t]])
    span = a.last - a.first
    own = np.full(len(span), np.inf)
    np.divide(a.nbytes, span, out=own, where=span > 0)
    # the window holds what follows the first packet at the stream's rate, at most its slowest link's
    own[t] = np.minimum(own[t], np.minimum.reduceat(fabric.capacity[fs.routes.resources], fs.routes.offsets[:-1]))
    flow = [t[np.repeat(np.arange(len(t)), np.diff(fs.routes.offsets))]]
    res = [fs.routes.resources]
    read = links + per * nodes[a.src[t]] + PCIE_READ
    # a node resource slower than the stream does not pace it: the NIC buffers and works after
    on = t[(a.uses[t] & _SRC_PCIE_READ).astype(bool) & (own[t] <= capacity[read] * (1 + 1e-12))]
    flow.append(on)
    res.append(links + per * nodes[a.src[on]] + PCIE_READ)
    # work flows: a service at most as fast as its resource (a host's place is overhead only: no load)
    rid = links + per * nodes[a.src[w]] + a.slot[w]
    fits = own[w] <= capacity[rid] * (1 + 1e-12)
    # one that loads nothing cannot be slowed: it replays as an instant flow, with the same delays
    own[w] = np.where(fits, np.minimum(own[w], capacity[rid]), np.inf)
    flow.append(w[fits])
    res.append(rid[fits])
    flow, res = np.concatenate(flow), np.concatenate(res)
    order = np.argsort(flow, kind="stable")
    routes = Routes(np.concatenate([[0], np.cumsum(np.bincount(flow, minlength=len(a.src)))]).astype(np.int64),
                    res[order])
    return routes, own


def resource_capacity(fabric: Fabric) -> np.ndarray:
    """Bytes/µs of the fabric's links, then of every node's resources in ``NODE_RESOURCES`` order (an
    infinite rate, as in ``ideal``, is a resource that never binds)."""
    per_node = node_capacity(fabric.profile)
    per_node = np.where(np.isfinite(per_node), per_node, 1e300)
    return np.concatenate([fabric.capacity, np.tile(per_node, fabric.topology.nodes)])


def resource_name(fabric: Fabric, rid: int) -> str:
    """``5->6/d0+`` for a link (Fabric.resource_name), ``pcie_read@3`` and the like for a node's."""
    links = len(fabric.capacity)
    if rid < links:
        return fabric.resource_name(rid)
    node, slot = divmod(rid - links, len(NODE_RESOURCES))
    return f"{NODE_RESOURCES[slot]}@{node}"


def connected(resources: list[np.ndarray]) -> list[list[int]]:
    """Groups of calls connected by shared resources (union-find over the resource ids)."""
    parent = list(range(len(resources)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, res in enumerate(resources):
        for r in res.tolist():
            j = owner.setdefault(r, i)
            if j != i:
                parent[root(i)] = root(j)
    comps: dict[int, list[int]] = {}
    for i in range(len(resources)):
        comps.setdefault(root(i), []).append(i)
    return list(comps.values())


def _replay(calls: list[PlacedFlows], fabric: Fabric,
            capacity: np.ndarray | None = None) -> tuple[list[np.ndarray], list[int]]:
    """Replay these calls together: per call, each node's delay in its last iteration, and the flows slowed."""
    offsets, resources, start, end, ae, ast = [], [], [], [], [], []
    rate = quiet([(p.routes.offsets, p.routes.resources, p.rate) for p in calls], len(fabric.capacity))
    base = res_base = 0
    for p in calls:
        offsets.append(p.routes.offsets[1:] + res_base)
        resources.append(p.routes.resources)
        res_base += len(p.routes.resources)
        start.append(p.first)
        end.append(p.last)
        ae.append((p.after_end[0] + base, p.after_end[1] + base))
        ast.append((p.after_start[0] + base, p.after_start[1] + base))
        base += len(p.first)
    cat = np.concatenate
    routes = Routes(cat([[0], *offsets]).astype(np.int64), cat(resources).astype(np.int64))
    out = replay(resource_capacity(fabric) if capacity is None else capacity, routes, cat(start), cat(end), cat(rate),
                 Edges.from_pairs(base, cat([p[0] for p in ae]), cat([p[1] for p in ae])),
                 Edges.from_pairs(base, cat([p[0] for p in ast]), cat([p[1] for p in ast])))
    delays, counts = [], []
    base = 0
    for p in calls:
        d = out.end_delay[base + p.last_lo:base + p.last_lo + len(p.src)]
        node = np.zeros(p.nodes)
        np.maximum.at(node, p.src, d)
        np.maximum.at(node, p.dst, d)
        delays.append(node)
        counts.append(int(out.slowed[base:base + len(p.first)].sum()))
        base += len(p.first)
    return delays, counts


PLACEMENTS = ("same", "disjoint", "interleaved")


def place(topology: Torus, profile: Profile, k: int, how: str) -> list[tuple[Torus, np.ndarray]]:
    """Where ``k`` concurrent calls sit: (the call's own topology, its physical nodes) for each.

    ``same``: every call on every node. ``disjoint``: a torus splits into the sub-tori of its trailing
    dimensions (``k`` the product of its leading sizes), a switch into ``k`` blocks of nodes. ``interleaved``:
    on a ring or switch, call ``j`` on nodes ``j, j + k, j + 2k, ...``; on a ring its hops cross ``k``
    links each (and pay their latencies), so the calls share every link."""
    if how not in PLACEMENTS:
        raise CollectiveError(f"unknown placement {how!r}; use one of {', '.join(PLACEMENTS)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise CollectiveError(f"the number of concurrent calls must be a whole number >= 1, got {k!r}")
    n = topology.nodes
    if topology.ranks_per_node > 1:
        raise CollectiveError("concurrent calls run with one rank per node; drop --ranks-per-node")
    if how == "same" or k == 1:
        return [(topology, np.arange(n, dtype=np.int64)) for _ in range(k)]
    one_dim = topology.ndim == 1
    if how == "disjoint" and not (one_dim and topology.switched):
        if one_dim:
            raise CollectiveError(f"{topology.name} has no disjoint sub-rings; use --concurrent-groups "
                                  "interleaved or same, or a torus")
        prods = np.cumprod(topology.shape[:-1]).tolist()
        if k not in prods:
            raise CollectiveError(f"{topology.name}: {k} disjoint calls do not split it into sub-tori; use "
                                  f"K in {', '.join(map(str, prods))} (products of its leading dimensions)")
        lead = prods.index(k) + 1
        rest = topology.shape[lead:]
        links = topology.dim_links[lead:]
        size = int(np.prod(rest))
        sub = Torus(rest, dim_links=links)
        return [(sub, j * size + np.arange(size, dtype=np.int64)) for j in range(k)]
    if not one_dim:
        raise CollectiveError(f"interleaved calls run on a ring or a switch; {topology.name} is a torus: use "
                              "--concurrent-groups disjoint or same")
    if n % k or n // k < 2:
        raise CollectiveError(f"{k} {how} calls on {topology.name}: {k} must divide {n} and leave at least "
                              f"2 nodes per call")
    m = n // k
    if topology.switched:
        sub = switch(m)
        groups = [np.arange(m, dtype=np.int64) * k + j for j in range(k)] if how == "interleaved" else \
                 [j * m + np.arange(m, dtype=np.int64) for j in range(k)]
        return [(sub, g) for g in groups]
    phys = topology.link_params(0, LinkParams(profile.link.bandwidth_GBps, profile.link.latency_us))
    hop = LinkParams(phys.bandwidth_GBps, k * phys.latency_us)
    return [(Torus((m,), name=f"ring:{m}", dim_links=[hop]), np.arange(m, dtype=np.int64) * k + j)
            for j in range(k)]
