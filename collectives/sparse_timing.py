"""Emulated time of the spot protocol (OmNICCL, its CPU-aggregator variant, OmniReduce).

The rounds come from :mod:`collectives.spot_protocol`. Time is advanced
round by round and, within a round, slot by slot in ascending order, so every
shared resource (a node's link in each direction, its PCIe engines, its NIC
reduction engine, its host CPU) serves messages in one canonical order. That
makes the result a pure function of the block masks: both executors call this
function and get the same numbers bit for bit.

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

from collectives.spot_protocol import CREDIT_BYTES, INDEX_BYTES, RECORD_HEADER_BYTES, Plan
from nic.profile import Profile
from nic.streams import us_per_byte


@dataclass
class SparseTiming:
    emulated_us: float
    node_done_us: np.ndarray      # per node (worker)
    host_busy_us: float           # busiest host (workers and aggregators)
    nic_busy_us: float            # busiest NIC reduction engine
    wire_bytes: int               # bytes that crossed links, metadata included
    upstream_bytes: int           # worker -> aggregator, over links
    downstream_bytes: int         # aggregator -> worker, over links
    spilled: bool                 # spots did not fit in NIC memory


def spot_memory_bytes(nodes: int, cfg, block_bytes: int) -> int:
    """NIC memory one aggregator needs for its Rx spots (one region per worker) and Tx spots."""
    record = cfg.spot_blocks * (block_bytes + INDEX_BYTES) + RECORD_HEADER_BYTES
    return cfg.spots * (nodes + cfg.tx_spots) * record


def _max_plus_scan(start: float, ready: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Completion times of FIFO jobs in order: done_j = max(done_{j-1}, ready_j) + service_j."""
    if len(ready) == 0:
        return ready
    csum = np.cumsum(service)
    prev = np.concatenate([[0.0], csum[:-1]])
    return csum + np.maximum(start, np.maximum.accumulate(ready - prev))


def sparse_time(plan: Plan, profile: Profile, itemsize: int) -> SparseTiming:
    cfg, lay = plan.cfg, plan.layout
    n = lay.nodes
    bb = cfg.block_size * itemsize
    beta, alpha = us_per_byte(profile.link.bandwidth_GBps), profile.link.latency_us
    pi, a_p = us_per_byte(profile.pcie.bandwidth_GBps), profile.pcie.latency_us
    gamma, o_h = us_per_byte(profile.host.reduce_GBps), profile.host.overhead_us
    nu, a_n = us_per_byte(profile.nic.reduce_GBps), profile.nic.latency_us
    dedicated = cfg.aggregation == "dedicated"
    spilled = (cfg.aggregation == "nic"
               and spot_memory_bytes(n, cfg, bb) > profile.nic.memory_KiB * 1024)

    k = len(lay.aggregator_node)
    ends = n + (k if dedicated else 0)               # endpoints: nodes, then dedicated aggregators
    agg_end = (n + np.arange(k)) if dedicated else lay.aggregator_node
    out_free = np.zeros(ends)
    in_free = np.zeros(ends)
    rd_free = np.zeros(ends)
    wr_free = np.zeros(ends)
    host_free = np.zeros(ends)
    nic_free = np.zeros(ends)
    host_busy = np.zeros(ends)
    nic_busy = np.zeros(ends)
    clock = np.zeros((lay.slots, n))                 # self-clock: when the worker may write again
    tx_free = np.zeros((lay.slots, cfg.tx_spots))
    done = np.zeros(n)
    up = down = 0
    workers = np.arange(n)

    for rnd in plan.rounds:
        # phase 1, slot by slot: contributions travel up and are aggregated
        ready_at = np.zeros(len(rnd.slots))   # result complete in the Tx spot
        consumed = np.zeros(len(rnd.slots))   # every Rx record of the round consumed
        for j, s in enumerate(rnd.slots):
            g = int(agg_end[lay.slot_agg[s]])
            who = np.flatnonzero(rnd.reports[j])
            sent = rnd.sent[j, who].astype(np.float64)
            data = sent * bb
            msg = sent * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES
            ready = clock[s, who]

            # worker side: (OmniReduce) the host finds and packs the blocks, then the NIC
            # DMA-reads them; (OmNICCL) the NIC reads them straight from the LLC (DCA).
            if cfg.host_packing:
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
            arrival[remote] = _max_plus_scan(in_free[g], out_free[who[remote]] + alpha - msg[remote] * beta,
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
                finish = _max_plus_scan(first, arr, data * nu)
                nic_free[g] = finish[-1] if len(finish) else first
                nic_busy[g] += float((data * nu).sum())
                consumed[j] = nic_free[g] + a_n
                ready_at[j] = consumed[j] + ((a_p + rb_data * pi) if spilled else 0.0)
            elif cfg.aggregation == "cpu":
                landed = _max_plus_scan(wr_free[g], arrival, data * pi)
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
                finish = _max_plus_scan(start0, arrival + a_p + data * pi, o_h + data * gamma)
                host_free[g] = finish[-1] if len(finish) else start0
                host_busy[g] += float((o_h + data * gamma).sum())
                consumed[j] = host_free[g]
                ready_at[j] = host_free[g] + a_p + rb_data * pi

        # phase 2, slot by slot: results scatter to every worker and land in host memory
        for j, s in enumerate(rnd.slots):
            g = int(agg_end[lay.slot_agg[s]])
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
            # a worker writes its next record once it may (credit) or once it has the result
            clock[s] = credit if cfg.credits else landed   # (unused after a slot's last round)
            done = np.maximum(done, landed)

    return SparseTiming(float(done.max()), done, float(host_busy.max()), float(nic_busy.max()),
                        up + down, up, down, bool(spilled))
