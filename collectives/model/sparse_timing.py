"""Emulated time of the spot protocol (OmNICCL, its CPU-aggregator variant, OmniReduce).

The rounds come from :mod:`nicemu.collectives.schedules.spot_protocol`. Time is advanced
round by round and, within a round, slot by slot in ascending order, so every
shared resource (a node's link in each direction, its PCIe engines, its NIC
reduction engine, its host CPU) serves messages in one canonical order. That
makes the result a pure function of the block masks: both executors call this
function and get the same numbers bit for bit.

How it is computed. The numbers are, bit for bit, those of timing the messages
one slot at a time (tests/unit/test_sparse_scale.py keeps that original code
and compares): every floating-point operation is the same, in the same order.
The pieces live in :mod:`nicemu.collectives.model.sparse` (scans, state, records,
fault delays, the two phases and the aggregation); this module runs them.

* In each phase, the work on a worker's resources (PCIe read, link out, the
  host that packs and unpacks) is walked slot by slot in ascending order with
  numpy over the workers, since a worker serves every slot in turn.
* The work on an aggregator's resources (link in, reduction engine or host,
  link out) depends only on its own slots, which it serves in order, so it is
  done for all aggregators at once, one slot position at a time, with row-wise
  max-plus scans (numpy's cumulative sums and maxima run along each row from
  its start, exactly as on one slot's array). Records that do not use a
  resource, and the padding of rows of different lengths, are neutral entries
  of the scan. Floating-point sums keep numpy's pairwise order: rows of the
  same length are summed together.
* When all records of a slot carry the same number of blocks (always for
  OmniReduce), per-record costs are one number per slot, and the running sums
  of a constant are computed once and shared.
* Shortcuts that rest on "free times only grow" (every cost is finite and
  non-negative, as validated profiles guarantee; otherwise they are off): the
  latest landed result is the latest done time, the largest arrival of a
  scatter follows from the previous one, and a host-packing self-clock (a
  copy of the worker host's free time) never exceeds that free time when read.
  OmniReduce packs on the result (``pack_on_result``), so it keeps its
  self-clock per (slot, worker): only rows of slots that run a second round
  are touched.
* Slots are taken in chunks of bounded size, and the workers' block counts are
  read from the masks per chunk (``Round.sent_rows``), so memory stays small.
  A plan whose counts fit in ``COUNT_ALL_LIMIT`` entries has them all read in one
  pass first (``Plan.count_all``): its windows are disjoint, so that is one read
  of the masks instead of one per round.
* With few nodes (OmNICCL and omniccl-cpu without faults, stragglers, telemetry or
  headers), :mod:`nicemu.collectives.model.sparse.scalar` times every record in
  plain Python floats with the same operations in the same order: a round there
  is a few records, and numpy's per-call overhead is what costs.
* When a chunk's slots are not all written by every worker (and no host packs
  or straggles), a worker's records are timed as its first, second, ... record
  of the chunk, for all workers at once: its records use only its own PCIe read
  engine and link out, in slot order, so each value is the same operation on
  the same operands as slot by slot, with far fewer numpy calls per round.

The sparse algorithms run on a switched fabric, as in the OmNICCL and
OmniReduce testbeds: every node (and every dedicated aggregator) has one
full-duplex link of the profile's rate to a non-blocking switch, and a message
crosses one link out and one link in (latency ``link.latency_us`` once). A
message is timed as a whole: it occupies a link for ``bytes * beta``. The
formulas are in docs/model.md, "The spot protocol".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.link_faults import FaultStats
from nicemu.collectives.model.sparse import downstream, scalar, upstream
from nicemu.collectives.model.sparse.messages import MessageRecorder, SparseMessages
from nicemu.collectives.model.sparse.state import SpotState, spot_memory_bytes
from nicemu.collectives.model.sparse.telemetry import SpotTelemetry
from nicemu.collectives.schedules.spot_protocol import PackedMasks, Plan, SparseConfig, plan_rounds
from nicemu.errors import CollectiveError
from nicemu.nic.faults import FaultSpec
from nicemu.nic.profile import Profile
from nicemu.nic.stragglers import node_factors
from nicemu.nic.telemetry import LinkStats

#: (slot, worker) counts of a whole plan read from the masks in one go when they fit; 0 = round by round
COUNT_ALL_LIMIT = 1 << 21
#: time few-node plans record by record in Python floats when ``scalar.applies`` (False: numpy path)
SCALAR = True

__all__ = ["SparseTiming", "as_timing", "model_sparse", "plan_sparse", "sparse_time", "spot_memory_bytes",
           "time_sparse_plan"]


@dataclass
class SparseTiming:
    """The emulated time of one sparse AllReduce and the totals the reports show."""

    emulated_us: float
    node_done_us: np.ndarray      # per node (worker)
    host_busy_us: float           # busiest host (workers and aggregators)
    nic_busy_us: float            # busiest NIC reduction engine
    wire_bytes: int               # bytes that crossed links, metadata included
    upstream_bytes: int           # worker -> aggregator, over links
    downstream_bytes: int         # aggregator -> worker, over links
    spilled: bool                 # spots did not fit in NIC memory
    faults: dict | None = None    # --faults on the Rx-spot writes: drops, corruptions, ..., per_link
    framed_bytes: int | None = None   # wire_bytes plus link.header_bytes per packet of every message
    telemetry: LinkStats | None = None  # per port and node resource (sparse/telemetry.py), when asked for
    messages: SparseMessages | None = None  # every link-crossing message alone (sparse/messages.py), when asked for


def sparse_time(plan: Plan, profile: Profile, itemsize: int, faults: FaultSpec | None = None,
                call: int = 0, stragglers: dict[int, float] | None = None,
                telemetry: bool | np.ndarray = False, messages: bool = False) -> SparseTiming:
    """Emulated time of the plan; ``faults`` delay the Rx-spot writes (docs/model.md §11.5),
    ``stragglers`` slow the service times of nodes (worker or aggregator; docs/model.md §12);
    ``telemetry``: True, or a bool mask of the endpoints to trace, fills ``SparseTiming.telemetry``;
    ``messages``: fills ``SparseTiming.messages`` (the same times: it takes the numpy path)."""
    if isinstance(plan, Plan):
        plan.count_all(COUNT_ALL_LIMIT)
    slow = node_factors(stragglers or {}, 0, plan.layout.nodes)
    t = SpotState(plan, profile, itemsize, faults if faults is not None and faults.active else None, call,
                  slow)
    if telemetry is not False and telemetry is not None:
        _watch(t, profile, telemetry)
    if messages:
        t.rec = MessageRecorder()
    rounds = plan.rounds
    if SCALAR and scalar.applies(t, plan):
        scalar.time_plan(t, plan)
    else:
        for i, rnd in enumerate(rounds):
            upstream.time_round(t, rnd)
            downstream.time_round(t, rnd, rounds[i + 1] if i + 1 < len(rounds) else None)
    stats = None if t.faults is None else FaultStats.summary(t.fault_stats.rows())
    out = SparseTiming(float(t.done.max()), t.done, float(t.host_busy.max()), float(t.nic_busy.max()),
                       t.up + t.down, t.up, t.down, bool(t.spilled), stats, t.framed_bytes())
    if t.tel is not None:
        out.telemetry = t.tel.stats(t, out.emulated_us, [len(r.slots) for r in rounds])
    if t.rec is not None:
        out.messages = t.rec.result()
    return out


def _watch(t: SpotState, profile: Profile, telemetry: bool | np.ndarray) -> None:
    """Turn telemetry on: endpoints are the nodes, then the dedicated aggregators (``nodes + a``); a
    trace mask over the nodes alone traces dedicated aggregator ``a`` with node ``a``."""
    ends = len(t.out_free)
    traced = None
    if telemetry is not True:
        mask = np.asarray(telemetry, dtype=bool).ravel()
        if len(mask) not in (t.n, ends):
            raise CollectiveError(f"trace mask has {len(mask)} entries for {t.n} nodes "
                                  f"({ends - t.n} dedicated aggregators): give one per node")
        traced = np.zeros(ends, dtype=bool)
        traced[:len(mask)] = mask
        if len(mask) == t.n:
            k = ends - t.n
            traced[t.n:] = mask[:k]         # k <= nodes
    t.tel = SpotTelemetry(ends, t.beta, float(t.header), t.packet_bytes, traced)
    t.trace = traced is not None


def as_timing(t: SparseTiming) -> Timing:
    """The executor's common result type."""
    return Timing(t.emulated_us, t.node_done_us, t.host_busy_us, t.nic_busy_us, t.wire_bytes,
                  upstream_bytes=t.upstream_bytes, downstream_bytes=t.downstream_bytes,
                  spilled=t.spilled, faults=t.faults, framed_bytes=t.framed_bytes, telemetry=t.telemetry)


def model_sparse(cfg: SparseConfig, masks: np.ndarray, profile: Profile, itemsize: int,
                 faults: FaultSpec | None = None, call: int = 0,
                 stragglers: dict[int, float] | None = None, telemetry: bool | np.ndarray = False) -> Timing:
    """Emulated time from the block masks alone (nodes x nblocks); faults on the Rx-spot writes,
    stragglers slow their nodes' host, NIC and PCIe service times; ``telemetry`` (True or a trace
    mask) fills ``Timing.telemetry``."""
    if not isinstance(masks, PackedMasks):
        masks = np.asarray(masks)
        if masks.ndim != 2 or masks.shape[0] < 2 or masks.dtype != bool:
            raise CollectiveError(f"block masks must be a bool array of shape (nodes >= 2, blocks), got "
                                  f"{masks.dtype} {masks.shape}")
    if isinstance(itemsize, bool) or not isinstance(itemsize, (int, np.integer)) or itemsize < 1:
        raise CollectiveError(f"itemsize must be a whole number of bytes >= 1, got {itemsize!r}")
    return as_timing(sparse_time(plan_rounds(masks, cfg), profile, itemsize, faults, call, stragglers, telemetry))


def plan_sparse(cfg: SparseConfig, masks) -> Plan:
    """The rounds of the spot protocol for these block masks (a bool array or ``PackedMasks``).

    ``model_sparse`` is ``time_sparse_plan(plan_sparse(...))``; the two halves are
    public so that a bench can time and size them apart.
    """
    return plan_rounds(masks, cfg)


def time_sparse_plan(plan: Plan, profile: Profile, itemsize: int, faults: FaultSpec | None = None,
                     call: int = 0, stragglers: dict[int, float] | None = None,
                     telemetry: bool | np.ndarray = False) -> Timing:
    """Emulated time of planned rounds: the second half of ``model_sparse``."""
    return as_timing(sparse_time(plan, profile, itemsize, faults, call, stragglers, telemetry))
