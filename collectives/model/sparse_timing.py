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
  scatter follows from the previous one, and OmniReduce's self-clock (a copy
  of the worker host's free time) never exceeds that free time when read.
* Slots are taken in chunks of bounded size, and the workers' block counts are
  read from the masks per chunk (``Round.sent_rows``), so memory stays small.

The sparse algorithms run on a switched fabric, as in the OmNICCL and
OmniReduce testbeds: every node (and every dedicated aggregator) has one
full-duplex link of the profile's rate to a non-blocking switch, and a message
crosses one link out and one link in (latency ``link.latency_us`` once). A
message is timed as a whole: it occupies a link for ``bytes * beta``. The
formulas are in docs/model.md, "The spot protocol".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.link_faults import FaultStats
from nicemu.collectives.schedules.spot_protocol import (
    CREDIT_BYTES,
    INDEX_BYTES,
    RECORD_HEADER_BYTES,
    Plan,
    Round,
    SparseConfig,
    plan_rounds,
)
from nicemu.nic.faults import FaultSpec, transfer_faults
from nicemu.nic.profile import Profile
from nicemu.nic.stragglers import node_factors, per_node
from nicemu.nic.streams import us_per_byte


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
    faults: dict | None = None    # --faults on the Rx-spot writes: drops, corruptions, ..., per_link


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


def _max_plus_rows(start: np.ndarray, ready: np.ndarray, service: np.ndarray | None,
                   work: tuple[np.ndarray, np.ndarray] | None = None,
                   csum: np.ndarray | None = None) -> np.ndarray:
    """Row ``i`` is ``_max_plus_scan(start[i], ready[i], service[i])``, bit for bit.

    An entry with ``service`` 0 and ``ready`` -inf is neutral: every other entry
    gets the value it would get without it (0 added to the running sum changes
    nothing, -inf never wins the max), and it takes the value of the entry
    before it, or ``start``. Rows are padded at the end with such entries, and
    entries that do not use the resource are hidden with them, so the last
    column holds the resource's new free time. ``work``: two arrays of the shape
    of ``ready`` for the running sum and the result (the result may be ``ready``).
    ``csum``: the running sums of ``service`` if they are known already.
    """
    if csum is not None:
        d = np.empty_like(ready) if work is None else work[1]
    elif work is None:
        csum, d = np.cumsum(service, axis=1), np.empty_like(ready)
    else:
        csum, d = work
        np.cumsum(service, axis=1, out=csum)
    d[:, 0] = ready[:, 0]
    np.subtract(ready[:, 1:], csum[:, :-1], out=d[:, 1:])
    np.maximum.accumulate(d, axis=1, out=d)
    np.maximum(d, start[:, None], out=d)
    d += csum
    return d


def _max_plus_shared(start: np.ndarray, ready: np.ndarray, sums: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """``_max_plus_rows`` (in place in ``ready``) when every row has the same service times,
    whose running sums are ``sums`` and, shifted right by one with 0 first, ``prev``."""
    np.subtract(ready, prev, out=ready)
    np.maximum.accumulate(ready, axis=1, out=ready)
    np.maximum(ready, start[:, None], out=ready)
    ready += sums
    return ready


def _row_sums(m: np.ndarray, length: np.ndarray) -> np.ndarray:
    """``m[i, :length[i]].sum()`` per row, in numpy's pairwise order for that length."""
    if len(length) and (length == m.shape[1]).all():
        return m.sum(axis=1)
    out = np.zeros(len(length))
    for ell in np.unique(length):
        if ell > 0:
            rows = np.flatnonzero(length == ell)
            out[rows] = m[rows, :ell].sum(axis=1)
    return out


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """Position of each entry among the consecutive entries with the same ``group`` value."""
    m = len(group)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.ones(m, dtype=bool)
    first[1:] = group[1:] != group[:-1]
    idx = np.arange(m)
    return idx - np.maximum.accumulate(np.where(first, idx, 0))


_CHUNK = 1 << 18          # (slot, worker) pairs held at once (a few MiB per array: cache-sized)
_NEG = -np.inf


class _PerWorker:
    """Slot ``j``'s cost per worker, ``add + x[j] * rate`` over the workers, made when read."""

    def __init__(self, x: np.ndarray, rate: np.ndarray, add: np.ndarray | None = None) -> None:
        self.x, self.rate, self.add = x.tolist(), rate, add

    def __getitem__(self, j: int) -> np.ndarray:
        v = self.x[j] * self.rate
        return v if self.add is None else self.add + v


class _Timer:
    """State of the shared resources while the rounds are timed (see the module docstring)."""

    def __init__(self, plan: Plan, profile: Profile, itemsize: int, faults: FaultSpec | None = None,
                 call: int = 0, slow: np.ndarray | None = None) -> None:
        cfg, lay = plan.cfg, plan.layout
        self.faults, self.call = faults, call
        self.fault_stats = FaultStats()
        self.rto_us, self.packet_bytes = profile.nic.retransmit_timeout_us, profile.nic.packet_bytes
        self.cfg, self.lay = cfg, lay
        n = self.n = lay.nodes
        self.bb = cfg.block_size * itemsize
        self.beta, self.alpha = us_per_byte(profile.link.bandwidth_GBps), profile.link.latency_us
        self.pi, self.a_p = us_per_byte(profile.pcie.bandwidth_GBps), profile.pcie.latency_us
        self.gamma, self.o_h = us_per_byte(profile.host.reduce_GBps), profile.host.overhead_us
        self.nu, self.a_n = us_per_byte(profile.nic.reduce_GBps), profile.nic.latency_us
        self.cb = CREDIT_BYTES * self.beta
        self.dedicated = cfg.aggregation == "dedicated"
        self.spilled = (cfg.aggregation == "nic"
                        and spot_memory_bytes(n, cfg, self.bb) > profile.nic.memory_KiB * 1024)
        k = len(lay.aggregator_node)
        ends = n + (k if self.dedicated else 0)      # endpoints: nodes, then dedicated aggregators
        agg_end = (n + np.arange(k)) if self.dedicated else lay.aggregator_node
        self.slot_g = np.asarray(agg_end, dtype=np.int64)[lay.slot_agg]
        # --straggler: per-endpoint service parameters (scalar x factor, so a factor of 1 gives
        # the scalar itself); None keeps the scalars and the shared-constant shortcuts
        self.slow = slow
        if slow is not None:
            fe = np.ones(ends)
            fe[:n] = slow
            self.pi_e, self.a_p_e, self.gamma_e = self.pi * fe, self.a_p * fe, self.gamma * fe
            self.o_h_e, self.nu_e, self.a_n_e = self.o_h * fe, self.nu * fe, self.a_n * fe
        self.far = n if self.dedicated else n - 1     # workers a result is scattered to
        self.out_free = np.zeros(ends)
        self.in_free = np.zeros(ends)
        self.rd_free = np.zeros(ends)
        self.wr_free = np.zeros(ends)
        self.host_free = np.zeros(ends)
        self.nic_free = np.zeros(ends)
        self.host_busy = np.zeros(ends)
        self.nic_busy = np.zeros(ends)
        self.tx_free = np.zeros((lay.slots, cfg.tx_spots))
        self.done = np.zeros(n)
        self.up = self.down = 0
        # With finite non-negative costs every free time only grows. Then a worker's latest
        # landed result is its latest done time, the latest arrival on a link is the latest
        # arrival of any message, and (OmniReduce) the self-clock, a copy of the worker
        # host's free time, never exceeds that host's free time when it is read.
        self.monotone = all(math.isfinite(x) and x >= 0
                            for x in (self.beta, self.alpha, self.pi, self.a_p, self.gamma, self.o_h))
        self.skip_clock = cfg.host_packing and not cfg.credits and self.monotone
        # the self-clock per (slot, worker): calloc'ed, only rows of slots that go on are touched
        self.clock = None if self.skip_clock else np.zeros((lay.slots, n))
        self.consumed = self.ready_at = np.zeros(0)
        self._pool: dict[str, np.ndarray] = {}
        self._fullsums: dict[tuple[float, int], float] = {}
        self._cumsums: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def _buf(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """A reusable work array (its pages are faulted in once, not per chunk)."""
        size = shape[0] * shape[1]
        b = self._pool.get(name)
        if b is None or b.size < size:
            b = self._pool[name] = np.empty(max(size, 1))
        return b[:size].reshape(shape)

    def _const_sums(self, c: np.ndarray, length: np.ndarray) -> np.ndarray:
        """``np.full(length[i], c[i]).sum()`` per row (numpy's pairwise order, memoised)."""
        memo = self._fullsums
        if len(c) and (c == c[0]).all() and (length == length[0]).all():
            key = (float(c[0]), int(length[0]))
            v = memo.get(key)
            if v is None:
                v = memo[key] = float(np.full(key[1], key[0]).sum()) if key[1] else 0.0
            return np.full(len(c), v)
        out = np.zeros(len(c))
        for i, (ci, li) in enumerate(zip(c.tolist(), length.tolist())):
            if li:
                v = memo.get((ci, li))
                if v is None:
                    v = memo[(ci, li)] = float(np.full(li, ci).sum())
                out[i] = v
        return out

    def _scan(self, start: np.ndarray, ready: np.ndarray, per_record: np.ndarray, valid: np.ndarray | None,
              length: np.ndarray, const: bool, csum: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``_max_plus_rows`` in place in ``ready``, with service ``per_record``.

        Returns the completion times and, per row, the resource's new free time (the
        last record's completion, or ``start`` for a row without records). When every
        record of the block has the same service time, the running sums are those of
        a constant: computed once and shared by the rows. Padding then costs that
        service too, but its ready time is -inf, so no record before it is affected;
        its own times are meaningless and the free time is read at the last record.
        """
        r, width = ready.shape
        if const:
            c = per_record[:, 0]
            v = float(c[0])
            if v >= 0 and (c == v).all():
                sums, prev = self._const_cumsum(v)
                out = _max_plus_shared(start, ready, sums[:width], prev[:width])
                if valid is None:
                    return out, out[:, -1]
                last = out[np.arange(r), np.maximum(length - 1, 0)]
                return out, np.where(length > 0, last, start)
        service = self._entries(per_record, valid, width, name)
        out = _max_plus_rows(start, ready, service, (csum, ready))
        return out, out[:, -1]

    def _const_cumsum(self, v: float) -> tuple[np.ndarray, np.ndarray]:
        """``np.cumsum(np.full(n, v))`` and the same shifted right by one (0 first)."""
        out = self._cumsums.get(v)
        if out is None:
            if len(self._cumsums) > 64:
                self._cumsums.clear()
            sums = np.cumsum(np.full(max(self.n, 1), v))
            out = self._cumsums[v] = (sums, np.concatenate([[0.0], sums[:-1]]))
        return out

    # ---- phase 1: contributions travel up and are aggregated -------------------------

    def phase1(self, rnd: Round) -> None:
        nact = len(rnd.slots)
        self.consumed = np.zeros(nact)   # every Rx record of the round consumed
        self.ready_at = np.zeros(nact)   # result complete in the Tx spot
        if self.cfg.host_packing and self.cfg.aggregation == "cpu":
            step = 1      # the aggregator's host also packs its own records: keep strict slot order
        else:
            step = max(1, _CHUNK // max(self.n, 1))
        for j0 in range(0, nact, step):
            self._phase1_chunk(rnd, j0, min(nact, j0 + step))

    def _phase1_chunk(self, rnd: Round, j0: int, j1: int) -> None:
        cfg, lay, n, bb = self.cfg, self.lay, self.n, self.bb
        m = j1 - j0
        if hasattr(rnd, "sent_rows"):
            small = np.uint8 if int((rnd.hi[j0:j1] - rnd.lo[j0:j1]).max()) < 256 else np.int32
            sent = rnd.sent_rows(j0, j1, small)
            rep = np.asarray(rnd.reports_rows(j0, j1, sent), dtype=bool)
        else:                           # rounds given as plain arrays
            sent, rep = rnd.sent[j0:j1], np.asarray(rnd.reports[j0:j1], dtype=bool)
        slots = rnd.slots[j0:j1]
        g = self.slot_g[slots]
        length_j = np.count_nonzero(rep, axis=1)
        dense = bool((length_j == n).all())
        if dense:
            top, low = sent.max(axis=1), sent.min(axis=1)
        else:
            # the writing workers of each slot, ascending (slot j: who[ptr[j]:ptr[j + 1]])
            flat = np.flatnonzero(rep)
            row = flat // n
            who = flat - row * n
            vals = np.ascontiguousarray(sent).reshape(-1)[flat]
            ptr = np.zeros(m + 1, dtype=np.int64)
            np.cumsum(length_j, out=ptr[1:])
            top = np.zeros(m, dtype=vals.dtype)
            low = np.zeros(m, dtype=vals.dtype)
            some = np.flatnonzero(length_j > 0)
            if len(some):
                top[some] = np.maximum.reduceat(vals, ptr[some])
                low[some] = np.minimum.reduceat(vals, ptr[some])
        # the same count from every worker of a slot (always so for OmniReduce): one per row
        const = self.slow is None and bool(((top == low) | (length_j == 0)).all())

        # Rows (slots) are stored grouped by their position within their aggregator, so that
        # the aggregators' work below takes contiguous blocks; the workers' loop still walks
        # the slots in ascending order.
        rank = _rank_in_group(lay.slot_agg[slots])
        order = np.argsort(rank, kind="stable")
        pos_of = np.empty(m, dtype=np.int64)
        pos_of[order] = np.arange(m)
        bounds = np.searchsorted(rank[order], np.arange(int(rank.max()) + 2))
        length = length_j[order]
        slots_p, g_p = slots[order], g[order]
        width = n if dense else max(int(length.max()), 1)
        valid = None if dense else np.arange(width)[None, :] < length[:, None]
        if const:
            sval = np.where(length > 0, top[order], 0).astype(np.float64)[:, None]
        elif dense:
            sval = np.array(sent[order], dtype=np.float64, order="C")
        else:
            sval = np.zeros((m, width))
            sval[pos_of[row], np.arange(len(flat)) - ptr[row]] = vals
        data = sval * bb
        msg = sval * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES
        msg_b = msg * self.beta
        slow = self.slow is not None
        if slow:     # --straggler: each record's worker and aggregator serve at their own rates
            if dense:
                wk = np.broadcast_to(np.arange(n), (m, width))
            else:
                wk = np.zeros((m, width), dtype=np.int64)
                wk[pos_of[row], np.arange(len(flat)) - ptr[row]] = who
            data_pi = data * self.pi_e[wk]                   # the worker's DMA read
            data_pi_agg = data * self.pi_e[g_p][:, None]     # the aggregator's DMA write
        else:
            data_pi = data_pi_agg = data * self.pi
        if const:
            has_all = ((data[:, 0] > 0) | (length == 0)).tolist()
        elif dense:
            has_all = (data > 0).all(axis=1).tolist()
        else:
            has_all = ((data > 0) | ~valid).all(axis=1).tolist()
        if cfg.host_packing:
            window = ((rnd.hi[j0:j1] - rnd.lo[j0:j1]) * bb)[order]
            if slow:
                pack = (window[:, None] + data) * self.gamma_e[wk]
                pack_busy = self.o_h_e[wk] + pack
            else:
                pack = (window[:, None] + data) * self.gamma
                pack_busy = self.o_h + pack
            if const:
                pack_l, pack_busy_l = pack[:, 0].tolist(), pack_busy[:, 0].tolist()
        if const:
            data_pi_l, msg_b_l = data_pi[:, 0].tolist(), msg_b[:, 0].tolist()
        fb = None                                   # --faults: go-back-N delay of every Rx record
        if self.faults is not None:
            if dense:
                f_row, f_col = np.divmod(np.arange(m * n), n)
                f_who = f_col
            else:
                f_row, f_who = row, who
                f_col = np.arange(len(flat)) - ptr[row]
            f_p = pos_of[f_row]
            f_bytes = np.rint(msg[f_p, 0 if const else f_col]).astype(np.int64)
            f_bytes[f_who == g[f_row]] = 0         # the aggregator's own record crosses no link
            tf = transfer_faults(self.faults, self.rto_us, self.packet_bytes, self.beta, self.alpha,
                                 self.call, rnd.index * 2**32 + slots[f_row], f_who, g[f_row], f_bytes)
            if tf.any:
                self.fault_stats.add(f_who, g[f_row], tf)
                fb = np.zeros((m, width))
                fb[f_p, f_col] = tf.delay_us
        rin = self._buf("rin", (m, width))          # link-out done + alpha, per record
        ready_local = np.zeros(m)                   # a record that stays inside the aggregator's node
        local_pos = np.full(m, -1, dtype=np.int64)

        host_free, host_busy, rd_free, out_free = self.host_free, self.host_busy, self.rd_free, self.out_free
        clock = self.clock
        a_p, o_h, alpha = self.a_p, self.o_h, self.alpha
        if slow:     # the workers' own overhead and DMA latency (arrays over the nodes)
            a_p, o_h = self.a_p_e[:n], self.o_h_e[:n]
        first_round = clock is None or rnd.index == 0
        slot_l, g_l, pos_l = slots.tolist(), g.tolist(), pos_of.tolist()
        workers = slice(0, n)
        hf, hb, rdf, off = host_free[:n], host_busy[:n], rd_free[:n], out_free[:n]
        tmp = np.empty(n)
        pack_on = cfg.host_packing
        ptr_l = None if dense else ptr.tolist()
        for j in range(m):
            s, gj, p = slot_l[j], g_l[j], pos_l[j]
            if dense and has_all[p]:
                # every worker writes a non-empty record: the same steps as below, in place
                ready = 0.0 if first_round else clock[s]
                if pack_on:
                    if clock is None:
                        np.add(hf, o_h, out=hf)
                    else:
                        np.maximum(ready, hf, out=hf)
                        hf += o_h
                    hf += pack_l[p] if const else pack[p]
                    hb += pack_busy_l[p] if const else pack_busy[p]
                    np.maximum(hf, rdf, out=rdf)
                else:
                    np.maximum(ready, rdf, out=rdf)
                rdf += data_pi_l[p] if const else data_pi[p]
                np.add(rdf, a_p, out=tmp)
                if self.dedicated:
                    np.maximum(tmp, off, out=off)
                    off += msg_b_l[p] if const else msg_b[p]
                    if fb is not None:
                        off += fb[p]
                else:
                    keep = off[gj]
                    np.maximum(tmp, off, out=off)
                    off += msg_b_l[p] if const else msg_b[p]
                    if fb is not None:
                        off += fb[p]
                    off[gj] = keep
                    local_pos[p] = gj
                    ready_local[p] = tmp[gj]
                np.add(off, alpha, out=rin[p])
                continue
            if dense:
                ln, idx = n, workers
            else:
                idx = who[ptr_l[j]:ptr_l[j + 1]]
                ln = len(idx)
            ready = 0.0 if first_round else clock[s, idx]
            # worker side: (OmniReduce) the host finds and packs the blocks, then the NIC
            # DMA-reads them; (OmNICCL) the NIC reads them straight from the LLC (DCA).
            if cfg.host_packing:
                if clock is None:
                    h = host_free[idx] + per_node(o_h, idx)
                else:
                    h = np.maximum(ready, host_free[idx])
                    h += per_node(o_h, idx)
                if const:
                    h += pack_l[p]
                    host_free[idx] = h
                    host_busy[idx] += pack_busy_l[p]
                else:
                    h += pack[p, :ln]
                    host_free[idx] = h
                    host_busy[idx] += pack_busy[p, :ln]
                ready = h
            r0 = rd_free[idx]
            start = np.maximum(ready, r0)
            if has_all[p]:
                start += data_pi_l[p] if const else data_pi[p, :ln]
                rd_free[idx] = start
                ready = start + per_node(a_p, idx)
            else:
                has = (data[p, 0] > 0) if const else (data[p, :ln] > 0)
                rdv = np.where(has, start + (data_pi_l[p] if const else data_pi[p, :ln]), r0)
                rd_free[idx] = rdv
                ready = np.where(has, rdv + per_node(a_p, idx), ready)
            # upstream: worker link out (the aggregator's own record stays in its node)
            of = np.maximum(ready, out_free[idx])
            of += msg_b_l[p] if const else msg_b[p, :ln]
            if fb is not None:
                of += fb[p, :ln]
            if self.dedicated:
                out_free[idx] = of
            else:
                keep = out_free[gj]
                out_free[idx] = of
                out_free[gj] = keep
                if dense:
                    q = gj
                else:
                    q = int(np.searchsorted(idx, gj))
                    q = q if q < ln and idx[q] == gj else -1
                if q >= 0:
                    local_pos[p] = q
                    ready_local[p] = ready[q]
            np.add(of, alpha, out=rin[p, :ln])

        # link in: records that cross it, in worker order; others (the aggregator's own
        # record, padding) are neutral entries of the scan
        rin -= msg_b
        loc = np.flatnonzero(local_pos >= 0)
        rin[loc, local_pos[loc]] = _NEG
        if not dense:
            np.copyto(rin, _NEG, where=~valid)
        service = None                  # needed unless the service is one constant per row
        if dense and not len(loc):
            service = np.broadcast_to(msg_b, (m, width))
        elif not const or len(loc):
            service = self._buf("link_in", (m, width))
            service[...] = msg_b
            service[loc, local_pos[loc]] = 0.0
            if not dense:
                np.copyto(service, 0.0, where=~valid)
        total_sent = float((top.astype(np.float64) * length_j).sum()) if const else float(sval.sum())
        total_sent -= float(sval[loc, 0 if const else local_pos[loc]].sum()) if len(loc) else 0.0
        self.up += ((bb + INDEX_BYTES) * int(total_sent)
                    + RECORD_HEADER_BYTES * (int(length.sum()) - len(loc)))

        # aggregator side: all aggregators of the chunk at once, their slots in order
        tx = rnd.index % cfg.tx_spots
        rb_data = rnd.result[j0:j1][order].astype(np.float64) * bb
        csum = self._buf("csum", (m, width))
        for q in range(len(bounds) - 1):
            b = slice(int(bounds[q]), int(bounds[q + 1]))
            if b.start == b.stop:
                continue
            gs, ss = g_p[b], slots_p[b]
            lq = loc[(loc >= b.start) & (loc < b.stop)]
            if const and not len(lq):
                arrival, last = self._scan(self.in_free[gs], rin[b], msg_b[b], None if dense else valid[b],
                                           length[b], True, csum[b], "link_in")
            else:
                arrival = _max_plus_rows(self.in_free[gs], rin[b], service[b], (csum[b], rin[b]))
                last = arrival[:, -1]
            self.in_free[gs] = last
            if not dense:
                np.copyto(arrival, _NEG, where=~valid[b])
            arrival[lq - b.start, local_pos[lq]] = ready_local[lq]
            self._aggregate(gs, ss, tx, arrival, csum[b], data[b], data_pi_agg[b],
                            None if dense else valid[b], length[b], sval[b], rb_data[b], const,
                            j0 + order[b])

    def _entries(self, x: np.ndarray, valid: np.ndarray | None, width: int, name: str) -> np.ndarray:
        """A per-record quantity as a full (rows, width) array, 0 on padding."""
        if valid is None:
            return np.broadcast_to(x, (x.shape[0], width))
        out = self._buf(name, (x.shape[0], width))
        np.copyto(out, x)
        np.copyto(out, 0.0, where=~valid)
        return out

    def _aggregate(self, gs, ss, tx, arrival, csum, data, data_pi, valid, length, sval, rb_data,
                   const, rows) -> None:
        """Aggregation into the Tx spot (round mod T), once that spot's readers are done."""
        cfg = self.cfg
        a_p, o_h, pi, gamma, nu, a_n = self.a_p, self.o_h, self.pi, self.gamma, self.nu, self.a_n
        a_p_c = o_h_c = pi_c = gamma_c = nu_c = None   # --straggler: per-aggregator, as columns
        if self.slow is not None:
            a_p, o_h, pi, gamma, nu, a_n = (x[gs] for x in (self.a_p_e, self.o_h_e, self.pi_e,
                                                             self.gamma_e, self.nu_e, self.a_n_e))
            a_p_c, o_h_c, pi_c, gamma_c, nu_c = (x[:, None] for x in (a_p, o_h, pi, gamma, nu))
        tx_free = self.tx_free[ss, tx]
        if cfg.aggregation == "nic":
            if self.spilled:
                if a_p_c is None:
                    arrival += 2 * a_p + 2 * data * pi
                else:
                    arrival += 2 * a_p_c + 2 * data * pi_c
            first = np.maximum(tx_free, self.nic_free[gs])
            svc = data * (nu if nu_c is None else nu_c)
            self.nic_free[gs] = self._scan(first, arrival, svc, valid, length, const, csum, "agg")[1]
            self.nic_busy[gs] += (self._const_sums(svc[:, 0], length) if const
                                  else _row_sums(svc, length))
            consumed = self.nic_free[gs] + a_n
            ready_at = consumed + (a_p + rb_data * pi) if self.spilled else consumed
        elif cfg.aggregation == "cpu":
            landed = self._scan(self.wr_free[gs], arrival, data_pi, valid, length, const, csum, "agg")[1]
            some = length > 0
            self.wr_free[gs] = np.where(some, landed, self.wr_free[gs])
            last = np.where(some, landed, 0.0) + a_p
            start = np.maximum(np.maximum(last, self.host_free[gs]), tx_free) + o_h
            dsum = (sval[:, 0] * length if const else sval.sum(axis=1)) * self.bb   # exact: integers
            self.host_free[gs] = start + dsum * gamma
            self.host_busy[gs] += o_h + dsum * gamma
            consumed = self.host_free[gs]
            ready_at = self.host_free[gs] + a_p + rb_data * pi
        else:   # dedicated CPU aggregator: each message handled as it arrives
            start0 = np.maximum(self.host_free[gs], tx_free)
            if o_h_c is None:
                svc = o_h + data * gamma
                arrival += a_p
            else:
                svc = o_h_c + data * gamma_c
                arrival += a_p_c
            arrival += data_pi
            self.host_free[gs] = self._scan(start0, arrival, svc, valid, length, const, csum, "agg")[1]
            self.host_busy[gs] += (self._const_sums(svc[:, 0], length) if const
                                   else _row_sums(np.where(valid, svc, 0.0) if valid is not None else svc,
                                                  length))
            consumed = self.host_free[gs]
            ready_at = self.host_free[gs] + a_p + rb_data * pi
        self.consumed[rows] = consumed
        self.ready_at[rows] = ready_at

    # ---- phase 2: results scatter to every worker and land in host memory ------------

    def phase2(self, rnd: Round) -> None:
        cfg, lay, n, bb = self.cfg, self.lay, self.n, self.bb
        nact = len(rnd.slots)
        if nact == 0:
            return
        slots = rnd.slots
        g = self.slot_g[slots]
        tx = rnd.index % cfg.tx_spots
        f = self.far
        res = rnd.result.astype(np.float64)
        rb_data = res * bb
        rb = res * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES
        rb_b = rb * self.beta
        goes_on = rnd.next_lo < lay.slot_hi[slots]
        cont = goes_on if cfg.credits else np.zeros(nact, dtype=bool)
        consumed, ready_at = self.consumed, self.ready_at

        # aggregator side: Rx credits, then the result, leave one after the other on its link
        c0 = np.zeros(nact)
        e0 = np.zeros(nact)
        rank = _rank_in_group(lay.slot_agg[slots])
        for q in range(int(rank.max()) + 1):
            rows = np.flatnonzero(rank == q)
            gs = g[rows]
            of = self.out_free[gs]
            c = np.maximum(of, consumed[rows])
            if f:
                of = np.where(cont[rows], c + f * self.cb, of)
            e = np.maximum(of, ready_at[rows])
            self.out_free[gs] = e + f * rb_b[rows] if f else of
            c0[rows], e0[rows] = c, e
        self.down += int(np.count_nonzero(cont)) * f * CREDIT_BYTES + int((f * rb).astype(np.int64).sum())
        self.up += nact * f * CREDIT_BYTES        # every reader returns a Tx credit

        # worker side, slot by slot: credits and results arrive, results land
        in_free, wr_free, host_free = self.in_free[:n], self.wr_free[:n], self.host_free[:n]
        host_busy, done, clock = self.host_busy[:n], self.done, self.clock
        pack = cfg.host_packing
        a_p, o_h, alpha, cb = self.a_p, self.o_h, self.alpha, self.cb
        if self.slow is None:
            rbd_pi = (rb_data * self.pi).tolist()
            if pack:
                rbd_g = rb_data * self.gamma
                unpack_busy = (self.o_h + rbd_g).tolist()
                rbd_g = rbd_g.tolist()
        else:           # --straggler: every worker lands and unpacks at its own rates
            a_p, o_h = self.a_p_e[:n], self.o_h_e[:n]
            rbd_pi = _PerWorker(rb_data, self.pi_e[:n])
            if pack:
                rbd_g = _PerWorker(rb_data, self.gamma_e[:n])
                unpack_busy = _PerWorker(rb_data, self.gamma_e[:n], o_h)
        clock_landed = clock is not None and not cfg.credits
        # landed times are needed slot by slot only to unpack, for a self-clock, or for `done`
        per_slot_landed = pack or clock_landed or not self.monotone
        # dedicated: the far workers are all workers, and the largest arrival follows from the
        # previous largest one (rounding is monotone), so the Tx-credit time needs no reduction
        scalar_max = self.dedicated and self.monotone and n > 0
        if scalar_max:
            top = float(in_free.max())
        got_max = np.full(nact, _NEG)
        step = max(1, _CHUNK // max(n, 1))
        workers = np.arange(n)
        tmp = np.empty(n)
        landed = np.empty(n)
        slot_l, g_l, cont_l, goes_l = slots.tolist(), g.tolist(), cont.tolist(), goes_on.tolist()
        rb_b_l, cons_l, ready_l = rb_b.tolist(), consumed.tolist(), ready_at.tolist()
        for j0 in range(0, nact, step):
            j1 = min(nact, j0 + step)
            # the k-th of the far workers gets its copy k message times after the first leaves
            if self.dedicated:
                k = (workers + 1.0)[None, :]
            else:
                k = ((workers[None, :] - g[j0:j1, None]) % n).astype(np.float64)
            leave = self._buf("leave", (j1 - j0, n))
            np.multiply(k, rb_b[j0:j1, None], out=leave)
            leave += e0[j0:j1, None]
            leave += alpha
            leave_last = leave[:, -1].tolist() if n else []
            if cont[j0:j1].any():
                c_leave = self._buf("c_leave", (j1 - j0, n))
                np.multiply(k, cb, out=c_leave)
                c_leave += c0[j0:j1, None]
                c_leave += alpha
            for j in range(j0, j1):
                s, gj = slot_l[j], g_l[j]
                lj = leave[j - j0]
                if cont_l[j]:
                    cj = c_leave[j - j0]
                    t = in_free + cb
                    np.maximum(t, cj, out=t)
                    if self.dedicated:
                        in_free[:] = t
                        if scalar_max:
                            top = max(top + cb, float(cj[-1]))
                    else:
                        keep = in_free[gj]
                        in_free[:] = t
                        in_free[gj] = keep
                        t[gj] = cons_l[j]
                    clock[s] = t
                if self.dedicated:
                    np.add(in_free, rb_b_l[j], out=tmp)
                    np.maximum(tmp, lj, out=in_free)
                    got = in_free
                    if scalar_max:
                        top = max(top + rb_b_l[j], leave_last[j - j0])
                        got_max[j] = top
                    else:
                        got_max[j] = np.maximum.reduce(in_free)
                else:
                    t = in_free + rb_b_l[j]
                    np.maximum(t, lj, out=t)
                    keep = in_free[gj]
                    in_free[:] = t
                    in_free[gj] = keep
                    if f:
                        t[gj] = _NEG
                        got_max[j] = np.maximum.reduce(t)
                    t[gj] = ready_l[j]
                    got = t
                np.maximum(got, wr_free, out=wr_free)
                wr_free += rbd_pi[j]
                if per_slot_landed:
                    np.add(wr_free, a_p, out=landed)
                    if pack:     # OmniReduce's host unpacks the result itself
                        np.maximum(landed, host_free, out=host_free)
                        host_free += o_h
                        host_free += rbd_g[j]
                        host_busy += unpack_busy[j]
                    latest = host_free if pack else landed
                    # a worker writes its next record once it may (credit) or once it has the result
                    if clock_landed and goes_l[j]:
                        clock[s] = latest
                    if not self.monotone:
                        np.maximum(done, latest, out=done)
        if self.monotone:
            # every free time only grew: the last landed result is each worker's latest
            if not pack:
                np.add(wr_free, a_p, out=landed)
            np.maximum(done, host_free if pack else landed, out=done)
        # every reader returns a Tx credit once the result is in; the Tx spot may be
        # reused only when all of them are back
        back = (got_max + cb) + alpha if f else np.zeros(nact)
        self.tx_free[slots, tx] = np.maximum(back, 0.0 if self.dedicated else ready_at)


def sparse_time(plan: Plan, profile: Profile, itemsize: int, faults: FaultSpec | None = None,
                call: int = 0, stragglers: dict[int, float] | None = None) -> SparseTiming:
    """Emulated time of the plan; ``faults`` delay the Rx-spot writes (docs/model.md §11.5),
    ``stragglers`` slow the service times of nodes (worker or aggregator; docs/model.md §12)."""
    slow = node_factors(stragglers or {}, 0, plan.layout.nodes)
    t = _Timer(plan, profile, itemsize, faults if faults is not None and faults.active else None, call,
               slow)
    for rnd in plan.rounds:
        t.phase1(rnd)
        t.phase2(rnd)
    stats = None if t.faults is None else FaultStats.summary(t.fault_stats.rows())
    return SparseTiming(float(t.done.max()), t.done, float(t.host_busy.max()), float(t.nic_busy.max()),
                        t.up + t.down, t.up, t.down, bool(t.spilled), stats)


def as_timing(t: SparseTiming) -> Timing:
    return Timing(t.emulated_us, t.node_done_us, t.host_busy_us, t.nic_busy_us, t.wire_bytes,
                  upstream_bytes=t.upstream_bytes, downstream_bytes=t.downstream_bytes,
                  spilled=t.spilled, faults=t.faults)


def model_sparse(cfg: SparseConfig, masks: np.ndarray, profile: Profile, itemsize: int,
                 faults: FaultSpec | None = None, call: int = 0,
                 stragglers: dict[int, float] | None = None) -> Timing:
    """Emulated time from the block masks alone (nodes x nblocks); faults on the Rx-spot writes,
    stragglers slow their nodes' host, NIC and PCIe service times."""
    return as_timing(sparse_time(plan_rounds(masks, cfg), profile, itemsize, faults, call, stragglers))
