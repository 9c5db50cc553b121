"""Sparse AllReduces (the spot protocol) as flows on the shared fabric, beside dense calls.

The spot protocol has no transfer schedule: its model (sparse_timing.py, docs/model.md §10) times
whole messages round by round. Asked for, that timing also hands over every message that crosses a
link (sparse/messages.py): records, Rx credits and result copies, each with its sender, receiver,
bytes and its window at the receiver alone, ``[done - wire time, done]``. This module turns them into
the :class:`CallFlows` that the replay of concurrent.py takes (docs/model.md §21.6), with the
protocol's own dependencies:

* a record of round ``i`` waits for what let its worker write it: OmNICCL's Rx credit, sent when the
  records of round ``i - 1`` of its slot were aggregated (so it waits for those records), or
  OmniReduce's result of round ``i - 1`` (self-clocked by the result);
* a result copy waits for every record of its slot and round (the aggregation);
* every message waits for the previous one its sender sent (one link out, messages in turn).

Each keeps its alone gap as in §21.6: "after end" when it began after the other ended, "after start"
when after it began, dropped otherwise. Credits (16 B each) are not flows: the Tx credits hold no link
time in the model (the reuse of a Tx spot does not wait in the replay), and the Rx credits, a third of
OmNICCL's messages, would add as many events to the replay for a few bytes each.

Placement: an endpoint that is a node sits on the physical node ``nodes[i]``. A dedicated OmniReduce
aggregator (endpoint ``n + a``) has, on a switch, a port of its own that no other call uses (as in the
sparse model): its messages cross only the worker's side. On a ring or torus it sits beside node
``a·n // K`` and uses that node's links; a message between it and that node crosses none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nicemu.collectives.model.concurrent import (
    MAX_FLOWS,
    Call,
    CallFlows,
    ConcurrentTiming,
    Entry,
    PlacedFlows,
    dense_entries,
    resource_capacity,
    share,
    transfers,
)
from nicemu.collectives.model.fabric import Fabric
from nicemu.collectives.model.sparse.messages import RECORD, RESULT, RX_CREDIT, SparseMessages
from nicemu.collectives.model.sparse_timing import SparseTiming, sparse_time
from nicemu.collectives.schedules.spot_protocol import SparseConfig, plan_rounds
from nicemu.errors import CollectiveError
from nicemu.nic.fabric import Routes
from nicemu.nic.fabric_replay import by_window, matches
from nicemu.nic.profile import Profile
from nicemu.nic.streams import framed
from nicemu.topologies import Torus


@dataclass
class SparseFlows:
    """A sparse call alone: its timing, the messages that are flows (all but the credits), and the flows
    (``flows.src``/``dst`` are endpoints; ``flows.node_done`` is per worker)."""

    timing: SparseTiming
    messages: SparseMessages
    flows: CallFlows
    workers: int
    aggregator_node: np.ndarray   # per dedicated aggregator: the node it sits beside (empty: none)


@dataclass(frozen=True)
class SparseCall:
    """A sparse call on the fabric: its flows alone, where its workers sit, and when it starts."""

    alone: SparseFlows
    nodes: np.ndarray       # physical node of each worker
    start_us: float = 0.0
    repeat: int = 1         # (for the replay's expansion: a sparse call runs once)
    gap_us: float = 0.0


def sparse_call_flows(cfg: SparseConfig, masks, profile: Profile, itemsize: int) -> SparseFlows:
    """Time the sparse AllReduce of ``masks`` alone (exactly ``model_sparse``'s numbers) and keep its
    messages as flows."""
    plan = plan_rounds(masks, cfg)
    t = sparse_time(plan, profile, itemsize, messages=True)
    m = _without_credits(t.messages)
    n = plan.layout.nodes
    nb = np.rint(m.nbytes).astype(np.int64)
    header, packet = profile.link.header_bytes, profile.nic.packet_bytes
    whole = framed(nb, packet, header).astype(np.int64) if header else nb
    first, last = m.done_us - m.wire_us, m.done_us.copy()
    dep, tgt = _dependencies(m, first, cfg.credits)
    flows = CallFlows(m.src, m.dst, whole, whole, first, last, *by_window(first, last, dep, tgt),
                      np.asarray(t.node_done_us, dtype=np.float64).copy(), int(t.wire_bytes),
                      np.zeros(len(m), dtype=np.int64))
    agg = np.asarray(plan.layout.aggregator_node, dtype=np.int64) if cfg.aggregation == "dedicated" \
        else np.zeros(0, dtype=np.int64)
    return SparseFlows(t, m, flows, n, agg)


def _without_credits(m: SparseMessages) -> SparseMessages:
    """The messages that become flows: all but the Rx credits (16 B each, about a third of OmNICCL's
    messages, and as many events in the replay). A record waits for the aggregation that sent its credit."""
    keep = m.kind != RX_CREDIT
    return SparseMessages(*(getattr(m, f)[keep] for f in ("kind", "src", "dst", "slot", "round", "nbytes",
                                                           "wire_us", "done_us")))


def _dependencies(m: SparseMessages, first: np.ndarray, credits: bool) -> tuple[np.ndarray, np.ndarray]:
    """(dependency, dependent) pairs of the protocol (module docstring), each from an earlier message
    (by window start, then index) to a later one, so they never form a cycle."""
    k = len(m)
    if not k:
        z = np.zeros(0, dtype=np.int64)
        return z, z
    ends = int(max(m.src.max(), m.dst.max())) + 1
    rounds = int(m.round.max()) + 2
    down = m.kind != RECORD
    rec = ~down

    def key(slot, rnd, end):
        return (slot * rounds + rnd) * ends + end
    rec_key = np.where(rec, key(m.slot, m.round, m.dst), -1)      # records by (slot, round, aggregator)
    # a record of round i: with credits, every record of round i - 1 of its slot (the aggregation that sent
    # the credit); self-clocked, the result of round i - 1 to its worker
    if credits:
        d1, t1 = matches(rec_key, key(m.slot, m.round - 1, m.dst), rec & (m.round > 0))
    else:
        res_key = np.where(m.kind == RESULT, key(m.slot, m.round, m.dst), -1)
        d1, t1 = matches(res_key, key(m.slot, m.round - 1, m.src), rec & (m.round > 0))
    # a result: every record of its slot and round (they all went to its sender)
    d2, t2 = matches(rec_key, key(m.slot, m.round, m.src), down)
    # the sender's previous message
    order = np.lexsort((np.arange(k), first, m.src))
    same = m.src[order[1:]] == m.src[order[:-1]]
    d3, t3 = order[:-1][same], order[1:][same]
    dep, tgt = np.concatenate([d1, d2, d3]), np.concatenate([t1, t2, t3])
    earlier = (first[dep] < first[tgt]) | ((first[dep] == first[tgt]) & (dep < tgt))
    return dep[earlier], tgt[earlier]


def placed(fabric: Fabric, call: SparseCall) -> tuple[Routes, np.ndarray]:
    """The call's flows on the physical fabric: (routes, alone rate in bytes/µs per flow)."""
    a = call.alone
    n = a.workers
    nodes = np.asarray(call.nodes, dtype=np.int64)
    if nodes.shape != (n,) or len(np.unique(nodes)) != n or nodes.min(initial=0) < 0 \
            or nodes.max(initial=0) >= fabric.topology.nodes:
        raise CollectiveError(f"a sparse call of {n} workers needs {n} distinct nodes of {fabric.topology.name}, got "
                              f"{nodes.tolist()[:8]}")
    f = a.flows
    src, dst = f.src, f.dst
    switched = fabric.topology.switched
    own_port = len(a.aggregator_node) > 0 and switched
    # physical node of every endpoint (dedicated aggregators: beside their node, or -1 on a switch)
    where = np.concatenate([nodes, np.full(len(a.aggregator_node), -1, dtype=np.int64) if own_port
                            else nodes[a.aggregator_node]])
    ps, pd = where[src], where[dst]
    span = f.last - f.first
    rate = np.full(len(src), np.inf)
    np.divide(f.nbytes, span, out=rate, where=span > 0)
    flow_ix, res = [], []
    if switched:
        tn = fabric.topology.nodes
        for end, side in ((ps, 0), (pd, tn)):     # the sender's transmit side, the receiver's receive side
            on = np.flatnonzero(end >= 0)
            flow_ix.append(on)
            res.append(end[on] + side)
    else:
        on = np.flatnonzero(ps != pd)
        fs = fabric.flows(ps[on], pd[on])
        flow_ix.append(np.repeat(on, np.diff(fs.routes.offsets)))
        res.append(fs.routes.resources)
    flow_ix, res = np.concatenate(flow_ix), np.concatenate(res)
    order = np.argsort(flow_ix, kind="stable")
    flow_ix, res = flow_ix[order], res[order]
    # a stream is timed whole at the link rate: its cap is at most its slowest link's
    slowest = np.full(len(src), np.inf)
    np.minimum.at(slowest, flow_ix, fabric.capacity[res])
    rate = np.minimum(rate, slowest)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(flow_ix, minlength=len(src)))]).astype(np.int64)
    return Routes(offsets, res), rate


def run_shared(calls: list[Call], sparse: list[SparseCall], topology: Torus, profile: Profile,
               own_sparse: dict | None = None) -> tuple[list[ConcurrentTiming], list[ConcurrentTiming]]:
    """Dense ``calls`` (as ``run_concurrent`` takes them) and ``sparse`` calls together on the fabric of
    ``topology`` (docs/model.md §21.6): each call's timing sharing the fabric, dense then sparse.

    As in ``run_concurrent``: calls that share no resource with another keep their alone times exactly;
    the others are replayed together, and a node's delay is what that replay adds over the call's own
    replay alone. Without sparse calls the dense results are ``run_concurrent``'s. ``own_sparse``: a dict
    kept by the caller between runs on the same topology and profile, which then replays each sparse call
    alone once (its replay alone is the costly part: a sparse call makes many small flows)."""
    for c in sparse:
        if not (np.isfinite(c.start_us) and c.start_us >= 0 and np.isfinite(c.gap_us) and c.gap_us >= 0):
            raise CollectiveError(f"start_us and gap_us must be finite and >= 0, got {c.start_us}, {c.gap_us}")
    total = sum(transfers(c.schedule) * c.repeat for c in calls) + sum(len(s.alone.flows.src) for s in sparse)
    if total > MAX_FLOWS:
        raise CollectiveError(f"{len(calls)} dense and {len(sparse)} sparse calls on {topology.name} make {total:,} "
                              f"transfers, over the {MAX_FLOWS:,} the fabric replay holds in memory; use fewer "
                              "calls, a smaller size or a smaller topology")
    fabric = Fabric(topology, profile)
    capacity = resource_capacity(fabric)
    entries = dense_entries(calls, fabric, capacity) if calls else []
    for s in sparse:
        f = s.alone.flows
        routes, rate = placed(fabric, s)
        ends = int(max(f.src.max(initial=-1), f.dst.max(initial=-1), s.alone.workers - 1)) + 1
        # its spot protocol is timed on a switch, its flows take the fabric's routes: all of its replay alone
        # counts as its own overlaps (native None)
        entries.append(Entry(f, PlacedFlows(routes, rate, f.first + s.start_us, f.last + s.start_us, f.after_end,
                                       f.after_start, 0, f.src, f.dst, ends, 0.0),
                             ("sparse", id(s.alone), s.start_us, np.asarray(s.nodes).tobytes(), topology.name,
                              profile.name), 1, s.alone.workers))
    out = share(entries, fabric, capacity, own_sparse)
    return out[:len(calls)], out[len(calls):]


def carried(fabric: Fabric, call: SparseCall) -> np.ndarray:
    """The bytes the call puts on every resource of ``fabric`` (ids as concurrent.resource_name reads them),
    for the hot links of a run."""
    routes, _ = placed(fabric, call)
    weights = np.repeat(call.alone.flows.framed, np.diff(routes.offsets)).astype(np.float64)
    return np.bincount(routes.resources, weights=weights, minlength=len(resource_capacity(fabric)))
