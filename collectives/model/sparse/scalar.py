"""The spot-protocol timing of few nodes, record by record in plain Python floats.

Why: with a handful of nodes (a tensor-parallel group of 8) a round holds a few
slots of a few records, and the numpy code of :mod:`.upstream` and
:mod:`.downstream` spends its time in the overhead of hundreds of tiny array
operations per round. Here every record is one Python float computation instead.

Why it is exact: each number is produced by the same IEEE-754 double operations,
on the same operands, in the same order as the numpy code. The max-plus scans
keep their closed form (``done_j = max(start, max_i(ready_i - csum_{i-1})) +
csum_j`` with a sequential running sum, as ``np.cumsum`` computes it; entries
that are neutral in the numpy rows (a record that does not use the resource,
padding) are skipped, which changes nothing: they add 0 to the running sum and
never win a maximum); sums that numpy takes pairwise (``np.sum``) are taken with
:func:`np_sum`, numpy's pairwise order; block and byte counts are integers.
tests/unit/test_sparse_scalar.py compares the two paths with ``==``.

It covers OmNICCL and omniccl-cpu (NIC or host aggregation, Rx credits, no host
packing) and OmniReduce (dedicated aggregators, host packing, self-clocked slots,
packing on the result or not) with no faults, stragglers, telemetry or packet
headers, and costs for which free times only grow (``SpotState.monotone``);
:func:`applies` says when. Everything else, and large node counts (where numpy's
vectors pay), takes the numpy path.
"""

from __future__ import annotations

import numpy as np

from nicemu.collectives.model.sparse.dram import dedicated_roof, fifo_roof, roof
from nicemu.collectives.model.sparse.state import SpotState
from nicemu.collectives.schedules.spot_protocol import CREDIT_BYTES, INDEX_BYTES, RECORD_HEADER_BYTES, Plan, Round

#: largest node count timed here; above it the numpy path is faster (docs/model.md §10.8)
MAX_NODES = 32
#: the same for OmniReduce (dedicated aggregators), whose rounds have many more slots
MAX_NODES_DEDICATED = 16

NEG = float("-inf")


def np_sum(a: list[float]) -> float:
    """``float(np.sum(a))`` for float64 values: numpy's pairwise order (8 accumulators per block of
    up to 128, halves above that), so the rounding is numpy's."""
    n = len(a)
    if n < 8:
        res = 0.0
        for x in a:
            res += x
        return res
    if n <= 128:
        r0, r1, r2, r3, r4, r5, r6, r7 = a[:8]
        i, stop = 8, n - n % 8
        while i < stop:
            r0 += a[i]
            r1 += a[i + 1]
            r2 += a[i + 2]
            r3 += a[i + 3]
            r4 += a[i + 4]
            r5 += a[i + 5]
            r6 += a[i + 6]
            r7 += a[i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        for x in a[i:]:
            res += x
        return res
    half = n // 2
    half -= half % 8
    return np_sum(a[:half]) + np_sum(a[half:])


def applies(st: SpotState, plan: Plan) -> bool:
    """True when :func:`time_plan` gives this timing (``st``: a fresh ``SpotState`` of ``plan``)."""
    cfg = st.cfg
    if not (isinstance(plan, Plan) and all(type(r) is Round for r in plan.rounds)
            and st.n <= MAX_NODES and st.faults is None and st.slow is None and st.tel is None
            and st.rec is None and not st.header and st.monotone):
        return False
    if cfg.aggregation == "dedicated":          # OmniReduce
        return cfg.host_packing and not cfg.credits and st.n <= MAX_NODES_DEDICATED
    return cfg.credits and not cfg.host_packing and not cfg.pack_on_result and st.clock is not None


def time_plan(st: SpotState, plan: Plan) -> None:
    """Time every round of ``plan`` into ``st`` (free times, busy times, done, byte counts), as
    ``upstream.time_round`` and ``downstream.time_round`` would."""
    (_Dedicated if st.cfg.aggregation == "dedicated" else _Scalar)(st).run(plan)


class _Scalar:
    """The resource free times of ``SpotState`` as Python lists, and the rounds timed on them."""

    def __init__(self, st: SpotState) -> None:
        self.st = st
        self.n = st.n
        self.out, self.inn = st.out_free.tolist(), st.in_free.tolist()
        self.rd, self.wr = st.rd_free.tolist(), st.wr_free.tolist()
        self.nicf, self.nic_busy = st.nic_free.tolist(), st.nic_busy.tolist()
        self.host_thr, self.host_busy = st.host_thr.tolist(), st.host_busy.tolist()
        self.tx_free = st.tx_free.tolist()
        self.done = st.done.tolist()
        self.clock: dict[int, list[float]] = {}     # per slot: when each worker may write again
        self.zeros = [0.0] * st.n
        self.slot_g = st.slot_g.tolist()
        self.slot_thread = st.slot_thread.tolist()
        self.slot_hi = st.lay.slot_hi.tolist()
        self.on_nic = st.cfg.aggregation == "nic"
        n = self.n
        self.kf = [[float((w - g) % n) for w in range(n)] for g in range(n)]
        self.others = [[w for w in range(n) if w != g] for g in range(n)]
        self.kcb = [[k * st.cb for k in row] for row in self.kf]     # k-th far worker's credit leaves k*cb later
        self.up = self.down = 0

    def run(self, plan: Plan) -> None:
        rounds = plan.rounds
        for i, rnd in enumerate(rounds):
            self._round(rnd, rounds[i + 1] if i + 1 < len(rounds) else None)
        self._write_back()

    def _write_back(self) -> None:
        """The free times, busy times, byte counts and done times, back into the ``SpotState``."""
        st = self.st
        st.out_free[:], st.in_free[:] = self.out, self.inn
        st.rd_free[:], st.wr_free[:] = self.rd, self.wr
        st.nic_free[:], st.nic_busy[:] = self.nicf, self.nic_busy
        st.host_thr[:], st.host_busy[:] = self.host_thr, self.host_busy
        st.tx_free[:] = self.tx_free
        st.done[:] = self.done
        for s, row in self.clock.items():
            st.clock[s] = row
        st.up += self.up
        st.down += self.down

    def _round(self, rnd: Round, nxt: Round | None) -> None:
        """Both phases of one round (``nxt``: the next round, for packing on the result)."""
        nact = len(rnd.slots)
        if nact == 0:
            return
        slots = rnd.slots.tolist()
        sent = rnd.sent_rows(0, nact)
        rep = np.asarray(rnd.reports_rows(0, nact, sent), dtype=bool).tolist()
        sent = sent.tolist()
        result = rnd.result.tolist()
        consumed, ready_at = [0.0] * nact, [0.0] * nact
        # as upstream.time_round: the workers' side of a chunk of slots, then the aggregators' side,
        # so every node's DRAM is charged in the same order as there
        step = max(1, self.st.chunk // max(self.n, 1))
        for j0 in range(0, nact, step):
            j1 = min(nact, j0 + step)
            records = [self._send(rnd.index, slots[j], sent[j], rep[j]) for j in range(j0, j1)]
            for j in range(j0, j1):
                consumed[j], ready_at[j] = self._up(rnd.index, slots[j], records[j - j0], result[j])
        self._down(rnd.index, slots, result, rnd.next_lo.tolist(), consumed, ready_at)

    def _send(self, index: int, s: int, sent: list[int], rep: list[bool]) -> list[tuple]:
        """The workers' side of phase 1 for slot ``s``: each writing worker's NIC DMA-reads its blocks
        and the record leaves on its link (the aggregator's own record stays in its node). Returns per
        record ``(worker, blocks, data bytes, ready or link-out done, link time or None if local)``."""
        st, n = self.st, self.n
        g = self.slot_g[s]
        bb, pi, a_p, beta = st.bb, st.pi, st.a_p, st.beta
        clock = None if index == 0 else self.clock.get(s, self.zeros)
        rd, out, mem = self.rd, self.out, st.dram
        records = []
        for w in range(n):
            if not rep[w]:
                continue
            cnt = sent[w]
            sv = float(cnt)
            d = sv * bb
            ready = 0.0 if clock is None else clock[w]
            if d > 0:               # the NIC DMA-reads the blocks (from DRAM)
                x = rd[w]
                x = ready if ready > x else x
                r = x + d * pi
                if mem is not None:
                    r = roof(mem, w, x, r, d)
                rd[w] = r
                ready = r + a_p
            if w == g:              # the aggregator's own record stays in its node
                records.append((w, cnt, d, ready, None))
            else:
                msg_b = (sv * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES) * beta
                x = out[w]
                of = (ready if ready > x else x) + msg_b
                out[w] = of
                records.append((w, cnt, d, of, msg_b))
        return records

    def _up(self, index: int, s: int, records: list[tuple], result: int) -> tuple[float, float]:
        """The aggregator's side of phase 1 for slot ``s``: the records cross its link in (a max-plus
        scan in worker order) and are aggregated; returns when the Rx spot is consumed and the result
        is ready. The NIC's scan runs in the same pass: it serves the records in the same order."""
        st = self.st
        g = self.slot_g[s]
        bb, pi, a_p, alpha = st.bb, st.pi, st.a_p, st.alpha
        tx_free = self.tx_free[s][index % st.cfg.tx_spots]
        on_nic, spilled, nu, mem = self.on_nic, st.spilled, st.nu, st.dram
        if on_nic:
            first = self.nicf[g]
            if tx_free > first:
                first = tx_free
            svc: list[float] = []
            ncsum, ntop, nlast = 0.0, NEG, first     # the scan of the NIC reduction engine
        else:
            arrival: list[float] = []
            data: list[float] = []
        blocks = far_blocks = far_records = 0
        start = self.inn[g]
        csum, top, last = 0.0, NEG, start      # the scan of the aggregator's link in
        for _w, cnt, d, of, msg_b in records:
            blocks += cnt
            if msg_b is None:       # the aggregator's own record
                arr = of
            else:
                x = ((of + alpha) - msg_b) - csum
                if x > top:
                    top = x
                csum += msg_b
                arr = last = (start if start > top else top) + csum
                far_blocks += cnt
                far_records += 1
            if on_nic:
                if spilled:         # to host memory and back before the NIC reduces it
                    a0 = arr
                    arr += 2 * a_p + 2 * d * pi
                    if mem is not None:
                        arr = roof(mem, g, a0, arr, mem.spill(d) + d)
                v = d * nu
                svc.append(v)
                x = arr - ncsum
                if x > ntop:
                    ntop = x
                ncsum += v
                nlast = (first if first > ntop else ntop) + ncsum
            else:
                arrival.append(arr)
                data.append(d)
        self.inn[g] = last
        self.up += (bb + INDEX_BYTES) * far_blocks + RECORD_HEADER_BYTES * far_records
        rb_data = float(result) * bb
        if not on_nic:
            return self._on_host(g, s, arrival, data, blocks, tx_free, rb_data)
        self.nicf[g] = nlast
        self.nic_busy[g] += np_sum(svc)
        consumed = nlast + st.a_n
        if not spilled:
            return consumed, consumed
        ready_at = consumed + (a_p + rb_data * pi)
        return consumed, (ready_at if mem is None else roof(mem, g, consumed, ready_at, rb_data))

    def _on_host(self, g: int, s: int, arrival: list[float], data: list[float], blocks: int, tx_free: float,
                 rb_data: float) -> tuple[float, float]:
        """The records are DMA-written to host memory; the host reduces them once all have landed."""
        st, mem = self.st, self.st.dram
        pi, a_p, o_h, gamma = st.pi, st.a_p, st.o_h, st.gamma
        start = self.wr[g]
        spills = None if mem is None else [mem.spill(d) for d in data]
        if spills is not None and any(x > 0.0 for x in spills):     # the writes spill past DDIO into DRAM
            landed = fifo_roof(mem, g, start, arrival, [d * pi for d in data], spills)[0][-1]
        else:
            csum, top, landed = 0.0, NEG, start
            for x, d in zip(arrival, data):
                top = max(top, x - csum)
                csum += d * pi
                landed = max(start, top) + csum
        if arrival:
            self.wr[g] = landed
        last = (landed if arrival else 0.0) + a_p
        thr = self.slot_thread[s]
        host = self.host_thr[thr]
        begin = max(max(last, host[g]), tx_free)
        dsum = float(blocks) * st.bb
        consumed = (begin + o_h) + dsum * gamma
        wait = None
        if mem is not None:     # the pass reads what DDIO did not keep of the records and writes the result
            end = roof(mem, g, begin + o_h, consumed, sum(spills) + rb_data)
            wait, consumed = end - consumed, end
        host[g] = consumed
        self.host_busy[g] += o_h + dsum * gamma
        if wait is not None:
            self.host_busy[g] += wait
        ready_at = consumed + a_p + rb_data * pi
        return consumed, (ready_at if mem is None else roof(mem, g, consumed, ready_at, rb_data))

    def _down(self, index: int, slots: list[int], result: list[int], next_lo: list[int],
              consumed: list[float], ready_at: list[float]) -> None:
        """Phase 2: Rx credits and results leave the aggregators, reach every worker and land; the
        Tx spots are freed once every Tx credit is back."""
        st, n = self.st, self.n
        f = n - 1           # far workers (nodes >= 2)
        bb, beta, alpha, cb, pi, a_p = st.bb, st.beta, st.alpha, st.cb, st.pi, st.a_p
        tx = index % st.cfg.tx_spots
        out = self.out
        leaves = []
        conts = 0
        for j, s in enumerate(slots):               # the aggregators send
            g = self.slot_g[s]
            res = float(result[j])
            rb = res * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES
            rb_b = rb * beta
            cont = next_lo[j] < self.slot_hi[s]
            of = out[g]
            c = max(of, consumed[j])
            if cont:
                of = c + f * cb
            e = max(of, ready_at[j])
            out[g] = e + f * rb_b
            conts += cont
            self.down += int(f * rb)
            leaves.append((g, cont, c, e, rb_b, res * bb * pi, res * bb))
        self.down += conts * f * CREDIT_BYTES
        self.up += len(slots) * f * CREDIT_BYTES
        inn, wr, mem = self.inn, self.wr, st.dram
        for j, s in enumerate(slots):               # the workers receive
            g, cont, c0, e0, rb_b, rbd_pi, rbd = leaves[j]
            spill = 0.0 if mem is None else mem.spill(rbd)     # what DDIO does not keep goes to DRAM
            kf, others = self.kf[g], self.others[g]     # (w - g) mod n as floats; the far workers
            if cont:            # the Rx credit: a worker may write its next record once it has it
                kcb = self.kcb[g]
                clock = [0.0] * n
                clock[g] = consumed[j]
                for w in others:
                    t = inn[w] + cb
                    x = kcb[w] + c0 + alpha
                    if x > t:
                        t = x
                    inn[w] = t
                    clock[w] = t
                self.clock[s] = clock
            got = NEG
            for w in others:    # the result arrives, and is DMA-written to host memory
                t = inn[w] + rb_b
                x = kf[w] * rb_b + e0 + alpha
                if x > t:
                    t = x
                inn[w] = t
                if t > got:
                    got = t
                x = wr[w]
                x = t if t > x else x
                wr[w] = x + rbd_pi if spill <= 0.0 else roof(mem, w, x, x + rbd_pi, spill)
            t, x = ready_at[j], wr[g]       # the aggregator's node has it at once
            x = t if t > x else x
            wr[g] = x + rbd_pi if spill <= 0.0 else roof(mem, g, x, x + rbd_pi, spill)
            back = (got + cb) + alpha
            self.tx_free[s][tx] = back if back > ready_at[j] else ready_at[j]
        done = self.done
        for w in range(n):
            x = wr[w] + a_p
            if x > done[w]:
                done[w] = x


class _Dedicated(_Scalar):
    """OmniReduce: dedicated aggregators (endpoints ``n + a``), worker hosts that pack each record and
    unpack each result on the slot's thread, no credits (a slot is self-clocked by its result)."""

    def __init__(self, st: SpotState) -> None:
        super().__init__(st)
        self.k1 = [w + 1.0 for w in range(self.n)]     # the k-th worker's copy leaves k copies after the first
        self.on_result = st.cfg.pack_on_result
        self.clocked = st.clock is not None            # a slot's next record waits for its result
        self._next: Round | None = None                 # the round whose records are packed on the result
        self._window: dict[int, int] = {}               # per slot of the round: its window's bytes

    def _send(self, index: int, s: int, sent: list[int], rep: list[bool]) -> tuple:
        """Workers and aggregators are different endpoints: the whole of phase 1 is in ``_up``."""
        return sent, rep

    def _up(self, index: int, s: int, records: tuple, result: int) -> tuple[float, float]:
        """Phase 1 of slot ``s``: (first round, or not packing on the result) the worker's host thread
        packs the record, the NIC reads it, it crosses to the aggregator, whose thread handles each
        message as it arrives."""
        sent, rep = records
        st, n, mem = self.st, self.n, self.st.dram
        g = self.slot_g[s]
        bb, pi, a_p, beta, alpha, gamma, o_h = st.bb, st.pi, st.a_p, st.beta, st.alpha, st.gamma, st.o_h
        clock = None if (not self.clocked or index == 0) else self.clock.get(s, self.zeros)
        pack_here = index == 0 or not self.on_result
        thr = self.slot_thread[s]
        host, hb = self.host_thr[thr], self.host_busy
        window = self._window[s]
        rd, out = self.rd, self.out
        tx_free = self.tx_free[s][index % st.cfg.tx_spots]
        start0 = host[g]
        if tx_free > start0:
            start0 = tx_free
        svc: list[float] = []
        acsum, atop, consumed = 0.0, NEG, start0    # the aggregator thread's scan
        start = self.inn[g]
        csum, top, last = 0.0, NEG, start           # the scan of the aggregator's link in
        blocks = records = 0
        arrival: list[float] = []
        data: list[float] = []
        for w in range(n):
            if not rep[w]:
                continue
            cnt = sent[w]
            sv = float(cnt)
            d = sv * bb
            ready = 0.0 if clock is None else clock[w]
            if pack_here:           # the host thread finds and packs the blocks
                pack = (window + d) * gamma
                if not self.clocked:
                    h = host[w] + o_h
                else:
                    x = host[w]
                    h = (ready if ready > x else x) + o_h
                t0 = h
                h += pack
                hb[w] += o_h + pack
                if mem is not None:     # the pass reads the window and writes the record's blocks
                    h = roof(mem, w, t0, h, window + d, hb)
                host[w] = h
                ready = h
            if d > 0:               # the NIC DMA-reads the record (from DRAM)
                x = rd[w]
                x = ready if ready > x else x
                r = x + d * pi
                if mem is not None:
                    r = roof(mem, w, x, r, d)
                rd[w] = r
                ready = r + a_p
            msg_b = (sv * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES) * beta
            x = out[w]
            of = (ready if ready > x else x) + msg_b
            out[w] = of
            x = ((of + alpha) - msg_b) - csum
            if x > top:
                top = x
            csum += msg_b
            last = (start if start > top else top) + csum
            blocks += cnt
            records += 1
            v = o_h + d * gamma     # the aggregator thread: DMA write, then copy
            svc.append(v)
            x = ((last + a_p) + d * pi) - acsum
            if x > atop:
                atop = x
            acsum += v
            consumed = (start0 if start0 > atop else atop) + acsum
            arrival.append(last)
            data.append(d)
        waits = ()
        if mem is not None and any(mem.spill(d) > 0.0 for d in data):   # records spill past DDIO into DRAM
            done, waits = dedicated_roof(mem, g, start0, arrival, data, a_p, pi, o_h, gamma)
            consumed = done[-1]
        self.inn[g] = last
        self.up += (bb + INDEX_BYTES) * blocks + RECORD_HEADER_BYTES * records
        host[g] = consumed
        hb[g] += np_sum(svc)
        for x in waits:
            hb[g] += x
        rb_data = float(result) * bb
        ready_at = consumed + a_p + rb_data * pi
        return consumed, (ready_at if mem is None else roof(mem, g, consumed, ready_at, rb_data))

    def _round(self, rnd: Round, nxt: Round | None) -> None:
        self._next = nxt if self.on_result else None
        # per slot: the bytes of its window, which the host scans to pack the record
        self._window = dict(zip(rnd.slots.tolist(), ((rnd.hi - rnd.lo) * self.st.bb).tolist()))
        super()._round(rnd, nxt)

    def _next_records(self) -> dict[int, tuple[list[bool], list[float], list[float]]]:
        """``pack_on_result``: per slot of the next round, who writes a record in it and the host time
        to find and pack it."""
        nxt = self._next
        if nxt is None or len(nxt.slots) == 0:
            return {}
        st, k = self.st, len(nxt.slots)
        sent = nxt.sent_rows(0, k)
        rep = np.asarray(nxt.reports_rows(0, k, sent), dtype=bool).tolist()
        window = ((nxt.hi - nxt.lo) * st.bb).tolist()
        gamma, bb = st.gamma, st.bb
        out = {}
        for s, row, r, win in zip(nxt.slots.tolist(), sent.tolist(), rep, window):
            scanned = [win + float(c) * bb for c in row]    # the pass reads the window, writes the blocks
            out[s] = (r, [x * gamma for x in scanned], scanned)
        return out

    def _down(self, index: int, slots: list[int], result: list[int], next_lo: list[int],
              consumed: list[float], ready_at: list[float]) -> None:
        """Phase 2: each result goes to every worker, one copy after the other; the worker's NIC writes
        it to host memory, the slot's host thread unpacks it and (packing on the result) packs the
        slot's next record in the same pass."""
        st, n = self.st, self.n
        f = n
        bb, beta, alpha, cb, pi, a_p, gamma, o_h = st.bb, st.beta, st.alpha, st.cb, st.pi, st.a_p, st.gamma, st.o_h
        tx = index % st.cfg.tx_spots
        out, k1 = self.out, self.k1
        leaves = []
        for j, s in enumerate(slots):               # the aggregators send
            g = self.slot_g[s]
            res = float(result[j])
            rb = res * (bb + INDEX_BYTES) + RECORD_HEADER_BYTES
            rb_b = rb * beta
            of = out[g]
            e = max(of, ready_at[j])
            out[g] = e + f * rb_b
            self.down += int(f * rb)
            rbd = res * bb
            leaves.append((e, rb_b, rbd * pi, rbd * gamma, rbd))
        self.up += len(slots) * f * CREDIT_BYTES
        nxt = self._next_records() if self._next is not None else {}
        inn, wr, hb, mem = self.inn, self.wr, self.host_busy, st.dram
        for j, s in enumerate(slots):               # the workers receive
            e0, rb_b, rbd_pi, rbd_g, rbd = leaves[j]
            host = self.host_thr[self.slot_thread[s]]
            unpack_busy = o_h + rbd_g
            # DRAM: the write spills past DDIO; the copy reads that and writes the result
            spill = 0.0 if mem is None else mem.spill(rbd)
            copy = 0.0 if mem is None else spill + rbd
            got = NEG
            for w in range(n):
                t = inn[w] + rb_b
                x = k1[w] * rb_b + e0 + alpha
                if x > t:
                    t = x
                inn[w] = t
                if t > got:
                    got = t
                x = wr[w]
                x = t if t > x else x
                x = x + rbd_pi if spill <= 0.0 else roof(mem, w, x, x + rbd_pi, spill)
                wr[w] = x
                x += a_p                # landed; the host thread unpacks it
                h = host[w]
                h = (x if x > h else h) + o_h
                e = h + rbd_g
                hb[w] += unpack_busy
                if mem is not None:
                    end = roof(mem, w, h, e, copy)
                    hb[w] += end - e
                    e = end
                host[w] = e
            pk = nxt.get(s)
            if pk is not None:          # the same pass packs the slot's next record
                rep, pack, scanned = pk
                for w in range(n):
                    if rep[w]:
                        t0 = host[w] + o_h
                        e = t0 + pack[w]
                        hb[w] += o_h + pack[w]
                        if mem is not None:
                            e = roof(mem, w, t0, e, scanned[w], hb)
                        host[w] = e
            if self.clocked and next_lo[j] < self.slot_hi[s]:
                self.clock[s] = host[:n]
            back = (got + cb) + alpha
            self.tx_free[s][tx] = back if back > 0.0 else 0.0
        done, thr = self.done, self.host_thr
        for w in range(n):
            x = max(row[w] for row in thr)
            if x > done[w]:
                done[w] = x
