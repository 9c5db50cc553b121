"""The spot protocol with real data over MPI: Put into Rx spots, reduce into Tx spots.

Each rank runs the workers and aggregators it hosts as one event loop:

* a **worker** writes a record (its non-zero blocks of the current window, their
  indices and its next-non-zero pointer) into its region of the aggregator's Rx
  spot with ``Put``, makes it remotely complete with ``Flush`` and then sends a
  small notification; it writes the next record only once the aggregator has
  given it an **Rx credit** for that spot (OmNICCL) or, for OmniReduce, once it
  has the previous result;
* an **aggregator** waits for the records of every worker whose pointer falls in
  the window, reduces them into Tx spot ``round mod T``, sends every worker an
  Rx credit carrying the next window, and scatters the Tx record. It reuses a
  Tx spot only after every reader has returned a **Tx credit** for it and the
  sends from it have completed, so with one Tx spot the next round waits for
  the whole scatter, and with two it overlaps it.

Blocks that are zero on every worker are never written, sent or touched: the
output starts as zeros. The emulated time does not come from this loop (its
message order depends on the wall clock) but from :mod:`collectives.sparse_timing`
on the exchanged block masks; as it runs, the loop checks that the windows the
workers' real pointers produce are exactly the planned ones.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from collectives.spot_protocol import Plan
from nic.spots import RecordLayout, SpotWindows

TAG_RECORD, TAG_CREDIT, TAG_TXCREDIT, TAG_RESULT = 21, 22, 23, 100


class ProtocolError(RuntimeError):
    """The spot protocol saw something its plan rules out (a bug, never a user error)."""


@dataclass
class AggSlot:
    slot: int
    local_agg: int
    lo: int
    hi: int
    round: int = 0
    window: tuple[int, int] = (0, 0)
    pointers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    arrived: dict[int, tuple[int, int]] = field(default_factory=dict)   # worker -> (count, next)
    expected: set[int] = field(default_factory=set)
    tx_pending: list[int] = field(default_factory=list)                  # credits still out, per Tx spot
    tx_requests: list[list] = field(default_factory=list)
    done: bool = False
    finished: bool = False     # done, and every Tx credit is back


class SpotRun:
    """One sparse AllReduce on one rank."""

    def __init__(self, comm: MPI.Comm, plan: Plan, wins: SpotWindows, work: np.ndarray,
                 lo: int, node_rank: np.ndarray, jitter_us: float = 0.0, seed: int = 0) -> None:
        self.comm, self.plan, self.wins = comm, plan, wins
        self.cfg, self.lay = plan.cfg, plan.layout
        self.work, self.lo = work, lo
        self.n = self.lay.nodes
        self.count = work.shape[1]
        self.bs = self.cfg.block_size
        self.rec: RecordLayout = wins.record
        self.jitter_us = jitter_us
        self.rng = random.Random(seed * 7919 + comm.rank)
        self.rank = comm.rank
        agg_rank = node_rank[self.lay.aggregator_node]
        self.agg_rank = agg_rank
        self.agg_local = np.zeros(len(agg_rank), dtype=np.int64)
        for r in np.unique(agg_rank):
            idx = np.flatnonzero(agg_rank == r)
            self.agg_local[idx] = np.arange(len(idx))
        self.node_rank = node_rank
        nb = plan.layout.nblocks
        padded = np.zeros((work.shape[0], nb * self.bs), dtype=work.dtype)
        padded[:, :self.count] = work
        self.blocks = padded.reshape(work.shape[0], nb, self.bs)       # inputs, as blocks
        self.nonzero = (self.blocks != 0).any(axis=2)                  # NaN != 0, so NaN blocks travel
        self.out = np.zeros_like(self.blocks)
        self.requests: list[MPI.Request] = []
        self.staging: dict[tuple[int, int], np.ndarray] = {}
        self.landing = np.empty(self.rec.nbytes, dtype=np.uint8)
        # expected planned windows per slot, for the self-check
        self.planned: dict[int, list[tuple[int, int, int]]] = {}
        for rnd in plan.rounds:
            for j, s in enumerate(rnd.slots):
                self.planned.setdefault(int(s), []).append(
                    (int(rnd.lo[j]), int(rnd.result[j]), int(rnd.next_lo[j])))

    # ---- helpers -------------------------------------------------------------------

    def _jitter(self) -> None:
        if self.jitter_us > 0:
            time.sleep(self.rng.random() * self.jitter_us * 1e-6)

    def _result_tag(self, slot: int, worker: int) -> int:
        return TAG_RESULT + slot * self.n + worker

    def _isend(self, buf: np.ndarray, dest: int, tag: int) -> MPI.Request:
        req = self.comm.Isend(buf, dest, tag)
        self.requests.append(req)
        return req

    # ---- worker side ---------------------------------------------------------------

    def _write_record(self, worker: int, slot: int, rnd: int, start: int) -> None:
        """Put this worker's record for the window starting at ``start`` into the Rx spot."""
        hi_slot = int(self.lay.slot_hi[slot])
        end = min(start + self.cfg.spot_blocks, hi_slot)
        local = worker - self.lo
        nz = self.nonzero[local]
        if rnd == 0 and self.cfg.dense_first_round:
            idx = np.arange(start, end, dtype=np.int64)
        else:
            idx = start + np.flatnonzero(nz[start:end])
        if rnd > 0 and len(idx) == 0:
            return   # nothing in this window: stay silent
        after = np.flatnonzero(nz[end:hi_slot])
        nxt = end + int(after[0]) if len(after) else hi_slot
        buf = self.staging.get((worker, slot))
        if buf is None:
            buf = self.staging[(worker, slot)] = np.empty(self.rec.nbytes, dtype=np.uint8)
        used = self.rec.fill(buf, len(idx), nxt, idx, self.blocks[local, idx].view(np.uint8))
        agg = int(self.lay.slot_agg[slot])
        target = int(self.agg_rank[agg])
        spot = slot - agg * self.cfg.spots
        off = self.wins.rx_offset(int(self.agg_local[agg]), spot, worker)
        self._jitter()
        self.wins.win.Put(buf[:used], target, target=[off, used, MPI.BYTE])
        self.wins.win.Flush(target)
        note = np.array([slot, rnd, worker, len(idx), nxt], dtype=np.int64)
        self._isend(note, target, TAG_RECORD)

    def _on_credit(self, msg: np.ndarray) -> None:
        slot, rnd, worker, nxt = (int(v) for v in msg)
        if nxt < int(self.lay.slot_hi[slot]):
            self._write_record(worker, slot, rnd + 1, nxt)

    def _on_result(self, slot: int, worker: int, source: int) -> None:
        count, nxt, idx, rows = self.rec.read(self.landing)
        local = worker - self.lo
        self.out[local, idx] = rows.view(self.work.dtype).reshape(count, self.bs)
        self.worker_rounds[(worker, slot)] += 1
        credit = np.array([slot, self.worker_rounds[(worker, slot)] - 1, worker], dtype=np.int64)
        self._isend(credit, source, TAG_TXCREDIT)
        if nxt >= int(self.lay.slot_hi[slot]):
            self.workers_left.discard((worker, slot))
        elif not self.cfg.credits:
            self._write_record(worker, slot, self.worker_rounds[(worker, slot)], nxt)

    # ---- aggregator side -----------------------------------------------------------

    def _open_round(self, a: AggSlot, start: int) -> None:
        end = min(start + self.cfg.spot_blocks, a.hi)
        a.window = (start, end)
        a.arrived = {}
        if a.round == 0:
            a.expected = set(range(self.n))
        else:
            a.expected = {int(w) for w in np.flatnonzero(a.pointers < end)}

    def _on_record(self, msg: np.ndarray) -> None:
        slot, rnd, worker, count, nxt = (int(v) for v in msg)
        a = self.aggs[slot]
        if rnd != a.round or worker not in a.expected:
            raise ProtocolError(f"slot {slot}: record of worker {worker} for round {rnd} "
                                f"while round {a.round} expects {sorted(a.expected)}")
        a.arrived[worker] = (count, nxt)
        a.pointers[worker] = nxt
        self._try_aggregate(a)

    def _try_aggregate(self, a: AggSlot) -> None:
        if a.done or len(a.arrived) < len(a.expected):
            return
        tx = a.round % self.cfg.tx_spots
        if a.tx_pending[tx] > 0:
            return                       # readers of this Tx spot are not all done yet
        MPI.Request.Waitall(a.tx_requests[tx])
        a.tx_requests[tx] = []
        self.wins.win.Sync()
        start, end = a.window
        spot = a.slot - int(self.lay.slot_agg[a.slot]) * self.cfg.spots
        parts = []
        for w in sorted(a.arrived):
            count, _, idx, rows = self.rec.read(self.wins.view(self.wins.rx_offset(a.local_agg, spot, w)))
            if count:
                parts.append((idx.copy(), rows.view(self.work.dtype).reshape(count, self.bs)))
        union = np.unique(np.concatenate([p[0] for p in parts])) if parts else np.zeros(0, np.int64)
        acc = np.zeros((len(union), self.bs), dtype=self.work.dtype)
        for idx, rows in parts:
            acc[np.searchsorted(union, idx)] += rows
        nxt = int(min(int(a.pointers.min()), a.hi))
        expect = self.planned[a.slot][a.round]
        if (start, len(union), nxt) != expect:
            raise ProtocolError(f"slot {a.slot} round {a.round}: window {start}, {len(union)} blocks, "
                                f"next {nxt}; the plan has {expect}")
        txbuf = self.wins.view(self.wins.tx_offset(a.local_agg, spot, tx))
        used = self.rec.fill(txbuf, len(union), nxt, union, acc.view(np.uint8))
        if self.cfg.credits and nxt < a.hi:
            for w in range(self.n):
                self._isend(np.array([a.slot, a.round, w, nxt], dtype=np.int64),
                            int(self.node_rank[w]), TAG_CREDIT)
        self._jitter()
        reqs = [self.comm.Isend(txbuf[:used], int(self.node_rank[w]), self._result_tag(a.slot, w))
                for w in range(self.n)]
        a.tx_requests[tx] = reqs
        a.tx_pending[tx] = self.n
        a.round += 1
        if nxt >= a.hi:
            a.done = True
        else:
            self._open_round(a, nxt)

    def _on_txcredit(self, msg: np.ndarray) -> None:
        slot, rnd, _ = (int(v) for v in msg)
        a = self.aggs[slot]
        tx = rnd % self.cfg.tx_spots
        a.tx_pending[tx] -= 1
        if a.done and sum(a.tx_pending) == 0:
            a.finished = True
        self._try_aggregate(a)

    # ---- the loop ------------------------------------------------------------------

    def run(self) -> None:
        lay, cfg = self.lay, self.cfg
        active = [int(s) for s in np.flatnonzero(lay.slot_hi > lay.slot_lo)]
        self.aggs: dict[int, AggSlot] = {}
        for s in active:
            agg = int(lay.slot_agg[s])
            if int(self.agg_rank[agg]) == self.rank:
                a = AggSlot(s, int(self.agg_local[agg]), int(lay.slot_lo[s]), int(lay.slot_hi[s]))
                a.pointers = np.full(self.n, -1, dtype=np.int64)
                a.tx_pending = [0] * cfg.tx_spots
                a.tx_requests = [[] for _ in range(cfg.tx_spots)]
                self._open_round(a, a.lo)
                self.aggs[s] = a
        workers = range(self.lo, self.lo + self.work.shape[0])
        self.worker_rounds = {(w, s): 0 for w in workers for s in active}
        self.workers_left = {(w, s) for w in workers for s in active}
        win = self.wins.win
        win.Lock_all()
        try:
            for s in active:
                for w in workers:
                    self._write_record(w, s, 0, int(lay.slot_lo[s]))
            status = MPI.Status()
            ctrl = np.empty(5, dtype=np.int64)
            while self.workers_left or any(not a.finished for a in self.aggs.values()):
                self.comm.Probe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
                tag, source = status.Get_tag(), status.Get_source()
                if tag >= TAG_RESULT:
                    self.comm.Recv(self.landing, source, tag)
                    slot, worker = divmod(tag - TAG_RESULT, self.n)
                    self._on_result(slot, worker, source)
                    continue
                size = status.Get_count(MPI.INT64_T)
                self.comm.Recv(ctrl[:size], source, tag)
                if tag == TAG_RECORD:
                    self._on_record(ctrl[:5])
                elif tag == TAG_CREDIT:
                    self._on_credit(ctrl[:4])
                elif tag == TAG_TXCREDIT:
                    self._on_txcredit(ctrl[:3])
                else:
                    raise ProtocolError(f"unexpected message tag {tag} from rank {source}")
            MPI.Request.Waitall(self.requests)
            for a in self.aggs.values():
                for reqs in a.tx_requests:
                    MPI.Request.Waitall(reqs)
        finally:
            win.Unlock_all()
        flat = self.out.reshape(self.work.shape[0], -1)[:, :self.count]
        self.work[:] = flat
