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

Credits and results are the same for every worker, so the aggregator sends
each once per *rank* (not per hosted node): the rank applies it to all its
workers and returns one Tx credit for them. With virtual nodes (64 nodes on 4
ranks) this divides the scatter's messages by the nodes per rank; the
emulated time is unaffected, as it comes from the model (below).

Blocks that are zero on every worker are never written, sent or touched: the
output starts as zeros. The emulated time does not come from this loop (its
message order depends on the wall clock) but from :mod:`nicemu.collectives.model.sparse_timing`
on the exchanged block masks; as it runs, the loop checks that the windows the
workers' real pointers produce are exactly the planned ones.

Every receive names its source and its tag (collectives/mpi/tags.py), so a
fast rank's next call (dense, point-to-point or sparse, on the same
communicator) can never take this call's messages. The event loop keeps one
receive posted per peer rank and kind of message it can get (records and Tx
credits from every rank, on a rank hosting aggregators; Rx credits, NACKs and
results from the ranks hosting aggregators), each into a buffer of its own, so
the receives it polls grow with the ranks, not with the slots or nodes; a
result names its slot and round in its record header. The loop handles every
receive that has completed and posts it again. When the loop ends every
message it expected has arrived: a rank counts its Rx credits (a credit need
not precede the last result of its slot), the rest comes causally before the
results and Tx credits the loop waits for. The receives still posted are cancelled, and one that
matched a message instead is a protocol error.

Every wait (the event loop's, the aggregator's wait for a Tx spot's scatter,
the final sends) goes through a
:class:`~nicemu.collectives.mpi.watchdog.Watchdog`, which turns a stalled peer into
:class:`~nicemu.collectives.mpi.watchdog.CollectiveStalled` naming what each local node
waits for and from whom; ``Flush`` and ``Unlock_all``, which cannot be polled,
are guarded by the watchdog's thread. The ``NICEMU_TEST_FAIL_*`` test hook is
checked before every event.
"""

from __future__ import annotations

import random
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from nicemu.collectives.mpi import tags
from nicemu.collectives.mpi.watchdog import (
    CollectiveStalled,
    Watchdog,
    culprit_text,
    listing,
    local_fault_hook,
    nodes_text,
    ranks_text,
)
from nicemu.collectives.schedules.spot_protocol import INDEX_BYTES, RECORD_HEADER_BYTES, Plan
from nicemu.errors import ProtocolError
from nicemu.nic.faults import FaultSpec, transfer_faults
from nicemu.nic.spots import RecordLayout, SpotWindows

NOTE_WORDS = 7   # a record's notification: slot, round, worker, count, next, bytes, CRC32
#: words of each control message, by tag (an Rx credit: slot, round, next; a Tx credit: slot, round,
#: workers; a NACK: slot, round, worker)
CONTROL_WORDS = {tags.SPOT_RECORD: NOTE_WORDS, tags.SPOT_CREDIT: 3, tags.SPOT_TXCREDIT: 3, tags.SPOT_NACK: 3}


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
    tx_pending: list[set[int]] = field(default_factory=list)   # ranks whose Tx credit is out, per Tx spot
    tx_round: list[int] = field(default_factory=list)          # the round each Tx spot last held
    tx_requests: list[list] = field(default_factory=list)
    done: bool = False
    finished: bool = False     # done, and every Tx credit is back


class SpotRun:
    """One sparse AllReduce on one rank."""

    def __init__(self, comm: MPI.Comm, plan: Plan, wins: SpotWindows, work: np.ndarray,
                 lo: int, node_rank: np.ndarray, jitter_us: float = 0.0, seed: int = 0,
                 watchdog: Watchdog | None = None, faults: FaultSpec | None = None, call: int = 0,
                 packet_bytes: int = 1024) -> None:
        """``faults``: Rx-spot writes are damaged or cut short in flight, as the fault draws of
        call ``call`` say (the same draws as collectives/model/sparse_timing.py), and recovered."""
        self.comm, self.plan, self.wins = comm, plan, wins
        self.faults = faults if faults is not None and faults.active else None
        self.call, self.packet_bytes = call, packet_bytes
        self.pending: dict[tuple[int, int], list[tuple[int, bool]]] = {}   # fault events still ahead
        self.used: dict[tuple[int, int], int] = {}
        self.cfg, self.lay = plan.cfg, plan.layout
        self.work, self.lo = work, lo
        self.n = self.lay.nodes
        self.count = work.shape[1]
        self.bs = self.cfg.block_size
        self.rec: RecordLayout = wins.record
        self.jitter_us = jitter_us
        self.rng = random.Random(seed * 7919 + comm.rank)
        self.rank = comm.rank
        self.watchdog = watchdog if watchdog is not None else Watchdog(None, comm)
        self.events = 0
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
        # the event loop's posted receives, and for each: (tag, source, buffer)
        self.posted: list[MPI.Request] = []
        self.posted_info: list[tuple[int, int, np.ndarray]] = []
        self.credits_due = 0     # Rx credits this rank still expects (one per slot and round with a next)
        self.readers = [int(r) for r in np.unique(node_rank[:self.n])]   # ranks that host workers
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
        self.used[(worker, slot)] = used
        if self.faults is not None:
            self.pending[(worker, slot)] = self._record_faults(worker, slot, rnd, len(idx))
        self._put_record(worker, slot, rnd)

    def _record_faults(self, worker: int, slot: int, rnd: int, count: int) -> list[tuple[int, bool]]:
        """The fault events of this Rx record, drawn exactly as the timing draws them."""
        agg = int(self.lay.slot_agg[slot])
        dedicated = self.cfg.aggregation == "dedicated"
        endpoint = self.n + agg if dedicated else int(self.lay.aggregator_node[agg])
        if endpoint == worker:
            return []                      # the aggregator's own record crosses no link
        wire = RECORD_HEADER_BYTES + count * (self.bs * self.work.dtype.itemsize + INDEX_BYTES)
        tf = transfer_faults(self.faults, 0.0, self.packet_bytes, 0.0, 0.0, self.call,
                             rnd * 2**32 + slot, [worker], [endpoint], [wire])
        return [(int(i[0]), bool(d[0])) for mask, i, d in tf.events if mask[0]]

    def _put_record(self, worker: int, slot: int, rnd: int) -> None:
        """Put the record (again, after a NACK) and notify the aggregator with its length and CRC32.

        The next fault event of the record, if any, acts on the wire: a drop cuts the write
        short at the lost packet, a corruption flips a byte of a copy and ends the write after
        that packet (a go-back-N receiver discards what follows). The whole record is Put
        again after a NACK; the timing charges go-back-N from the failed packet.
        """
        buf = self.staging[(worker, slot)]
        used = self.used[(worker, slot)]
        wire = buf[:used]
        events = self.pending.get((worker, slot))
        if events:
            at, dropped = events.pop(0)
            cut = min(at * self.packet_bytes, used - 1)
            if dropped:
                wire = buf[:cut]
            else:
                wire = buf[:min(cut + self.packet_bytes, used)].copy()
                wire[min(cut + self.packet_bytes // 2, len(wire) - 1)] ^= 0xFF
        agg = int(self.lay.slot_agg[slot])
        target = int(self.agg_rank[agg])
        spot = slot - agg * self.cfg.spots
        off = self.wins.rx_offset(int(self.agg_local[agg]), spot, worker)
        self._jitter()
        if len(wire):
            self.wins.win.Put(wire, target, target=[off, len(wire), MPI.BYTE])
        with self.watchdog.blocking(self._describe_flush, slot, agg, target):
            self.wins.win.Flush(target)
        count, nxt = (int(v) for v in buf[:16].view(np.int64))
        note = np.array([slot, rnd, worker, count, nxt, used, zlib.crc32(buf[:used])], dtype=np.int64)
        self._isend(note, target, tags.SPOT_RECORD)

    def _on_nack(self, msg: np.ndarray) -> None:
        slot, rnd, worker = (int(v) for v in msg)
        self._put_record(worker, slot, rnd)

    def _on_credit(self, msg: np.ndarray) -> None:
        slot, rnd, nxt = (int(v) for v in msg)
        self.credits_due -= 1
        if self.credits_due < 0:
            raise ProtocolError(f"slot {slot}: an Rx credit for round {rnd} that the plan does not have")
        if nxt < int(self.lay.slot_hi[slot]):
            for worker in self.workers:
                self._write_record(worker, slot, rnd + 1, nxt)

    def _on_result(self, source: int, landing: np.ndarray) -> None:
        """A Tx record for every worker of this rank: keep it, return one Tx credit, go on."""
        slot, rnd = self.rec.origin(landing)
        if slot not in self.slots_left or rnd != self.slot_rounds[slot]:
            raise ProtocolError(f"slot {slot}: a round {rnd} result from rank {source} that the plan does "
                                f"not have here")
        count, nxt, idx, rows = self.rec.read(landing)
        self.out[:, idx] = rows.view(self.work.dtype).reshape(count, self.bs)
        self.slot_rounds[slot] = rnd + 1
        self._isend(np.array([slot, rnd, len(self.workers)], dtype=np.int64), source, tags.SPOT_TXCREDIT)
        if nxt >= int(self.lay.slot_hi[slot]):
            self.slots_left.discard(slot)
            self.open_by_source[source].discard(slot)
        elif not self.cfg.credits:
            for worker in self.workers:
                self._write_record(worker, slot, rnd + 1, nxt)

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
        slot, rnd, worker, count, nxt, used, crc = (int(v) for v in msg)
        a = self.aggs[slot]
        if rnd != a.round or worker not in a.expected:
            raise ProtocolError(f"slot {slot}: record of worker {worker} for round {rnd} "
                                f"while round {a.round} expects {sorted(a.expected)}")
        if self.faults is not None:
            self.wins.win.Sync()
            spot = slot - int(self.lay.slot_agg[slot]) * self.cfg.spots
            got = self.wins.view(self.wins.rx_offset(a.local_agg, spot, worker))[:used]
            if zlib.crc32(got) != crc:     # cut short or corrupted in flight: ask for it again
                self._isend(np.array([slot, rnd, worker], dtype=np.int64), int(self.node_rank[worker]),
                            tags.SPOT_NACK)
                return
        a.arrived[worker] = (count, nxt)
        a.pointers[worker] = nxt
        self._try_aggregate(a)

    def _try_aggregate(self, a: AggSlot) -> None:
        if a.done or len(a.arrived) < len(a.expected):
            return
        tx = a.round % self.cfg.tx_spots
        if a.tx_pending[tx]:
            return                       # readers of this Tx spot are not all done yet
        self.watchdog.wait(a.tx_requests[tx], self._describe_scatter, a)
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
        used = self.rec.fill(txbuf, len(union), nxt, union, acc.view(np.uint8), a.slot, a.round)
        if self.cfg.credits and nxt < a.hi:
            for r in self.readers:
                self._isend(np.array([a.slot, a.round, nxt], dtype=np.int64), r, tags.SPOT_CREDIT)
        self._jitter()
        a.tx_requests[tx] = [self.comm.Isend(txbuf[:used], r, tags.SPOT_RESULT) for r in self.readers]
        a.tx_pending[tx] = set(self.readers)
        a.tx_round[tx] = a.round
        a.round += 1
        if nxt >= a.hi:
            a.done = True
        else:
            self._open_round(a, nxt)

    def _on_txcredit(self, source: int, msg: np.ndarray) -> None:
        slot, rnd, _ = (int(v) for v in msg)
        a = self.aggs[slot]
        tx = rnd % self.cfg.tx_spots
        if rnd != a.tx_round[tx] or source not in a.tx_pending[tx]:
            raise ProtocolError(f"slot {slot}: a Tx credit of rank {source} for round {rnd} that is not due")
        a.tx_pending[tx].discard(source)
        if a.done and not any(a.tx_pending):
            a.finished = True
        self._try_aggregate(a)

    # ---- the loop ------------------------------------------------------------------

    def _post(self, index: int) -> None:
        """(Re)post receive ``index`` of the event loop."""
        tag, source, buf = self.posted_info[index]
        self.posted[index] = self.comm.Irecv(buf, source, tag)

    def _expect(self, tag: int, source: int, buf: np.ndarray) -> None:
        self.posted_info.append((tag, source, buf))
        self.posted.append(MPI.REQUEST_NULL)
        self._post(len(self.posted) - 1)

    def _post_receives(self, active: list[int]) -> None:
        """One receive per (peer rank, kind of message) this rank can get (see the module docstring)."""
        lay, cfg = self.lay, self.cfg
        if self.aggs:                                  # records and Tx credits come from every rank
            for kind in (tags.SPOT_RECORD, tags.SPOT_TXCREDIT):
                for peer in range(self.comm.size):
                    self._expect(kind, peer, np.empty(CONTROL_WORDS[kind], dtype=np.int64))
        kinds = ([tags.SPOT_CREDIT] if cfg.credits else []) + ([tags.SPOT_NACK] if self.faults is not None else [])
        for kind in kinds:
            for peer in sorted(self.open_by_source):
                self._expect(kind, peer, np.empty(CONTROL_WORDS[kind], dtype=np.int64))
        for peer in sorted(self.open_by_source):
            self._expect(tags.SPOT_RESULT, peer, np.empty(self.rec.nbytes, dtype=np.uint8))
        if cfg.credits:        # one per slot and round that has a next one
            self.credits_due = sum(1 for s in active for _, _, nxt in self.planned[s] if nxt < int(lay.slot_hi[s]))

    def _cancel_receives(self) -> None:
        """Cancel the receives still posted; one that matched a message instead is a protocol error."""
        matched = []
        for req, (tag, source, _) in zip(self.posted, self.posted_info):
            if req == MPI.REQUEST_NULL:
                continue
            req.Cancel()
            status = MPI.Status()
            req.Wait(status)
            if not status.Is_cancelled():
                matched.append(f"tag {tag} from rank {source}")
        self.posted = []
        if matched:
            raise ProtocolError(f"{self._algo()} allreduce: messages nobody expected arrived: "
                                f"{', '.join(matched)}")

    def _handle(self, index: int) -> None:
        """Handle what receive ``index`` got, and post it again while more can come."""
        tag, source, buf = self.posted_info[index]
        if tag == tags.SPOT_RESULT:
            self._on_result(source, buf)
            if self.open_by_source[source]:
                self._post(index)
            return
        if tag == tags.SPOT_RECORD:
            self._on_record(buf)
        elif tag == tags.SPOT_NACK:
            self._on_nack(buf)
        elif tag == tags.SPOT_CREDIT:
            self._on_credit(buf)
        else:
            self._on_txcredit(source, buf)
        self._post(index)

    def run(self) -> None:
        lay, cfg = self.lay, self.cfg
        active = [int(s) for s in np.flatnonzero(lay.slot_hi > lay.slot_lo)]
        self.aggs: dict[int, AggSlot] = {}
        for s in active:
            agg = int(lay.slot_agg[s])
            if int(self.agg_rank[agg]) == self.rank:
                a = AggSlot(s, int(self.agg_local[agg]), int(lay.slot_lo[s]), int(lay.slot_hi[s]))
                a.pointers = np.full(self.n, -1, dtype=np.int64)
                a.tx_pending = [set() for _ in range(cfg.tx_spots)]
                a.tx_round = [-1] * cfg.tx_spots
                a.tx_requests = [[] for _ in range(cfg.tx_spots)]
                self._open_round(a, a.lo)
                self.aggs[s] = a
        self.workers = workers = range(self.lo, self.lo + self.work.shape[0])
        self.slot_rounds = {s: 0 for s in active}     # results received, per slot
        self.slots_left = set(active)                 # slots whose last result has not come
        self.open_by_source: dict[int, set[int]] = {}  # aggregator rank -> its slots in slots_left
        for s in active:
            self.open_by_source.setdefault(int(self.agg_rank[int(lay.slot_agg[s])]), set()).add(s)
        win = self.wins.win
        wd = self.watchdog
        fault = local_fault_hook(self.rank)
        win.Lock_all()
        try:
            # receives first: a record or result never waits in MPI's unexpected queue for them
            self._post_receives(active)
            if fault is not None:
                fault.at_step(0, f"{self._algo()} allreduce (spot protocol)")
            for s in active:
                for w in workers:
                    self._write_record(w, s, 0, int(lay.slot_lo[s]))
            while self.slots_left or self.credits_due > 0 or any(not a.finished for a in self.aggs.values()):
                self.events += 1
                if fault is not None:
                    fault.at_step(self.events, f"{self._algo()} allreduce (spot protocol)")
                ready = wd.wait_some(self.posted, self._describe_loop)
                if not ready:
                    raise ProtocolError(f"{self._algo()} allreduce: rank {self.rank} waits for a message "
                                        "but has no receive posted")
                for index in ready:       # each posted receive completes at most once per scan
                    self._handle(index)
            wd.wait(self.requests, self._describe_sends)
            for a in self.aggs.values():
                for reqs in a.tx_requests:
                    wd.wait(reqs, self._describe_scatter, a)
            self._cancel_receives()
        except CollectiveStalled:
            raise    # Unlock_all would wait for the stalled peer; the job is ending
        except BaseException:
            for req in self.posted:           # best effort: the call failed, its receives must go
                if req != MPI.REQUEST_NULL:
                    req.Cancel()
            with wd.blocking(self._describe_blocked, "win.Unlock_all of the spot windows", []):
                win.Unlock_all()
            raise
        with wd.blocking(self._describe_blocked, "win.Unlock_all of the spot windows", []):
            win.Unlock_all()
        flat = self.out.reshape(self.work.shape[0], -1)[:, :self.count]
        self.work[:] = flat

    # ---- watchdog messages (built only when a wait times out) -----------------------

    def _algo(self) -> str:
        return self.cfg.name

    def _local_nodes(self) -> list[int]:
        return list(range(self.lo, self.lo + self.work.shape[0]))

    def _stall(self, elapsed: float, waiting: list[int], what: str, ranks: list[int]) -> str:
        return (f"{self._algo()} allreduce: {nodes_text(waiting or self._local_nodes())} (rank {self.rank}) "
                f"waited {elapsed:.1f} s in the spot protocol (event {self.events}) {what}; "
                f"{culprit_text([r for r in ranks if r != self.rank] or ranks)}")

    def _describe_loop(self, elapsed: float, pending: list[int]) -> str:
        """What every local node still waits for, and from which node and rank."""
        waiting, items, credits, ranks = [], [], [], []
        for a in self.aggs.values():
            agg = int(self.lay.slot_agg[a.slot])
            agg_node = int(self.lay.aggregator_node[agg])
            if not a.done:
                missing = sorted(a.expected - set(a.arrived))
                if missing:
                    peers = sorted({int(self.node_rank[w]) for w in missing})
                    ranks += peers
                    waiting.append(agg_node)
                    items.append(f"the records of slot {a.slot} round {a.round} from {nodes_text(missing)} "
                                 f"({ranks_text(peers)})")
                    continue
            if any(a.tx_pending):
                waiting.append(agg_node)
                owed = sorted(set().union(*a.tx_pending))
                ranks += owed
                rounds = sorted(a.tx_round[tx] for tx, p in enumerate(a.tx_pending) if p)
                credits.append(f"the round {'/'.join(map(str, rounds))} Tx credit(s) of slot {a.slot} from "
                               f"{ranks_text(owed)}")
        by_rank: dict[int, list[int]] = {}
        for slot in sorted(self.slots_left):
            by_rank.setdefault(int(self.agg_rank[int(self.lay.slot_agg[slot])]), []).append(slot)
        for agg_rank, slots in sorted(by_rank.items()):
            agg_nodes = [int(self.lay.aggregator_node[int(self.lay.slot_agg[sl])]) for sl in slots]
            rounds = sorted({self.slot_rounds[sl] for sl in slots})
            ranks.append(agg_rank)
            waiting += self._local_nodes()
            rnd = f"{rounds[0]}" if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]}"
            items.append(f"the round {rnd} result of {listing('slot', slots)} from aggregator "
                         f"{nodes_text(agg_nodes)} (rank {agg_rank})")
        if self.credits_due and not by_rank:
            agg_ranks = sorted({int(self.agg_rank[int(self.lay.slot_agg[sl])]) for sl in self.slot_rounds})
            ranks += agg_ranks
            waiting += self._local_nodes()
            items.append(f"{self.credits_due} Rx credit(s) from the aggregators ({ranks_text(agg_ranks)})")
        items += credits
        if len(items) > 3:
            items = items[:3] + [f"{len(items) - 3} more"]
        what = "for " + "; ".join(items) if items else "for a message"
        return self._stall(elapsed, waiting, what, ranks)

    def _describe_scatter(self, elapsed: float, pending: list[int], a: AggSlot) -> str:
        agg_node = int(self.lay.aggregator_node[int(self.lay.slot_agg[a.slot])])
        ranks = sorted({self.readers[i] for i in pending})     # one send per reader rank, in rank order
        workers = [w for w in range(self.n) if int(self.node_rank[w]) in ranks]
        return self._stall(elapsed, [agg_node], f"for the result of slot {a.slot} to reach "
                           f"{nodes_text(workers)} ({ranks_text(ranks)})", ranks)

    def _describe_sends(self, elapsed: float, pending: list[int]) -> str:
        return self._stall(elapsed, [], f"for {len(pending)} protocol message(s) to be received", [])

    def _describe_flush(self, elapsed: float, slot: int, agg: int, target: int) -> str:
        agg_node = int(self.lay.aggregator_node[agg])
        return self._describe_blocked(elapsed, f"win.Flush of a record for slot {slot} to aggregator "
                                      f"node {agg_node}", [target])

    def _describe_blocked(self, elapsed: float, what: str, ranks: list[int]) -> str:
        target = f" ({ranks_text(ranks)})" if ranks else ""
        return self._stall(elapsed, [], f"in {what}{target}", ranks)


def gather_masks(comm: MPI.Comm, local: np.ndarray, bounds: np.ndarray, nblocks: int) -> np.ndarray:
    """Every node's block mask on every rank (one Allgatherv of packed bits)."""
    packed = np.packbits(local, axis=1)
    width = packed.shape[1]
    counts = [int(bounds[r + 1] - bounds[r]) * width for r in range(comm.size)]
    everything = np.empty(sum(counts), dtype=np.uint8)
    comm.Allgatherv(np.ascontiguousarray(packed).reshape(-1), [everything, counts])
    return np.unpackbits(everything.reshape(-1, width), axis=1, count=nblocks).astype(bool)
