"""Phase 1 of a round: the workers' records travel up to the aggregators' Rx spots.

Worker side, slot by slot in ascending order (a worker serves every slot in
turn): (OmniReduce) the host finds and packs the blocks, the NIC DMA-reads
them (OmNICCL: straight from the LLC), and the record leaves on the worker's
link. The aggregator's own record stays inside its node.

Aggregator side, for all aggregators of a chunk at once, one slot position at a
time: the records cross the aggregator's link in, in worker order (a row-wise
max-plus scan; the aggregator's own record and the padding are neutral
entries), and are aggregated into the Tx spot (:mod:`.aggregation`).
"""

from __future__ import annotations

import numpy as np

from nicemu.collectives.model.sparse.aggregation import Block, aggregate
from nicemu.collectives.model.sparse.dram import roof_rows
from nicemu.collectives.model.sparse.fault_delays import record_delays
from nicemu.collectives.model.sparse.maxplus import NEG, max_plus_rows, rank_in_group
from nicemu.collectives.model.sparse.records import Chunk, build_chunk
from nicemu.collectives.model.sparse.state import SpotState
from nicemu.collectives.model.sparse.telemetry import HOST, READ, record_bytes
from nicemu.collectives.schedules.spot_protocol import INDEX_BYTES, RECORD_HEADER_BYTES, Round
from nicemu.nic.stragglers import per_node
from nicemu.nic.telemetry import LINK, RX_SPOT

#: time sparse chunks' records per worker (``_Senders._by_worker``); False: slot by slot (tests compare)
BY_WORKER = True


def time_round(st: SpotState, rnd: Round) -> None:
    """Sets ``st.consumed`` and ``st.ready_at`` per slot of the round (every Rx record consumed,
    result complete in the Tx spot)."""
    nact = len(rnd.slots)
    st.consumed = np.zeros(nact)
    st.ready_at = np.zeros(nact)
    if st.tel is not None:
        st.tel.tel.step, st.tel.tel.side = rnd.index, 0
        st.tel.rx_start = np.full(nact, np.nan)
    if st.rec is not None:
        st.rec.round = rnd.index
    if st.cfg.host_packing and st.cfg.aggregation == "cpu":
        step = 1      # the aggregator's host also packs its own records: keep strict slot order
    else:
        step = max(1, st.chunk // max(st.n, 1))
    for j0 in range(0, nact, step):
        ch = build_chunk(st, rnd, j0, min(nact, j0 + step))
        sent = _Senders(st, rnd, ch, record_delays(st, rnd, ch))
        sent.run()
        _receive(st, rnd, ch, sent)


class _Senders:
    """The workers of a chunk send their records, slot by slot.

    Fills ``rin`` (per record: link-out done + alpha), and for each slot whose
    aggregator's node also writes a record, that record's column
    (``local_pos``) and the time it is in the NIC (``ready_local``).
    """

    def __init__(self, st: SpotState, rnd: Round, ch: Chunk, fb: np.ndarray | None) -> None:
        n = st.n
        self.st, self.ch, self.fb = st, ch, fb
        self.rin = st.ws.buf("rin", (ch.m, ch.width))
        self.ready_local = np.zeros(ch.m)
        self.local_pos = np.full(ch.m, -1, dtype=np.int64)
        # the workers' own overhead and DMA latency (--straggler: arrays over the nodes)
        self.a_p, self.o_h = (st.a_p_e[:n], st.o_h_e[:n]) if st.slow is not None else (st.a_p, st.o_h)
        self.first_round = st.clock is None or rnd.index == 0
        # the host packs here, unless it packed this round's records on the last result
        self.pack_here = st.cfg.host_packing and (rnd.index == 0 or not st.cfg.pack_on_result)
        self.tmp = np.empty(n)
        self.hb, self.rdf, self.off = st.host_busy[:n], st.rd_free[:n], st.out_free[:n]
        self.ptr_l = None if ch.dense else ch.ptr.tolist()

    def run(self) -> None:
        ch = self.ch
        if self.st.trace:         # the traced nodes' events are recorded by the slot-by-slot steps
            for j, (s, gj, p) in enumerate(zip(ch.slots.tolist(), ch.g.tolist(), ch.pos_of.tolist())):
                self._some(j, s, gj, p)
            return
        dram = self.st.dram is not None     # DRAM is charged worker by worker (``_some``)
        if BY_WORKER and not ch.dense and not self.st.cfg.host_packing and self.st.slow is None and not dram:
            self._by_worker()
            return
        for j, (s, gj, p) in enumerate(zip(ch.slots.tolist(), ch.g.tolist(), ch.pos_of.tolist())):
            if ch.dense and ch.has_all[p] and not dram:
                self._full_row(s, gj, p)
            else:
                self._some(j, s, gj, p)

    def _by_worker(self) -> None:
        """``_some`` for every slot, taken as each worker's first record, then its second, ...

        A worker's records use only its own PCIe read engine and link out, in slot order,
        so the k-th records of all workers are timed together: every value comes from the
        same operations, in the same order, as slot by slot.
        """
        st, ch, fb = self.st, self.ch, self.fb
        who = ch.who
        order = np.argsort(who, kind="stable")          # per worker, its records in slot order
        rank = rank_in_group(who[order])
        ranked = np.argsort(rank, kind="stable")
        rec = order[ranked]                              # first records of all workers, then second, ...
        bounds = np.searchsorted(rank[ranked], np.arange(int(rank.max(initial=-1)) + 2)).tolist()
        # per record, in that order
        w_all, j_all, c_all = who[rec], ch.row[rec], ch.col[rec]
        p_all = ch.pos_of[j_all]
        at = (p_all, 0 if ch.const else c_all)
        has_all = ch.data[at] > 0
        dpi_all, msg_all = ch.data_pi[at], ch.msg_b[at]
        fb_all = None if fb is None else fb[p_all, c_all]
        clock_all = None if self.first_round else st.clock[ch.slots[j_all], w_all]
        local_all = None if st.dedicated else w_all == ch.g[j_all]
        rin_all = np.empty(len(rec))
        rd_free, out_free = st.rd_free, st.out_free
        for k in range(len(bounds) - 1):
            b = slice(bounds[k], bounds[k + 1])
            w = w_all[b]
            ready = 0.0 if clock_all is None else clock_all[b]
            r0 = rd_free[w]
            start = np.maximum(ready, r0)
            has = has_all[b]
            rdv = np.where(has, start + dpi_all[b], r0)
            rd_free[w] = rdv
            ready = np.where(has, rdv + self.a_p, ready)
            of = np.maximum(ready, out_free[w])
            of += msg_all[b]
            if fb_all is not None:
                of += fb_all[b]
            if local_all is None:
                out_free[w] = of
            else:
                local = local_all[b]
                if local.any():
                    far = ~local
                    out_free[w[far]] = of[far]
                    lp = p_all[b][local]
                    self.local_pos[lp] = c_all[b][local]
                    self.ready_local[lp] = ready[local]
                else:
                    out_free[w] = of
            np.add(of, st.alpha, out=rin_all[b])
        self.rin[p_all, c_all] = rin_all

    def _full_row(self, s: int, gj: int, p: int) -> None:
        """Every worker writes a non-empty record: the steps of ``_some``, in place on the arrays."""
        st, ch, fb = self.st, self.ch, self.fb
        const, tmp = ch.const, self.tmp
        hb, rdf, off = self.hb, self.rdf, self.off
        ready = 0.0 if self.first_round else st.clock[s]
        if self.pack_here:
            hf = st.host_of(s)[:st.n]     # the slot's host thread, in place
            if st.clock is None:
                np.add(hf, self.o_h, out=hf)
            else:
                np.maximum(ready, hf, out=hf)
                hf += self.o_h
            hf += ch.pack_l[p] if const else ch.pack[p]
            hb += ch.pack_busy_l[p] if const else ch.pack_busy[p]
            np.maximum(hf, rdf, out=rdf)
        else:
            np.maximum(ready, rdf, out=rdf)
        rdf += ch.data_pi_l[p] if const else ch.data_pi[p]
        np.add(rdf, self.a_p, out=tmp)
        if st.dedicated:
            np.maximum(tmp, off, out=off)
            off += ch.msg_b_l[p] if const else ch.msg_b[p]
            if fb is not None:
                off += fb[p]
        else:
            keep = off[gj]
            np.maximum(tmp, off, out=off)
            off += ch.msg_b_l[p] if const else ch.msg_b[p]
            if fb is not None:
                off += fb[p]
            off[gj] = keep
            self.local_pos[p] = gj
            self.ready_local[p] = tmp[gj]
        np.add(off, st.alpha, out=self.rin[p])

    def _some(self, j: int, s: int, gj: int, p: int) -> None:
        """The writing workers of slot ``j`` (some may send no data: they only report)."""
        st, ch = self.st, self.ch
        if ch.dense:
            ln, idx = st.n, slice(0, st.n)
        else:
            idx = ch.who[self.ptr_l[j]:self.ptr_l[j + 1]]
            ln = len(idx)
        ready = 0.0 if self.first_round else st.clock[s, idx]
        if self.pack_here:
            ready = self._pack(s, idx, ln, p, ready)
        ready = self._dma_read(idx, ln, p, ready)
        self._link_out(idx, ln, gj, p, ready)

    def _pack(self, s: int, idx, ln: int, p: int, ready):
        """OmniReduce: the worker's host (the slot's thread) finds and packs the blocks."""
        st, ch = self.st, self.ch
        host_free = st.host_of(s)
        if st.clock is None:
            h = host_free[idx] + per_node(self.o_h, idx)
        else:
            h = np.maximum(ready, host_free[idx])
            h += per_node(self.o_h, idx)
        if st.trace:
            start = np.array(host_free[idx]) if st.clock is None else np.maximum(ready, host_free[idx])
        t0 = h.copy() if st.dram is not None else None
        if ch.const:
            h += ch.pack_l[p]
            host_free[idx] = h
            st.host_busy[idx] += ch.pack_busy_l[p]
        else:
            h += ch.pack[p, :ln]
            host_free[idx] = h
            st.host_busy[idx] += ch.pack_busy[p, :ln]
        if t0 is not None:      # the pass reads the window and writes the record's blocks
            scanned = ch.window[p] + (ch.data[p, 0] if ch.const else ch.data[p, :ln])
            h = roof_rows(st.dram, np.arange(st.n)[idx], t0, h, scanned, st.host_busy)
            host_free[idx] = h
        if st.trace:
            scanned = ch.window[p] + (ch.data[p, 0] if ch.const else ch.data[p, :ln])
            st.tel.event(HOST, np.arange(st.n)[idx], start, h, scanned, int(st.slot_thread[s]))
        return h

    def _dma_read(self, idx, ln: int, p: int, ready) -> np.ndarray:
        """The NIC reads the record's blocks; a record without data needs no read."""
        ch, rd_free = self.ch, self.st.rd_free
        r0 = rd_free[idx]
        start = np.maximum(ready, r0)
        if self.st.trace:
            self.st.tel.event(READ, np.arange(self.st.n)[idx], start,
                              start + (ch.data_pi_l[p] if ch.const else ch.data_pi[p, :ln]),
                              ch.data[p, 0] if ch.const else ch.data[p, :ln])
        if self.st.dram is not None:     # every block read comes from DRAM
            d = ch.data[p, 0] if ch.const else ch.data[p, :ln]
            end = roof_rows(self.st.dram, np.arange(self.st.n)[idx], start,
                            start + (ch.data_pi_l[p] if ch.const else ch.data_pi[p, :ln]), d)
            has = d > 0
            rdv = np.where(has, end, r0)
            rd_free[idx] = rdv
            return np.where(has, rdv + per_node(self.a_p, idx), ready)
        if ch.has_all[p]:
            start += ch.data_pi_l[p] if ch.const else ch.data_pi[p, :ln]
            rd_free[idx] = start
            return start + per_node(self.a_p, idx)
        has = (ch.data[p, 0] > 0) if ch.const else (ch.data[p, :ln] > 0)
        rdv = np.where(has, start + (ch.data_pi_l[p] if ch.const else ch.data_pi[p, :ln]), r0)
        rd_free[idx] = rdv
        return np.where(has, rdv + per_node(self.a_p, idx), ready)

    def _link_out(self, idx, ln: int, gj: int, p: int, ready: np.ndarray) -> None:
        """Upstream on the worker's link (the aggregator's own record stays in its node)."""
        st, ch, out_free = self.st, self.ch, self.st.out_free
        of = np.maximum(ready, out_free[idx])
        if st.trace:
            start = of.copy()
        of += ch.msg_b_l[p] if ch.const else ch.msg_b[p, :ln]
        if self.fb is not None:
            of += self.fb[p, :ln]
        if st.trace:          # the aggregator node's own record does not cross its link
            who = np.arange(st.n)[idx]
            far = np.ones(ln, dtype=bool) if st.dedicated else who != gj
            msg = np.broadcast_to(ch.msg[p, 0] if ch.const else ch.msg[p, :ln], ln)
            st.tel.event(LINK, who[far], start[far], of[far], msg[far])
        if st.dedicated:
            out_free[idx] = of
        else:
            keep = out_free[gj]
            out_free[idx] = of
            out_free[gj] = keep
            if ch.dense:
                q = gj
            else:
                q = int(np.searchsorted(idx, gj))
                q = q if q < ln and idx[q] == gj else -1
            if q >= 0:
                self.local_pos[p] = q
                self.ready_local[p] = ready[q]
        np.add(of, st.alpha, out=self.rin[p, :ln])


def _link_in_service(st: SpotState, ch: Chunk, sent: _Senders) -> tuple[np.ndarray, np.ndarray | None]:
    """Turn ``rin`` into the ready times at the aggregators' links in; count the upstream bytes.

    Records that do not cross the link (the aggregator's own, padding) become
    neutral entries. Returns the local records' rows and the per-entry link
    service, or None when the service is one constant per row.
    """
    rin, local_pos, msg_b, valid = sent.rin, sent.local_pos, ch.msg_b, ch.valid
    m, width, dense, const = ch.m, ch.width, ch.dense, ch.const
    rin -= msg_b
    loc = np.flatnonzero(local_pos >= 0)
    rin[loc, local_pos[loc]] = NEG
    if not dense:
        np.copyto(rin, NEG, where=~valid)
    service = None
    if dense and not len(loc):
        service = np.broadcast_to(msg_b, (m, width))
    elif not const or len(loc):
        service = st.ws.buf("link_in", (m, width))
        service[...] = msg_b
        service[loc, local_pos[loc]] = 0.0
        if not dense:
            np.copyto(service, 0.0, where=~valid)
    sval = ch.sval
    total_sent = float((ch.top.astype(np.float64) * ch.length_j).sum()) if const else float(sval.sum())
    total_sent -= float(sval[loc, 0 if const else local_pos[loc]].sum()) if len(loc) else 0.0
    st.up += ((st.bb + INDEX_BYTES) * int(total_sent)
              + RECORD_HEADER_BYTES * (int(ch.length.sum()) - len(loc)))
    if st.header:
        _count_record_packets(st, ch, loc, local_pos)
    return loc, service


def _count_record_packets(st: SpotState, ch: Chunk, loc: np.ndarray, local_pos: np.ndarray) -> None:
    """The packets of the records that cross a link (every record but the aggregator's own)."""
    if ch.const:        # one record size per row, ``length`` records
        st.count_packets(ch.msg[:, 0], ch.length)
        if len(loc):
            st.count_packets(ch.msg[loc, 0], -1)
        return
    st.count_packets(ch.msg, 1 if ch.dense else ch.valid)
    if len(loc):
        st.count_packets(ch.msg[loc, local_pos[loc]], -1)


def _receive(st: SpotState, rnd: Round, ch: Chunk, sent: _Senders) -> None:
    """Aggregator side: all aggregators of the chunk at once, their slots in order."""
    loc, service = _link_in_service(st, ch, sent)
    rin, local_pos, ready_local = sent.rin, sent.local_pos, sent.ready_local
    tx = rnd.index % st.cfg.tx_spots
    rb_data = rnd.result[ch.j0:ch.j1][ch.order].astype(np.float64) * st.bb
    csum = st.ws.buf("csum", (ch.m, ch.width))
    bounds, valid = ch.bounds, ch.valid
    for q in range(len(bounds) - 1):
        b = slice(int(bounds[q]), int(bounds[q + 1]))
        if b.start == b.stop:
            continue
        gs = ch.g_p[b]
        vb = None if ch.dense else valid[b]
        lq = loc[(loc >= b.start) & (loc < b.stop)]
        if ch.const and not len(lq):
            arrival, last = st.ws.scan(st.in_free[gs], rin[b], ch.msg_b[b], vb, ch.length[b], True, csum[b],
                                       "link_in")
        else:
            arrival = max_plus_rows(st.in_free[gs], rin[b], service[b], (csum[b], rin[b]))
            last = arrival[:, -1]
        st.in_free[gs] = last
        if not ch.dense:
            np.copyto(arrival, NEG, where=~vb)
        arrival[lq - b.start, local_pos[lq]] = ready_local[lq]
        if st.rec is not None:
            st.rec.records(ch, b, arrival, lq, local_pos)
        rows = ch.j0 + ch.order[b]
        if st.trace:
            first = np.where(np.isfinite(arrival), arrival, np.inf).min(axis=1)
            st.tel.rx_start[rows] = np.where(ch.length[b] > 0, first, np.nan)
        aggregate(st, Block(gs, ch.slots_p[b], rows, arrival, csum[b], ch.data[b],
                            ch.data_pi_agg[b], vb, ch.length[b], ch.sval[b], rb_data[b], ch.const), tx)
        if st.trace:
            _rx_spot_events(st, ch, b, rows)
    if st.tel is not None:
        record_bytes(st, ch, loc, local_pos, sent.pack_here, rb_data)


def _rx_spot_events(st: SpotState, ch: Chunk, b: slice, rows: np.ndarray) -> None:
    """Each traced aggregator's Rx spot is taken from its first record's arrival until all are consumed."""
    gs = ch.g_p[b]
    tr = st.tel.traced_rows(gs)
    if not len(tr):
        return
    slots = ch.slots_p[b][tr]
    spot = slots - st.lay.slot_agg[slots] * st.cfg.spots
    length = ch.length[b][tr]
    if ch.const:
        held = ch.msg[b][tr, 0] * length
    else:
        held = np.where(ch.valid[b][tr] if ch.valid is not None else True, ch.msg[b][tr], 0.0).sum(axis=1)
    start = st.tel.rx_start[rows[tr]]
    ok = np.isfinite(start)
    st.tel.event(RX_SPOT, gs[tr][ok], start[ok], st.consumed[rows[tr]][ok], held[ok], spot[ok])
