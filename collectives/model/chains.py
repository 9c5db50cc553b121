"""Chains of calls on one fabric: each chain issues collectives and transfers one after another, with idle
or compute time between them, and the chains share the fabric's links.

:func:`~nicemu.collectives.model.concurrent.run_concurrent` starts every call at a fixed time. A serving
instance is a *chain* instead: its next call (or its next pass) starts when the previous one has ended,
so a call slowed by another instance's traffic delays everything the instance does after it, until an
idle wait (for a request to arrive) absorbs the delay. :class:`Chains` builds that as one replay
(nic/fabric_replay.py): *markers* (flows of no time) stand for the points of a chain (a pass starts,
a call starts, a call ends), each call's transfers become flows between its start and end markers,
and a dependency may carry *slack*, the idle time that absorbs delay. docs/model.md §21.7.

A call's end marker is late by what the call's slowest node is late, net of what the call's replay alone
adds (a call whose step model shares a link within a step slows itself when replayed, §21.6): the end
marker waits for every flow ``f`` with slack ``S − done(f)``, where ``S`` is the call's completion in its
replay alone and ``done(f)`` the alone completion of the later of ``f``'s two nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nicemu.collectives.model.concurrent import NODE_RESOURCES, Call, _placed, call_flows, resource_capacity
from nicemu.collectives.model.fabric import Fabric
from nicemu.collectives.model.node_work import PCIE_READ, PCIE_WRITE, quiet
from nicemu.collectives.model.p2p_timing import arrivals, receive_windows
from nicemu.collectives.model.sparse_flows import SparseCall, SparseFlows
from nicemu.collectives.model.sparse_flows import placed as sparse_placed
from nicemu.collectives.schedules.steps import Schedule
from nicemu.errors import CollectiveError
from nicemu.nic.fabric import Routes
from nicemu.nic.fabric_replay import Edges, by_window, replay, spans
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus


@dataclass
class _Alone:
    """One distinct call alone, placed on the fabric: what every copy of it adds to the replay."""

    first: np.ndarray          # per flow, from the call's start (µs)
    last: np.ndarray
    rate: np.ndarray           # alone rate (bytes/µs)
    offsets: np.ndarray        # per flow, into resources
    resources: np.ndarray
    after_end: tuple[np.ndarray, np.ndarray]
    after_start: tuple[np.ndarray, np.ndarray]
    end_slack: np.ndarray      # per flow: slack of its edge to the call's end marker
    span_us: float             # the call alone, start to slowest node (µs)
    uses: frozenset[int]       # every resource it loads


@dataclass
class ChainsResult:
    """Delays of every marker (µs later than alone), and how many flows were slowed."""

    delay: np.ndarray
    slowed_flows: int
    flows: int


class Chains:
    """Markers, calls and transfers of several chains on the fabric of ``topology``; :meth:`run` replays them."""

    def __init__(self, topology: Torus, profile: Profile) -> None:
        if topology.ranks_per_node > 1:
            raise CollectiveError("the shared fabric runs with one rank per node; drop --ranks-per-node")
        self.topology, self.profile = topology, profile
        self.fabric = Fabric(topology, profile)
        self.capacity = resource_capacity(self.fabric)
        self._alone: dict[tuple, _Alone] = {}
        self._parts: list[tuple] = []      # (first, last, rate, offsets, resources, chain)
        self._end_edges: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._start_edges: list[tuple[np.ndarray, np.ndarray]] = []
        self.flows = 0
        self.markers: list[int] = []       # flow id of every marker

    def clear(self) -> None:
        """Forget the chains (markers, placed calls); keep the calls alone, to build another replay."""
        self._parts, self._end_edges, self._start_edges = [], [], []
        self.flows = 0
        self.markers = []

    # -- what a call or transfer puts on the fabric ------------------------------------------------------

    def cached(self, key: tuple) -> _Alone | None:
        """The call alone under ``key``, if one was put on the fabric (to skip building its flows again)."""
        return self._alone.get(key)

    def collective(self, key: tuple, schedule: Schedule, nodes: Sequence[int], itemsize: int) -> _Alone:
        """A collective on physical ``nodes`` (cached by ``key``)."""
        hit = self._alone.get(key)
        if hit is None:
            call = Call(schedule, np.asarray(nodes, dtype=np.int64), itemsize)
            a = call_flows(schedule, self.profile, itemsize)
            routes, rate = _placed(self.fabric, call, a)
            done = a.node_done
            later = np.maximum(done[a.src], done[a.dst]) if len(a.src) else np.zeros(0)
            hit = self._finish(key, a.first, a.last, rate, routes, a.after_end, a.after_start, later,
                               float(done.max()) if len(done) else 0.0)
        return hit

    def sparse(self, key: tuple, alone: SparseFlows, nodes: Sequence[int]) -> _Alone:
        """A sparse AllReduce (the spot protocol's messages, sparse_flows.py) with its workers on physical
        ``nodes`` (cached by ``key``). A message's completion alone is that of the later of its workers (a
        dedicated aggregator's message counts its worker's)."""
        hit = self._alone.get(key)
        if hit is None:
            f = alone.flows
            routes, rate = sparse_placed(self.fabric, SparseCall(alone, np.asarray(nodes, dtype=np.int64)))
            done = np.concatenate([f.node_done, np.zeros(len(alone.aggregator_node))])
            later = np.maximum(done[f.src], done[f.dst]) if len(f.src) else np.zeros(0)
            hit = self._finish(key, f.first, f.last, rate, routes, f.after_end, f.after_start, later,
                               float(f.node_done.max()) if len(f.node_done) else 0.0)
        return hit

    def transfers(self, key: tuple, pairs: Sequence[tuple[int, int]], nbytes: int, path: str) -> _Alone:
        """Point-to-point transfers issued together (collectives/schedules/p2p.py), cached by ``key``."""
        hit = self._alone.get(key)
        if hit is None:
            prof = self.profile
            arr = arrivals(self.topology, prof, list(pairs), nbytes, path)
            done, windows = receive_windows(prof, [(b, x) for (_, b), x in zip(pairs, arr)], nbytes, path)
            done = np.asarray(done)
            first = np.array([x.first_us for x in arr], dtype=np.float64)
            last = np.array([x.last_us for x in arr], dtype=np.float64)
            src = np.array([a for a, _ in pairs], dtype=np.int64)
            dst = np.array([b for _, b in pairs], dtype=np.int64)
            header, packet = prof.link.header_bytes, prof.nic.packet_bytes
            framed = nbytes + np.ceil(nbytes / packet) * header
            rest = framed - (min(nbytes, packet) + header if nbytes > 0 else 0)
            span = last - first
            fs = self.fabric.flows(src, dst)
            links = len(self.fabric.capacity)
            rate = np.full(len(src), np.inf)
            np.divide(rest, span, out=rate, where=span > 0)
            rate = np.minimum(rate, np.minimum.reduceat(self.fabric.capacity[fs.routes.resources],
                                                        fs.routes.offsets[:-1]))
            # the sender's DMA read feeds the stream packet by packet (both paths read host memory)
            pcie = links + len(NODE_RESOURCES) * src + PCIE_READ
            per_flow = [np.append(fs.routes.resources[fs.routes.offsets[i]:fs.routes.offsets[i + 1]], pcie[i])
                        for i in range(len(src))]
            # the receiver's DMA write is a work flow on its PCIe write side (node_work.py), after the stream
            # starts and after the node's previous write
            cap = self.capacity[links + len(NODE_RESOURCES) * dst + PCIE_WRITE]
            writes = [i for i, w in enumerate(windows) if w is not None and w[1] > w[0] and cap[i] < 1e300]
            k = len(src)
            w_first = np.array([windows[i][0] for i in writes], dtype=np.float64)
            w_last = np.array([windows[i][1] for i in writes], dtype=np.float64)
            w_rate = np.minimum(nbytes / (w_last - w_first), cap[writes]) if writes else np.zeros(0)
            per_flow += [np.array([links + len(NODE_RESOURCES) * dst[i] + PCIE_WRITE]) for i in writes]
            dep, tgt, prev = list(writes), [k + j for j in range(len(writes))], {}
            for j, i in enumerate(writes):
                if int(dst[i]) in prev:
                    dep.append(k + prev[int(dst[i])])
                    tgt.append(k + j)
                prev[int(dst[i])] = j
            first, last = np.concatenate([first, w_first]), np.concatenate([last, w_last])
            dep, tgt = np.array(dep, dtype=np.int64), np.array(tgt, dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum([len(r) for r in per_flow])]).astype(np.int64)
            routes = Routes(offsets, np.concatenate(per_flow).astype(np.int64) if per_flow else
                            np.zeros(0, dtype=np.int64))
            hit = self._finish(key, first, last, np.concatenate([rate, w_rate]), routes,
                               *by_window(first, last, dep, tgt), np.concatenate([done, done[writes]]),
                               float(done.max()) if len(done) else 0.0)
        return hit

    def _finish(self, key, first, last, rate, routes: Routes, after_end, after_start, later: np.ndarray,
                span: float) -> _Alone:
        """Replay the call alone once: its completion there sets the slack to its end marker."""
        cap = self.capacity
        out = replay(cap, routes, first, last, rate, Edges.from_pairs(len(first), *after_end),
                     Edges.from_pairs(len(first), *after_start))
        node_end = later + out.end_delay
        own_end = max(span, float(node_end.max())) if len(node_end) else span
        a = _Alone(first, last, rate, routes.offsets, routes.resources, after_end, after_start, own_end - later,
                   span, frozenset(np.unique(routes.resources).tolist()))
        self._alone[key] = a
        return a

    # -- building chains ----------------------------------------------------------------------------------

    def marker(self, at_us: float, after: Sequence[tuple[int, float]] = ()) -> int:
        """A point of a chain at ``at_us`` (alone), late by the largest delay of ``after``'s markers less
        their slack: (marker, slack µs) pairs. Returns its id."""
        f = self._add(np.array([at_us]), np.array([at_us]), np.array([np.inf]), np.zeros(2, dtype=np.int64),
                      np.zeros(0, dtype=np.int64))
        m = len(self.markers)
        self.markers.append(f)
        if after:
            src = np.array([self.markers[a] for a, _ in after], dtype=np.int64)
            slack = np.array([s for _, s in after], dtype=np.float64)
            if np.any(~(slack >= 0)):
                raise CollectiveError(f"a chain's slack must be >= 0, got {slack.min()}")
            self._end_edges.append((src, np.full(len(src), f), slack))
        return m

    def place(self, alone: _Alone, start_us: float, after: int, chain: int | None = None) -> int:
        """Run ``alone`` from ``start_us`` once marker ``after`` allows; returns its end marker. ``chain``: an
        id shared by calls that run one after another, each after the previous one's end (their node
        resources need not be shared among them, node_work.quiet); None: a chain of its own."""
        k = len(alone.first)
        base = self._add(alone.first + start_us, alone.last + start_us, alone.rate, alone.offsets, alone.resources,
                         chain)
        zero = np.zeros(len(alone.after_end[0]))
        self._end_edges.append((alone.after_end[0] + base, alone.after_end[1] + base, zero))
        self._start_edges.append((alone.after_start[0] + base, alone.after_start[1] + base))
        ids = base + np.arange(k, dtype=np.int64)
        self._end_edges.append((np.full(k, self.markers[after]), ids, np.zeros(k)))
        end = self.marker(start_us + alone.span_us, [(after, 0.0)])
        self._end_edges.append((ids, np.full(k, self.markers[end]), alone.end_slack))
        return end

    def _add(self, first, last, rate, offsets, resources, chain: int | None = None) -> int:
        base = self.flows
        self._parts.append((first, last, rate, offsets, resources, -1 - len(self._parts) if chain is None
                            else chain))
        self.flows += len(first)
        return base

    def run(self) -> ChainsResult:
        """Replay every chain together: each marker's delay against its alone time."""
        n = self.flows
        if not n:
            return ChainsResult(np.zeros(0), 0, 0)
        first = np.concatenate([p[0] for p in self._parts])
        last = np.concatenate([p[1] for p in self._parts])
        rate = np.concatenate(quiet([(p[3], p[4], p[2]) for p in self._parts], len(self.fabric.capacity),
                                    [p[5] for p in self._parts]))
        lengths = np.concatenate([np.diff(p[3]) for p in self._parts])
        routes = Routes(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                        np.concatenate([p[4] for p in self._parts]).astype(np.int64))
        cat = np.concatenate
        ends = self._end_edges or [(np.zeros(0, dtype=np.int64),) * 2 + (np.zeros(0),)]
        starts = self._start_edges or [(np.zeros(0, dtype=np.int64),) * 2]
        out = replay(self.capacity, routes, first, last, rate,
                     Edges.from_pairs(n, cat([e[0] for e in ends]), cat([e[1] for e in ends]),
                                      cat([e[2] for e in ends])),
                     Edges.from_pairs(n, cat([e[0] for e in starts]), cat([e[1] for e in starts])))
        delay = out.end_delay[np.asarray(self.markers, dtype=np.int64)]
        return ChainsResult(delay, int(out.slowed.sum()), n - len(self.markers))


def overlapping_calls(start: np.ndarray, end: np.ndarray, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of calls of different chains whose windows overlap (each pair once)."""
    order = np.argsort(start, kind="stable")
    s, e = start[order], end[order]
    hi = np.searchsorted(s, e, side="left")
    n = np.maximum(hi - np.arange(len(s)) - 1, 0)
    a, b = order[np.repeat(np.arange(len(s)), n)], order[spans(np.arange(len(s)) + 1, n)]
    other = chain[a] != chain[b]
    return a[other], b[other]
