"""The sparse model at scale: bit-identical to the original implementation, memory bounded.

``plan_rounds`` and ``sparse_time`` were rewritten to handle 4,096 nodes x
131,072 blocks (see scripts/bench_sparse_model.py). The MPI executor, the
tests and the published tables compare emulated times exactly, so the rewrite
must give the very same floating-point numbers for every input. This module
therefore owns a frozen copy of the original functions (the ``_reference_*``
code below, copied verbatim from commit a708821, only renamed) and checks the
new code against it on many small random configurations, with the chunk sizes
forced down so that every chunked path runs.

The reference was extended once, when OmniReduce got its polling threads
(docs/model.md §10.5): the host cost per event may come from the configuration
(``host_event_us``), the host has ``host_threads`` FIFO threads (a slot's host
work runs on thread ``spot * threads // spots``), and with ``pack_on_result`` a
worker packs a slot's next record right after unpacking its result. Each
extension is marked ``# extension`` below; with the defaults (one thread, the
profile's overhead, no packing on the result) the code is the original.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from nicemu.collectives import model_sparse, names, sparse_config
from nicemu.collectives.model import sparse_timing
from nicemu.collectives.model.sparse import state as sparse_state
from nicemu.collectives.model.sparse.maxplus import max_plus_rows, max_plus_scan, row_sums
from nicemu.collectives.model.sparse_timing import sparse_time
from nicemu.collectives.schedules import spot_protocol
from nicemu.collectives.schedules.sparse_patterns import pattern_mask
from nicemu.collectives.schedules.spot_protocol import PackedMasks, SparseConfig, plan_rounds
from nicemu.nic.profile import Profile, load_profile
from nicemu.nic.streams import us_per_byte

INDEX_BYTES = 8
RECORD_HEADER_BYTES = 16
CREDIT_BYTES = 16

# ---------------------------------------------------------------------------------------
# Frozen reference: collectives/schedules/spot_protocol.py and collectives/model/sparse_timing.py as of
# commit a708821, verbatim apart from the names (prefixed so that nothing is shared).
# ---------------------------------------------------------------------------------------

@dataclass
class _RefLayout:
    """Which aggregator owns which blocks, split into slots."""

    nodes: int
    nblocks: int
    aggregator_node: np.ndarray   # per aggregator: the node whose NIC (or host) aggregates
    slot_agg: np.ndarray          # per slot: its aggregator
    slot_lo: np.ndarray           # per slot: first block
    slot_hi: np.ndarray           # per slot: one past the last block

    @property
    def slots(self) -> int:
        return len(self.slot_lo)


def _reference_make_layout(nodes: int, nblocks: int, cfg: SparseConfig) -> _RefLayout:
    k = cfg.aggregators or nodes
    agg_nodes = np.array([a * nodes // k for a in range(k)], dtype=np.int64)
    shard = np.array([a * nblocks // k for a in range(k + 1)], dtype=np.int64)
    lo, hi, owner = [], [], []
    for a in range(k):
        cuts = shard[a] + (np.arange(cfg.spots + 1) * (shard[a + 1] - shard[a])) // cfg.spots
        lo.extend(cuts[:-1])
        hi.extend(cuts[1:])
        owner.extend([a] * cfg.spots)
    return _RefLayout(nodes, nblocks, agg_nodes, np.array(owner, dtype=np.int64),
                  np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64))


@dataclass
class _RefRound:
    """_RefRound ``index`` of every slot still running."""

    index: int
    slots: np.ndarray        # active slot ids, ascending
    lo: np.ndarray           # window start per active slot
    hi: np.ndarray           # window end (exclusive)
    sent: np.ndarray         # (active, nodes) blocks each worker writes
    reports: np.ndarray      # (active, nodes) whether the worker writes a record at all
    result: np.ndarray       # (active,) result blocks scattered
    next_lo: np.ndarray      # (active,) next window start; >= slot_hi means the slot is done


@dataclass
class _RefPlan:
    layout: _RefLayout
    cfg: SparseConfig
    rounds: list[_RefRound] = field(default_factory=list)

    def upstream_bytes(self, block_bytes: int) -> np.ndarray:
        """Bytes each worker writes into Rx spots over the whole call (data + metadata)."""
        out = np.zeros(self.layout.nodes, dtype=np.int64)
        for r in self.rounds:
            out += (r.sent * (block_bytes + INDEX_BYTES) + r.reports * RECORD_HEADER_BYTES).sum(axis=0)
        return out

    def downstream_bytes(self, block_bytes: int) -> np.ndarray:
        """Bytes each aggregator scatters per worker over the whole call (data + metadata)."""
        out = np.zeros(len(self.layout.aggregator_node), dtype=np.int64)
        for r in self.rounds:
            np.add.at(out, self.layout.slot_agg[r.slots],
                      r.result * (block_bytes + INDEX_BYTES) + RECORD_HEADER_BYTES)
        return out


def _reference_next_nonzero(union: np.ndarray) -> np.ndarray:
    """nxt[x] = first block >= x that is non-zero on some worker (len(union) if none)."""
    n = len(union)
    idx = np.where(union, np.arange(n), n)
    nxt = np.minimum.accumulate(idx[::-1])[::-1]
    return np.append(nxt, n)


def _reference_plan_rounds(masks: np.ndarray, cfg: SparseConfig) -> _RefPlan:
    """All rounds of all slots, from the workers' block masks (nodes x nblocks, bool)."""
    nodes, nblocks = masks.shape
    layout = _reference_make_layout(nodes, nblocks, cfg)
    plan = _RefPlan(layout, cfg)
    union = masks.any(axis=0)
    nxt = _reference_next_nonzero(union)
    csum = np.zeros((nodes, nblocks + 1), dtype=np.int32)
    np.cumsum(masks, axis=1, out=csum[:, 1:])
    ucsum = np.concatenate([[0], np.cumsum(union)])
    c = cfg.spot_blocks
    slots = np.flatnonzero(layout.slot_hi > layout.slot_lo)   # empty slots never run
    lo = layout.slot_lo[slots].copy()
    i = 0
    while len(slots):
        hi = np.minimum(lo + c, layout.slot_hi[slots])
        if i == 0 and cfg.dense_first_round:
            sent = np.broadcast_to((hi - lo)[:, None], (len(slots), nodes)).copy()
        else:
            sent = (csum[:, hi] - csum[:, lo]).T
        reports = sent > 0
        if i == 0:
            reports[:] = True
        result = ucsum[hi] - ucsum[lo]
        if i == 0 and cfg.dense_first_round:
            result = hi - lo
        nlo = np.minimum(nxt[hi], layout.slot_hi[slots])
        plan.rounds.append(_RefRound(i, slots, lo, hi, sent, reports, result, nlo))
        live = nlo < layout.slot_hi[slots]
        slots, lo = slots[live], nlo[live]
        i += 1
    return plan


@dataclass
class _RefSparseTiming:
    emulated_us: float
    node_done_us: np.ndarray      # per node (worker)
    host_busy_us: float           # busiest host (workers and aggregators)
    nic_busy_us: float            # busiest NIC reduction engine
    wire_bytes: int               # bytes that crossed links, metadata included
    upstream_bytes: int           # worker -> aggregator, over links
    downstream_bytes: int         # aggregator -> worker, over links
    spilled: bool                 # spots did not fit in NIC memory


def _reference_spot_memory_bytes(nodes: int, cfg, block_bytes: int) -> int:
    """NIC memory one aggregator needs for its Rx spots (one region per worker) and Tx spots."""
    record = cfg.spot_blocks * (block_bytes + INDEX_BYTES) + RECORD_HEADER_BYTES
    return cfg.spots * (nodes + cfg.tx_spots) * record


def _referencemax_plus_scan(start: float, ready: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Completion times of FIFO jobs in order: done_j = max(done_{j-1}, ready_j) + service_j."""
    if len(ready) == 0:
        return ready
    csum = np.cumsum(service)
    prev = np.concatenate([[0.0], csum[:-1]])
    return csum + np.maximum(start, np.maximum.accumulate(ready - prev))


def _reference_sparse_time(plan: _RefPlan, profile: Profile, itemsize: int) -> _RefSparseTiming:
    cfg, lay = plan.cfg, plan.layout
    n = lay.nodes
    bb = cfg.block_size * itemsize
    beta, alpha = us_per_byte(profile.link.bandwidth_GBps), profile.link.latency_us
    pi, a_p = us_per_byte(profile.pcie.bandwidth_GBps), profile.pcie.latency_us
    gamma, o_h = us_per_byte(profile.host.reduce_GBps), profile.host.overhead_us
    if cfg.host_event_us is not None:   # extension: the configuration's own host event cost
        o_h = float(cfg.host_event_us)
    nu, a_n = us_per_byte(profile.nic.reduce_GBps), profile.nic.latency_us
    dedicated = cfg.aggregation == "dedicated"
    spilled = (cfg.aggregation == "nic"
               and _reference_spot_memory_bytes(n, cfg, bb) > profile.nic.memory_KiB * 1024)

    k = len(lay.aggregator_node)
    ends = n + (k if dedicated else 0)               # endpoints: nodes, then dedicated aggregators
    agg_end = (n + np.arange(k)) if dedicated else lay.aggregator_node
    out_free = np.zeros(ends)
    in_free = np.zeros(ends)
    rd_free = np.zeros(ends)
    wr_free = np.zeros(ends)
    host_thr = np.zeros((cfg.host_threads, ends))   # extension: per host thread and endpoint
    slot_thread = ((np.arange(lay.slots) - lay.slot_agg * cfg.spots) * cfg.host_threads) // cfg.spots
    nic_free = np.zeros(ends)
    host_busy = np.zeros(ends)
    nic_busy = np.zeros(ends)
    clock = np.zeros((lay.slots, n))                 # self-clock: when the worker may write again
    tx_free = np.zeros((lay.slots, cfg.tx_spots))
    done = np.zeros(n)
    up = down = 0
    workers = np.arange(n)

    for i_rnd, rnd in enumerate(plan.rounds):
        nxt = plan.rounds[i_rnd + 1] if i_rnd + 1 < len(plan.rounds) else None
        # phase 1, slot by slot: contributions travel up and are aggregated
        ready_at = np.zeros(len(rnd.slots))   # result complete in the Tx spot
        consumed = np.zeros(len(rnd.slots))   # every Rx record of the round consumed
        for j, s in enumerate(rnd.slots):
            g = int(agg_end[lay.slot_agg[s]])
            host_free = host_thr[slot_thread[s]]      # extension: the slot's thread (a view)
            who = np.flatnonzero(rnd.reports[j])
            sent = rnd.sent[j, who].astype(np.float64)
            data = sent * bb
            msg = sent * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES
            ready = clock[s, who]

            # worker side: (OmniReduce) the host finds and packs the blocks, then the NIC
            # DMA-reads them; (OmNICCL) the NIC reads them straight from the LLC (DCA).
            if cfg.host_packing and (rnd.index == 0 or not cfg.pack_on_result):   # extension
                window = (rnd.hi[j] - rnd.lo[j]) * bb
                start = np.maximum(ready, host_free[who]) + o_h
                host_free[who] = start + (window + data) * gamma
                host_busy[who] += o_h + (window + data) * gamma
                ready = host_free[who]
            has = data > 0
            start = np.maximum(ready, rd_free[who])
            rd_free[who] = np.where(has, start + data * pi, rd_free[who])
            ready = np.where(has, rd_free[who] + a_p, ready)

            # upstream: worker link out, switch, aggregator link in (in worker order)
            remote = np.ones(len(who), dtype=bool) if dedicated else who != g
            start = np.maximum(ready[remote], out_free[who[remote]])
            out_free[who[remote]] = start + msg[remote] * beta
            arrival = ready.copy()
            arrival[remote] = _referencemax_plus_scan(in_free[g], out_free[who[remote]] + alpha - msg[remote] * beta,
                                             msg[remote] * beta)
            if remote.any():
                in_free[g] = arrival[remote][-1]
            up += int(msg[remote].sum())

            # aggregation into Tx spot (round mod T), once that spot's readers are done
            tx = rnd.index % cfg.tx_spots
            rb_data = float(rnd.result[j]) * bb
            if cfg.aggregation == "nic":
                arr = arrival + (2 * a_p + 2 * data * pi if spilled else 0.0)
                first = max(tx_free[s, tx], nic_free[g])
                finish = _referencemax_plus_scan(first, arr, data * nu)
                nic_free[g] = finish[-1] if len(finish) else first
                nic_busy[g] += float((data * nu).sum())
                consumed[j] = nic_free[g] + a_n
                ready_at[j] = consumed[j] + ((a_p + rb_data * pi) if spilled else 0.0)
            elif cfg.aggregation == "cpu":
                landed = _referencemax_plus_scan(wr_free[g], arrival, data * pi)
                if len(landed):
                    wr_free[g] = landed[-1]
                last = (landed[-1] if len(landed) else 0.0) + a_p
                start = max(last, host_free[g], tx_free[s, tx]) + o_h
                host_free[g] = start + float(data.sum()) * gamma
                host_busy[g] += o_h + float(data.sum()) * gamma
                consumed[j] = host_free[g]
                ready_at[j] = host_free[g] + a_p + rb_data * pi
            else:   # dedicated CPU aggregator: each message handled as it arrives
                start0 = max(host_free[g], tx_free[s, tx])
                finish = _referencemax_plus_scan(start0, arrival + a_p + data * pi, o_h + data * gamma)
                host_free[g] = finish[-1] if len(finish) else start0
                host_busy[g] += float((o_h + data * gamma).sum())
                consumed[j] = host_free[g]
                ready_at[j] = host_free[g] + a_p + rb_data * pi

        # phase 2, slot by slot: results scatter to every worker and land in host memory
        for j, s in enumerate(rnd.slots):
            g = int(agg_end[lay.slot_agg[s]])
            host_free = host_thr[slot_thread[s]]      # extension: the slot's thread (a view)
            tx = rnd.index % cfg.tx_spots
            rb_data = float(rnd.result[j]) * bb
            rb = float(rnd.result[j]) * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES
            far = workers if dedicated else np.roll(workers, -(g + 1))[:-1]
            credit = np.zeros(n)
            if cfg.credits and rnd.next_lo[j] < lay.slot_hi[s]:
                # OmNICCL: as soon as the round's records are consumed, a credit carrying the
                # next window goes to every worker, ahead of the result
                c_leave = max(out_free[g], consumed[j]) + np.arange(1, len(far) + 1) * (CREDIT_BYTES * beta)
                if len(c_leave):
                    out_free[g] = c_leave[-1]
                credit[far] = np.maximum(in_free[far] + CREDIT_BYTES * beta, c_leave + alpha)
                in_free[far] = credit[far]
                if not dedicated:
                    credit[g] = consumed[j]
                down += int(len(far) * CREDIT_BYTES)
            e0 = max(out_free[g], ready_at[j])
            leave = e0 + np.arange(1, len(far) + 1) * (rb * beta)
            if len(leave):
                out_free[g] = leave[-1]
            got = np.empty(n)
            got[far] = np.maximum(in_free[far] + rb * beta, leave + alpha)
            in_free[far] = got[far]
            if not dedicated:
                got[g] = ready_at[j]
            down += int(len(far) * rb)
            # every reader returns a Tx credit once the result is in; the Tx spot may be
            # reused only when all of them are back
            back = got[far] + CREDIT_BYTES * beta + alpha
            tx_free[s, tx] = max(float(back.max()) if len(back) else 0.0,
                                 ready_at[j] if not dedicated else 0.0)
            up += int(len(far) * CREDIT_BYTES)

            start = np.maximum(got, wr_free[:n])
            wr_free[:n] = start + rb_data * pi
            landed = wr_free[:n] + a_p
            if cfg.host_packing:     # OmniReduce's host unpacks the result itself
                start = np.maximum(landed, host_free[:n]) + o_h
                host_free[:n] = start + rb_data * gamma
                host_busy[:n] += o_h + rb_data * gamma
                landed = host_free[:n].copy()
            done = np.maximum(done, landed)
            if cfg.host_packing and cfg.pack_on_result and nxt is not None and s in nxt.slots:
                # extension: the thread packs the slot's next record right after the unpack
                k = int(np.flatnonzero(nxt.slots == s)[0])
                who2 = np.flatnonzero(nxt.reports[k])
                cost = ((nxt.hi[k] - nxt.lo[k]) * bb + nxt.sent[k, who2].astype(np.float64) * bb) * gamma
                host_free[who2] = host_free[who2] + o_h + cost
                host_busy[who2] += o_h + cost
                landed = host_free[:n].copy()
            # a worker writes its next record once it may (credit) or once it has the result
            clock[s] = credit if cfg.credits else landed   # (unused after a slot's last round)

    return _RefSparseTiming(float(done.max()), done, float(host_busy.max()), float(nic_busy.max()),
                        up + down, up, down, bool(spilled))


# ---------------------------------------------------------------------------------------
# Equivalence of the new code with the reference
# ---------------------------------------------------------------------------------------

ALGOS = tuple(names(kind="sparse"))
#: the reference is the code from before host DRAM was charged and before the paper profiles framed their
#: packets (docs/model.md §7, §10.5, §18), so DRAM and framing are off; tests/unit/test_sparse_dram.py checks
#: that DRAM off changes no number, tests/unit/test_headers.py the framing
NO_DRAM = "host.memory_GBps=.inf"
NO_HEADERS = ["link.header_bytes=0"]
PROFILES = {
    "omniccl-paper": load_profile("omniccl-paper", NO_HEADERS),
    "directreduce-paper": load_profile("directreduce-paper", [NO_DRAM, *NO_HEADERS]),
    "spill": load_profile("omniccl-paper", ["nic.memory_KiB=1", *NO_HEADERS]),
    "directreduce-spill": load_profile("directreduce-paper", ["nic.memory_KiB=1", NO_DRAM, *NO_HEADERS]),
}


def random_masks(rng: np.random.Generator, nodes: int, nblocks: int) -> np.ndarray:
    kind = rng.integers(6)
    if kind == 0:
        return np.zeros((nodes, nblocks), dtype=bool)
    if kind == 1:
        return np.ones((nodes, nblocks), dtype=bool)
    if kind == 2:        # the same blocks everywhere
        return np.broadcast_to(rng.random(nblocks) < rng.random(), (nodes, nblocks)).copy()
    if kind == 3:        # runs of zero blocks, so that windows get skipped
        keep = rng.random(nblocks) < 0.15
        return (rng.random((nodes, nblocks)) < rng.random()) & keep
    if kind == 4:        # one worker sparse, the others empty
        m = np.zeros((nodes, nblocks), dtype=bool)
        m[rng.integers(nodes)] = rng.random(nblocks) < 0.1
        return m
    return rng.random((nodes, nblocks)) < rng.choice([0.01, 0.05, 0.1, 0.3, 0.5, 0.9])


def random_case(rng: np.random.Generator):
    nodes = int(rng.integers(2, 10))
    nblocks = int(rng.choice([int(rng.integers(0, 6)), int(rng.integers(1, 40)), int(rng.integers(40, 400))]))
    algo = ALGOS[int(rng.integers(3))]
    aggregators = [None, 1, 2][int(rng.integers(3))]
    cfg = sparse_config(algo, nodes, block_size=int(rng.choice([1, 4, 256])), aggregators=aggregators,
                        spots=int(rng.integers(1, 4)), spot_blocks=int(rng.integers(1, 6)),
                        tx_spots=int(rng.integers(1, 3)))
    prof = list(PROFILES)[int(rng.integers(len(PROFILES)))]
    itemsize = int(rng.choice([1, 2, 4, 8]))
    return random_masks(rng, nodes, nblocks), cfg, prof, itemsize


def assert_same_plan(new, ref) -> None:
    assert new.layout.nodes == ref.layout.nodes and new.layout.nblocks == ref.layout.nblocks
    for name in ("aggregator_node", "slot_agg", "slot_lo", "slot_hi"):
        a, b = getattr(new.layout, name), getattr(ref.layout, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert len(new.rounds) == len(ref.rounds)
    for rn, rr in zip(new.rounds, ref.rounds):
        assert rn.index == rr.index
        for name in ("slots", "lo", "hi", "sent", "reports", "result", "next_lo"):
            a, b = getattr(rn, name), getattr(rr, name)
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), (rn.index, name)
        sent = rn.sent_rows(0, len(rn.slots))
        assert np.array_equal(sent, rr.sent)
        assert np.array_equal(rn.reports_rows(0, len(rn.slots), sent), rr.reports)


def assert_same_timing(new, ref) -> None:
    assert new.emulated_us == ref.emulated_us
    assert new.node_done_us.dtype == ref.node_done_us.dtype
    assert np.array_equal(new.node_done_us, ref.node_done_us)
    assert new.host_busy_us == ref.host_busy_us
    assert new.nic_busy_us == ref.nic_busy_us
    assert new.wire_bytes == ref.wire_bytes and type(new.wire_bytes) is int
    assert new.upstream_bytes == ref.upstream_bytes
    assert new.downstream_bytes == ref.downstream_bytes
    assert new.spilled == ref.spilled


def check_case(masks, cfg, profile, itemsize) -> None:
    ref_plan = _reference_plan_rounds(masks, cfg)
    ref = _reference_sparse_time(ref_plan, profile, itemsize)
    # the timing reads the masks lazily: time a fresh plan before its rounds are materialised
    assert_same_timing(sparse_time(plan_rounds(masks, cfg), profile, itemsize), ref)
    assert_same_timing(sparse_time(plan_rounds(PackedMasks.pack(masks), cfg), profile, itemsize), ref)
    plan = plan_rounds(masks, cfg)
    assert_same_plan(plan, ref_plan)
    assert_same_timing(sparse_time(plan, profile, itemsize), ref)      # from materialised rounds
    # the new code also times a plan built by hand (the reference's rounds)
    assert_same_timing(sparse_time(ref_plan, profile, itemsize), ref)
    bb = cfg.block_size * itemsize
    assert np.array_equal(plan.upstream_bytes(bb), ref_plan.upstream_bytes(bb))
    assert np.array_equal(plan.downstream_bytes(bb), ref_plan.downstream_bytes(bb))


@pytest.fixture(params=["default", "tiny", "small"])
def chunks(request, monkeypatch):
    """Force the chunked code paths: a few (slot, worker) pairs and mask bytes per chunk. The forced
    ones run the numpy path (the scalar path for few nodes, docs/model.md §10.8, has no chunks)."""
    if request.param == "tiny":
        monkeypatch.setattr(sparse_state, "CHUNK", 1)
        monkeypatch.setattr(spot_protocol, "_COUNT_CHUNK", 1)
    elif request.param == "small":
        monkeypatch.setattr(sparse_state, "CHUNK", 23)
        monkeypatch.setattr(spot_protocol, "_COUNT_CHUNK", 57)
    if request.param != "default":
        monkeypatch.setattr(sparse_timing, "SCALAR", False)
    return request.param


@pytest.mark.parametrize("seed", range(30))
def test_random_configs_match_reference(seed, chunks):
    rng = np.random.default_rng([seed, 20240611])
    for _ in range(6):
        masks, cfg, prof, itemsize = random_case(rng)
        check_case(masks, cfg, PROFILES[prof], itemsize)


def random_profile(rng: np.random.Generator) -> Profile:
    """A profile with awkward (non-round) numbers, so that rounding differences would show."""
    def num(lo: float, hi: float) -> str:
        return repr(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
    sets = [f"link.bandwidth_GBps={num(0.5, 400)}", f"link.latency_us={num(0.01, 20)}",
            f"pcie.bandwidth_GBps={num(1, 200)}", f"pcie.latency_us={num(0.01, 5)}",
            f"host.reduce_GBps={num(0.5, 100)}", f"host.overhead_us={num(0.01, 30)}",
            f"nic.reduce_GBps={num(0.5, 300)}", f"nic.latency_us={num(0.01, 5)}",
            f"nic.memory_KiB={num(1, 4096)}"]
    if rng.random() < 0.2:
        sets.append("nic.reduce_GBps=.inf")
    return load_profile("omniccl-paper", sets + NO_HEADERS)


@pytest.mark.parametrize("seed", range(20))
def test_random_profiles_match_reference(seed, chunks):
    rng = np.random.default_rng([seed, 7])
    for _ in range(4):
        masks, cfg, _, itemsize = random_case(rng)
        check_case(masks, cfg, random_profile(rng), itemsize)


@pytest.mark.parametrize("seed", range(12))
def test_hand_made_rounds_match_reference(seed):
    """sparse_time times any plan, also one whose rounds were not made by plan_rounds."""
    rng = np.random.default_rng([seed, 11])
    for _ in range(4):
        masks, cfg, prof, itemsize = random_case(rng)
        plan = _reference_plan_rounds(masks, cfg)
        for r in plan.rounds:
            shape = r.sent.shape
            r.sent = rng.integers(0, cfg.spot_blocks + 1, shape).astype(r.sent.dtype)
            r.reports = rng.random(shape) < rng.choice([0.0, 0.3, 1.0])
            if rng.random() < 0.3:
                r.sent[~r.reports] = 0
        profile = PROFILES[prof] if rng.random() < 0.5 else random_profile(rng)
        assert_same_timing(sparse_time(plan, profile, itemsize),
                           _reference_sparse_time(plan, profile, itemsize))


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("prof", list(PROFILES))
@pytest.mark.parametrize("tx_spots,spots,spot_blocks,aggregators",
                         [(1, 1, 1, None), (2, 3, 5, 2), (2, 2, 3, 1), (1, 3, 2, 2), (2, 16, 1, None)])
def test_grid_matches_reference(algo, prof, tx_spots, spots, spot_blocks, aggregators, chunks):
    rng = np.random.default_rng([tx_spots, spots, spot_blocks, aggregators or 0, len(algo)])
    for nodes, nblocks, density in ((2, 3, 1.0), (5, 64, 0.3), (9, 150, 0.05), (7, 2, 0.5), (3, 200, 0.0)):
        masks = rng.random((nodes, nblocks)) < density
        cfg = sparse_config(algo, nodes, block_size=16, aggregators=aggregators, spots=spots,
                            spot_blocks=spot_blocks, tx_spots=tx_spots)
        check_case(masks, cfg, PROFILES[prof], 4)


# configurations no algorithm uses today, but that a SparseConfig can express: they take the
# general paths (a self-clock kept per slot and worker, strict slot order on a shared host)
ODD = [
    dict(aggregation="cpu", host_packing=True),
    dict(aggregation="nic", host_packing=True),
    dict(aggregation="nic", host_packing=True, credits=False),
    dict(aggregation="cpu", credits=False),
    dict(aggregation="dedicated", credits=True),
    dict(aggregation="dedicated", host_packing=False, dense_first_round=False),
    dict(aggregation="nic", dense_first_round=True),
    dict(aggregation="cpu", host_packing=True, credits=False, dense_first_round=True),
]


@pytest.mark.parametrize("extra", ODD)
@pytest.mark.parametrize("base", ALGOS)
def test_unusual_configs_match_reference(base, extra, chunks):
    rng = np.random.default_rng(len(base) + 7 * len(extra))
    for nodes, nblocks, density in ((4, 40, 0.3), (6, 90, 0.08), (3, 10, 1.0)):
        masks = rng.random((nodes, nblocks)) < density
        cfg = replace(sparse_config(base, nodes, block_size=8, spots=2, spot_blocks=3), **extra)
        for prof in ("omniccl-paper", "spill"):
            check_case(masks, cfg, PROFILES[prof], 4)


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("density", [1.0, 0.1])
def test_benchmark_pattern_medium_scale(algo, density):
    """The benchmark's masks (pattern_mask, random overlap) on 64 nodes, default configuration."""
    nodes, count = 64, 64 * 256 * 40
    masks = np.stack([pattern_mask(w, nodes, count, 256, density, "random", 0) for w in range(nodes)])
    cfg = sparse_config(algo, nodes)
    ref = _reference_sparse_time(_reference_plan_rounds(masks, cfg), PROFILES["omniccl-paper"], 4)
    assert_same_timing(sparse_time(plan_rounds(masks, cfg), PROFILES["omniccl-paper"], 4), ref)
    t = model_sparse(cfg, PackedMasks.pack(masks), PROFILES["omniccl-paper"], 4)
    assert t.emulated_us == ref.emulated_us and t.wire_bytes == ref.wire_bytes


@pytest.mark.parametrize("algo", ALGOS)
def test_windows_of_more_than_255_blocks(algo, chunks):
    rng = np.random.default_rng(3)
    for density in (1.0, 0.2, 0.002):
        masks = rng.random((4, 1300)) < density
        cfg = sparse_config(algo, 4, block_size=2, spots=2, spot_blocks=300, aggregators=2)
        check_case(masks, cfg, PROFILES["omniccl-paper"], 4)


def test_single_node():
    masks = np.array([[True, False, True, True]])
    for algo in ALGOS:
        cfg = sparse_config(algo, 1, block_size=4, spot_blocks=2)
        check_case(masks, cfg, PROFILES["omniccl-paper"], 4)


# ---------------------------------------------------------------------------------------
# The building blocks
# ---------------------------------------------------------------------------------------

def test_row_scan_matches_scan_with_neutral_entries():
    rng = random.Random(5)
    nrng = np.random.default_rng(5)
    for _ in range(300):
        length = rng.randint(1, 40)
        ready = nrng.random(length) * 10 ** rng.randint(-3, 6)
        service = nrng.random(length) * 10 ** rng.randint(-3, 4)
        start = float(nrng.random() * 100)
        want = max_plus_scan(start, ready, service)
        # hide neutral entries anywhere and pad the end
        width = length + rng.randint(0, 5)
        keep = sorted(rng.sample(range(width), length))
        r = np.full((2, width + 3), -np.inf)
        s = np.zeros((2, width + 3))
        r[0, keep], s[0, keep] = ready, service
        r[1, :length], s[1, :length] = ready, service
        got = max_plus_rows(np.array([start, start]), r, s)
        assert np.array_equal(got[0, keep], want) and np.array_equal(got[1, :length], want)
        assert got[0, -1] == want[-1] == got[1, -1]
    empty = max_plus_rows(np.array([3.5]), np.full((1, 4), -np.inf), np.zeros((1, 4)))
    assert np.array_equal(empty, np.full((1, 4), 3.5))


def test_row_sums_keep_numpys_pairwise_order():
    nrng = np.random.default_rng(2)
    lengths = np.array([1, 7, 8, 9, 127, 128, 129, 255, 256, 1000, 4096, 4097, 9000])
    m = nrng.random((len(lengths), 9100)) * 10.0 ** nrng.integers(-8, 8, (len(lengths), 9100))
    got = row_sums(m, lengths)
    for i, ell in enumerate(lengths):
        assert got[i] == np.ascontiguousarray(m[i, :ell]).sum()


@pytest.mark.parametrize("nblocks", [1, 7, 8, 9, 100, 257])
def test_packed_masks_and_window_counts(nblocks, monkeypatch):
    monkeypatch.setattr(spot_protocol, "_COUNT_CHUNK", 19)
    rng = np.random.default_rng(nblocks)
    masks = rng.random((5, nblocks)) < 0.4
    packed = PackedMasks.pack(masks)
    assert packed.shape == masks.shape
    assert np.array_equal(packed.unpack(), masks)
    assert np.array_equal(packed.union(), masks.any(axis=0))
    csum = np.concatenate([np.zeros((5, 1), np.int64), np.cumsum(masks, axis=1)], axis=1)
    for width in (1, 2, 3, 8):
        for gap in (0, 1, 5):
            lo = np.arange(0, nblocks, width + gap)
            hi = np.minimum(lo + width, nblocks)
            for src in (masks, packed):
                got = spot_protocol.WindowCounts(src).counts(lo, hi)
                assert np.array_equal(got, (csum[:, hi] - csum[:, lo]).T)
    with pytest.raises(ValueError):
        PackedMasks(packed.bits[:, :-1], nblocks + 8)


def test_exhaustive_small_masks():
    """Every mask of 2 nodes x 4 blocks, for each algorithm, with windows of 2 blocks."""
    prof = PROFILES["omniccl-paper"]
    for algo, tx in itertools.product(ALGOS, (1, 2)):
        cfg = sparse_config(algo, 2, block_size=4, spots=1, aggregators=1, spot_blocks=2, tx_spots=tx)
        for bits in range(1 << 8):
            masks = np.array([(bits >> i) & 1 for i in range(8)], dtype=bool).reshape(2, 4)
            ref = _reference_sparse_time(_reference_plan_rounds(masks, cfg), prof, 4)
            assert_same_timing(sparse_time(plan_rounds(masks, cfg), prof, 4), ref)


_UNUSED = (SparseConfig, us_per_byte, CREDIT_BYTES)   # names the frozen reference relies on


@pytest.mark.parametrize("algo", tuple(names(kind="sparse")))
def test_public_halves_give_model_sparse(algo):
    """plan_sparse then time_sparse_plan (what the sparse model bench times apart) is model_sparse."""
    from nicemu.collectives import PackedMasks, names, plan_sparse, time_sparse_plan
    assert algo in names(kind="sparse")
    n, count = 6, 5000
    cfg = sparse_config(algo, n, block_size=64)
    masks = np.stack([pattern_mask(w, n, count, 64, 0.3, "random", 1) for w in range(n)])
    prof = load_profile("omniccl-paper")
    want = model_sparse(cfg, masks, prof, 4, stragglers={2: 2.5})
    plan = plan_sparse(cfg, PackedMasks(np.packbits(masks, axis=1), masks.shape[1]))
    got = time_sparse_plan(plan, prof, 4, stragglers={2: 2.5})
    assert got.emulated_us == want.emulated_us and got.wire_bytes == want.wire_bytes
    assert np.array_equal(got.node_done_us, want.node_done_us)
    assert (got.host_busy_us, got.nic_busy_us, got.spilled) == (want.host_busy_us, want.nic_busy_us, want.spilled)
