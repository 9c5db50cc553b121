"""Phase 2 of a round: the results scatter from the Tx spots to every worker and land in host memory.

Aggregator side: for each of its slots in order, the aggregator first returns
the Rx credits (when the slot goes on and the protocol uses credits), then
sends the result, one copy per far worker, one after the other on its link.

Worker side, slot by slot: credits and results arrive on the worker's link in,
the result is DMA-written to host memory and (OmniReduce) unpacked by the host.
Every reader returns a Tx credit once the result is in; the Tx spot may be
reused (double buffering: round mod T) only when all of them are back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nicemu.collectives.model.sparse.dram import roof_rows
from nicemu.collectives.model.sparse.maxplus import NEG
from nicemu.collectives.model.sparse.messages import RESULT, RX_CREDIT
from nicemu.collectives.model.sparse.state import SpotState
from nicemu.collectives.model.sparse.telemetry import HOST, WRITE, credits_back
from nicemu.collectives.schedules.spot_protocol import CREDIT_BYTES, INDEX_BYTES, RECORD_HEADER_BYTES, Round
from nicemu.nic.telemetry import LINK, TX_SPOT


def time_round(st: SpotState, rnd: Round, nxt: Round | None = None) -> None:
    """Advance the links, the workers' landing and the Tx spots' reuse times by one round.

    ``nxt``: the next round, whose records are packed here when the configuration packs
    on the result (``pack_on_result``)."""
    if len(rnd.slots) == 0:
        return
    res = _Results.of(st, rnd)
    if st.tel is not None:
        st.tel.tel.step, st.tel.tel.side = rnd.index, 1
        _result_bytes(st, res)
    if st.rec is not None:
        st.rec.round = rnd.index
    _aggregators_send(st, res)
    on_result = st.cfg.pack_on_result and st.cfg.host_packing
    got_max = _Receivers(st, res, nxt if on_result else None).run()
    back = (got_max + st.cb) + st.alpha if st.far else np.zeros(len(res.slots))
    if st.trace:
        was = st.tx_free[res.slots, res.tx].copy()
    st.tx_free[res.slots, res.tx] = np.maximum(back, 0.0 if st.dedicated else st.ready_at)
    if st.trace:
        _tx_spot_events(st, res, was)


def _result_bytes(st: SpotState, res: _Results) -> None:
    """Telemetry: the credits and result copies on the ports; every worker DMA-writes (and, packing,
    unpacks) every result."""
    tel, f = st.tel, st.far
    if f:
        tel.port(res.g[res.cont], CREDIT_BYTES, f)
        tel.port(res.g, res.rb, f)
        credits_back(st, tel, res.g)
    landed = float(res.rb_data.sum())
    tel.tel.bytes[WRITE, :st.n] += landed
    if st.cfg.host_packing:
        tel.tel.bytes[HOST, :st.n] += landed


def _tx_spot_events(st: SpotState, res: _Results, was: np.ndarray) -> None:
    """A traced aggregator's Tx spot is taken from the start of the aggregation into it (not before
    it is free again) until the last reader's credit is back."""
    tr = st.tel.traced_rows(res.g)
    start = np.maximum(was[tr], st.tel.rx_start[tr])
    ok = np.isfinite(start)
    tr = tr[ok]
    spot = res.slots[tr] - st.lay.slot_agg[res.slots[tr]] * st.cfg.spots
    st.tel.event(TX_SPOT, res.g[tr], start[ok], st.tx_free[res.slots[tr], res.tx], res.rb[tr],
                 spot * st.cfg.tx_spots + res.tx)


@dataclass
class _Results:
    """Per slot of the round: its result's size and when it and the credits leave the aggregator."""

    slots: np.ndarray
    g: np.ndarray           # aggregator endpoint
    tx: int                 # the Tx spot in use (round mod T)
    rb_data: np.ndarray     # payload bytes of the result
    rb: np.ndarray          # wire bytes of one copy
    rb_b: np.ndarray        # link time of one copy
    goes_on: np.ndarray     # the slot has blocks left for later rounds
    cont: np.ndarray        # ... and the protocol returns Rx credits for it
    c0: np.ndarray | None = None   # the first credit leaves
    e0: np.ndarray | None = None   # the first copy of the result leaves

    @classmethod
    def of(cls, st: SpotState, rnd: Round) -> _Results:
        slots, bb = rnd.slots, st.bb
        res = rnd.result.astype(np.float64)
        rb = res * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES
        goes_on = rnd.next_lo < st.lay.slot_hi[slots]
        cont = goes_on if st.cfg.credits else np.zeros(len(slots), dtype=bool)
        return cls(slots, st.slot_g[slots], rnd.index % st.cfg.tx_spots, res * bb, rb, st.wire_us(rb),
                   goes_on, cont)


def _aggregators_send(st: SpotState, res: _Results) -> None:
    """Rx credits, then the result, leave one after the other on each aggregator's link out."""
    nact, f = len(res.slots), st.far
    res.c0, res.e0 = np.zeros(nact), np.zeros(nact)
    rank = st.slot_rank(res.slots)
    for q in range(int(rank.max()) + 1):
        rows = np.flatnonzero(rank == q)
        gs = res.g[rows]
        of = st.out_free[gs]
        c = np.maximum(of, st.consumed[rows])
        if f:
            of = np.where(res.cont[rows], c + f * st.cb, of)
        e = np.maximum(of, st.ready_at[rows])
        st.out_free[gs] = e + f * res.rb_b[rows] if f else of
        res.c0[rows], res.e0[rows] = c, e
        if st.trace and f:
            cont = res.cont[rows]
            st.tel.event(LINK, gs[cont], c[cont], of[cont], f * CREDIT_BYTES)
            st.tel.event(LINK, gs, e, st.out_free[gs], f * res.rb[rows])
    st.down += int(np.count_nonzero(res.cont)) * f * CREDIT_BYTES + int((f * res.rb).astype(np.int64).sum())
    st.up += nact * f * CREDIT_BYTES        # every reader returns a Tx credit
    st.count_packets(CREDIT_BYTES, (int(np.count_nonzero(res.cont)) + nact) * f)
    st.count_packets(res.rb, f)


class _PerWorker:
    """Slot ``j``'s cost per worker, ``add + x[j] * rate`` over the workers, made when read."""

    def __init__(self, x: np.ndarray, rate: np.ndarray, add: np.ndarray | None = None) -> None:
        self.x, self.rate, self.add = x.tolist(), rate, add

    def __getitem__(self, j: int) -> np.ndarray:
        v = self.x[j] * self.rate
        return v if self.add is None else self.add + v


class _Receivers:
    """The workers receive the round's credits and results, slot by slot."""

    def __init__(self, st: SpotState, res: _Results, nxt: Round | None = None) -> None:
        n, cfg = st.n, st.cfg
        self.st, self.res, self.nxt = st, res, nxt
        self.next_pack: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.in_free, self.wr_free = st.in_free[:n], st.wr_free[:n]
        self.host_busy = st.host_busy[:n]
        self.pack = cfg.host_packing
        self._landing_costs()
        self.clock_landed = st.clock is not None and not cfg.credits
        # landed times are needed slot by slot only to unpack, for a self-clock, or for `done`
        self.per_slot_landed = self.pack or self.clock_landed or not st.monotone
        # dedicated: the far workers are all workers, and the largest arrival follows from the
        # previous largest one (rounding is monotone), so the Tx-credit time needs no reduction
        self.scalar_max = st.dedicated and st.monotone and n > 0
        self.top = float(self.in_free.max()) if self.scalar_max else 0.0
        self.got_max = np.full(len(res.slots), NEG)
        self.tmp = np.empty(n)
        self.landed = np.empty(n)
        self.slot_l, self.g_l = res.slots.tolist(), res.g.tolist()
        self.cont_l, self.goes_l = res.cont.tolist(), res.goes_on.tolist()
        self.rb_b_l = res.rb_b.tolist()
        self.cons_l, self.ready_l = st.consumed.tolist(), st.ready_at.tolist()
        # telemetry: the traced workers (None: no events)
        self.traced = np.flatnonzero(st.tel.traced[:n]) if st.trace else None

    def _landing_costs(self) -> None:
        """DMA write and (OmniReduce) unpacking of each slot's result; --straggler: per worker."""
        st, rb_data, n = self.st, self.res.rb_data, self.st.n
        self.rbd_g = self.unpack_busy = None
        if st.slow is None:
            self.a_p, self.o_h = st.a_p, st.o_h
            self.rbd_pi = (rb_data * st.pi).tolist()
            if self.pack:
                rbd_g = rb_data * st.gamma
                self.unpack_busy = (st.o_h + rbd_g).tolist()
                self.rbd_g = rbd_g.tolist()
        else:
            self.a_p, self.o_h = st.a_p_e[:n], st.o_h_e[:n]
            self.rbd_pi = _PerWorker(rb_data, st.pi_e[:n])
            if self.pack:
                self.rbd_g = _PerWorker(rb_data, st.gamma_e[:n])
                self.unpack_busy = _PerWorker(rb_data, st.gamma_e[:n], self.o_h)

    def run(self) -> np.ndarray:
        """Per slot, the latest arrival of the result at a far worker (-inf if there is none)."""
        nact, n = len(self.res.slots), self.st.n
        step = max(1, self.st.chunk // max(n, 1))
        for j0 in range(0, nact, step):
            j1 = min(nact, j0 + step)
            leave, c_leave = self._leave_times(j0, j1)
            if self.nxt is not None:
                self._next_records(j0, j1)
            for j in range(j0, j1):
                if self.cont_l[j]:
                    self._credits(j, c_leave[j - j0])
                self._land(j, self._result(j, leave[j - j0]))
        if self.st.monotone:
            # every free time only grew: the last landed result is each worker's latest
            if not self.pack:
                np.add(self.wr_free, self.a_p, out=self.landed)
            # (with host threads, a worker's latest unpack is the latest over its threads)
            last = self.st.host_thr[:, :n].max(axis=0) if self.pack else self.landed
            np.maximum(self.st.done, last, out=self.st.done)
        return self.got_max

    def _next_records(self, j0: int, j1: int) -> None:
        """``pack_on_result``: per slot ``j0..j1`` that runs a next round, who writes a record in it
        and the host time to find and pack it (as ``records._record_service`` prices it)."""
        st, nxt, n = self.st, self.nxt, self.st.n
        slots = self.res.slots[j0:j1]
        pos = np.searchsorted(nxt.slots, slots)
        there = pos < len(nxt.slots)
        there[there] = nxt.slots[pos[there]] == slots[there]
        self.next_pack = {}
        if not there.any():
            return
        k0, k1 = int(pos[there][0]), int(pos[there][-1]) + 1
        if hasattr(nxt, "sent_rows"):
            sent = nxt.sent_rows(k0, k1)
            rep = np.asarray(nxt.reports_rows(k0, k1, sent), dtype=bool)
        else:                           # rounds given as plain arrays
            sent, rep = nxt.sent[k0:k1], np.asarray(nxt.reports[k0:k1], dtype=bool)
        window = (nxt.hi[k0:k1] - nxt.lo[k0:k1]) * st.bb
        data = sent.astype(np.float64) * st.bb
        gamma = st.gamma if st.slow is None else st.gamma_e[:n]
        pack = (window[:, None] + data) * gamma
        o_h = self.o_h
        for j in np.flatnonzero(there).tolist():
            k = int(pos[j]) - k0
            # the DRAM bytes of the pass: it reads the window and writes the record's blocks
            self.next_pack[j0 + j] = (rep[k], pack[k], o_h + pack[k], window[k] + data[k])
        if st.tel is not None:      # the host scans the window and packs the blocks it sends
            k = pos[there] - k0
            scanned = np.where(rep[k], window[k, None] + data[k], 0.0)
            st.tel.tel.bytes[HOST, :n] += scanned.sum(axis=0)
            if st.trace:
                self.next_scan = dict(zip((j0 + np.flatnonzero(there)).tolist(), scanned))

    def _leave_times(self, j0: int, j1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """When each worker's copy of the result (and of the Rx credit) leaves its aggregator, plus
        the link latency: the k-th far worker's copy leaves k message times after the first."""
        st, res, n = self.st, self.res, self.st.n
        workers = np.arange(n)
        if st.dedicated:
            k = (workers + 1.0)[None, :]
        else:
            k = ((workers[None, :] - res.g[j0:j1, None]) % n).astype(np.float64)
        leave = st.ws.buf("leave", (j1 - j0, n))
        np.multiply(k, res.rb_b[j0:j1, None], out=leave)
        leave += res.e0[j0:j1, None]
        leave += st.alpha
        c_leave = None
        if res.cont[j0:j1].any():
            c_leave = st.ws.buf("c_leave", (j1 - j0, n))
            np.multiply(k, st.cb, out=c_leave)
            c_leave += res.c0[j0:j1, None]
            c_leave += st.alpha
        return leave, c_leave

    def _far(self, j: int) -> np.ndarray:
        """The workers slot ``j``'s credits and result cross a link to (all but its aggregator's node)."""
        workers = np.arange(self.st.n)
        return workers if self.st.dedicated else np.delete(workers, self.g_l[j])

    def _credits(self, j: int, cj: np.ndarray) -> None:
        """The Rx credit arrives; a worker may write its next record once it has it (self-clock)."""
        st, in_free, cb = self.st, self.in_free, self.st.cb
        t = in_free + cb
        np.maximum(t, cj, out=t)
        if st.rec is not None:
            st.rec.downstream(RX_CREDIT, self.g_l[j], self.slot_l[j], self._far(j), CREDIT_BYTES, cb, t)
        if st.dedicated:
            in_free[:] = t
            if self.scalar_max:
                self.top = max(self.top + cb, float(cj[-1]))
        else:
            gj = self.g_l[j]
            keep = in_free[gj]
            in_free[:] = t
            in_free[gj] = keep
            t[gj] = self.cons_l[j]
        st.clock[self.slot_l[j]] = t

    def _result(self, j: int, lj: np.ndarray) -> np.ndarray:
        """The result arrives at every worker (the aggregator's node has it at once)."""
        in_free, rb_b = self.in_free, self.rb_b_l[j]
        if self.st.dedicated:
            np.add(in_free, rb_b, out=self.tmp)
            np.maximum(self.tmp, lj, out=in_free)
            if self.st.rec is not None:
                self.st.rec.downstream(RESULT, self.g_l[j], self.slot_l[j], self._far(j), float(self.res.rb[j]), rb_b,
                                       in_free)
            if self.scalar_max:
                self.top = max(self.top + rb_b, float(lj[-1]))
                self.got_max[j] = self.top
            else:
                self.got_max[j] = np.maximum.reduce(in_free)
            return in_free
        gj = self.g_l[j]
        t = in_free + rb_b
        np.maximum(t, lj, out=t)
        if self.st.rec is not None:
            self.st.rec.downstream(RESULT, gj, self.slot_l[j], self._far(j), float(self.res.rb[j]), rb_b, t)
        keep = in_free[gj]
        in_free[:] = t
        in_free[gj] = keep
        if self.st.far:
            t[gj] = NEG
            self.got_max[j] = np.maximum.reduce(t)
        t[gj] = self.ready_l[j]
        return t

    def _land(self, j: int, got: np.ndarray) -> None:
        """The result is DMA-written to host memory and (OmniReduce) unpacked by the host."""
        st, wr_free, host_busy = self.st, self.wr_free, self.host_busy
        host_free = st.host_of(self.slot_l[j])[:st.n]     # the slot's host thread, in place
        tr = self.traced
        if tr is not None:
            w0 = np.maximum(got[tr], wr_free[tr])
        spill = 0.0 if st.dram is None else st.dram.spill(float(self.res.rb_data[j]))
        start = np.maximum(got, wr_free) if spill > 0.0 else None
        np.maximum(got, wr_free, out=wr_free)
        wr_free += self.rbd_pi[j]
        if start is not None:       # what DDIO does not keep of the result goes to DRAM
            wr_free[:] = roof_rows(st.dram, np.arange(st.n), start, wr_free, spill)
        if tr is not None:
            st.tel.event(WRITE, tr, w0, wr_free[tr], self.res.rb_data[j])
        if not self.per_slot_landed:
            return
        np.add(wr_free, self.a_p, out=self.landed)
        if self.pack:     # OmniReduce's host unpacks the result itself
            if tr is not None:
                h0 = np.maximum(self.landed[tr], host_free[tr])
            np.maximum(self.landed, host_free, out=host_free)
            host_free += self.o_h
            t0 = host_free.copy() if st.dram is not None else None
            host_free += self.rbd_g[j]
            host_busy += self.unpack_busy[j]
            if t0 is not None:      # the copy reads what DDIO did not keep and writes the result
                rbd = float(self.res.rb_data[j])
                end = roof_rows(st.dram, np.arange(st.n), t0, host_free, st.dram.spill(rbd) + rbd)
                host_busy += end - host_free
                host_free[:] = end
            if tr is not None:
                st.tel.event(HOST, tr, h0, host_free[tr], self.res.rb_data[j], int(st.slot_thread[self.slot_l[j]]))
        latest = host_free if self.pack else self.landed
        if not st.monotone:
            np.maximum(st.done, latest, out=st.done)
        nxt = self.next_pack.get(j)
        if nxt is not None:
            # the polling thread that unpacked the result packs the slot's next record at once
            rep, pack, busy, scanned = nxt
            h = host_free + self.o_h
            t0 = h.copy() if st.dram is not None else None
            h += pack
            wait = None
            if t0 is not None:      # the pass reads the window and writes the record's blocks
                who = np.flatnonzero(rep)
                end = roof_rows(st.dram, who, t0[who], h[who], scanned[who])
                wait = end - h[who]
                h[who] = end
            if tr is not None:
                st.tel.event(HOST, tr[rep[tr]], host_free[tr][rep[tr]], h[tr][rep[tr]], self.next_scan[j][tr][rep[tr]],
                             int(st.slot_thread[self.slot_l[j]]))
            np.copyto(host_free, h, where=rep)
            host_busy += np.where(rep, busy, 0.0)
            if wait is not None:
                host_busy[who] += wait
        # a worker writes its next record once it may (credit) or once it has the result
        # (and, packing on the result, once that record is packed)
        if self.clock_landed and self.goes_l[j]:
            st.clock[self.slot_l[j]] = host_free if self.pack else latest
