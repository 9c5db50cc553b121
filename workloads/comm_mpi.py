"""The serving backend with real data on MPI ranks (see workloads/comm_backends.py for the group mapping
and the ``real_data`` policy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mpi4py import MPI

from nicemu.collectives import Emulator, Timing, run_p2p
from nicemu.errors import WorkloadError
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus, node_blocks
from nicemu.workloads.comm_backends import (
    DTYPE,
    PATTERN_PERIOD,
    CommStats,
    _as_cost,
    _Backend,
    dense_input,
    dense_reference,
)
from nicemu.workloads.embedding_shards import batch_token_ids, embedding_rows, row_owner
from nicemu.workloads.iteration_time import CommCost
from nicemu.workloads.models import Model
from nicemu.workloads.traffic import TrafficRecord


class MpiComm(_Backend):
    """Real data on MPI ranks: one Emulator per TP group on the ranks hosting it (see the module docstring)."""

    def __init__(self, comm, topology: Torus, profile: Profile, model: Model, seed: int,
                 real_data: str = "first") -> None:
        super().__init__(topology, profile, model, seed)
        if comm.size > topology.nodes:
            raise WorkloadError(f"{comm.size} ranks for {topology.nodes} nodes: run with at most "
                                f"{topology.nodes} ranks")
        if real_data not in ("first", "all"):
            raise WorkloadError(f"--real-data must be first or all, got {real_data!r}")
        self.comm, self.real_data = comm, real_data
        self.bounds = node_blocks(topology.nodes, comm.size)
        self.node_rank = np.searchsorted(self.bounds, np.arange(topology.nodes), side="right") - 1
        self._emulators: dict[tuple[int, ...], Emulator | None] = {}

    def reset_stats(self) -> None:
        """Fresh totals for the next algorithm (the emulators and the memo are kept)."""
        self.stats = CommStats()

    def free(self) -> None:
        for emu in self._emulators.values():
            if emu is not None:
                emu.free()
        self._emulators.clear()

    def emulator(self, nodes: tuple[int, ...]) -> Emulator | None:
        """The group's Emulator on this rank, or None if this rank hosts none of its nodes (collective).

        Dense and sparse calls of a group share it: every protocol receives from named sources with
        tags of its own (collectives/mpi/tags.py), so a fast rank's next call cannot take a message
        of the call a slower rank is still in.
        """
        key = nodes
        if key not in self._emulators:
            ranks = sorted({int(self.node_rank[n]) for n in nodes})
            sub = self.comm.Create(self.comm.group.Incl(ranks))
            self._emulators[key] = None
            if sub != MPI.COMM_NULL:
                self._emulators[key] = Emulator(sub, self.group(nodes), self.profile)
                sub.Free()
        return self._emulators[key]

    # ---- one record with real data ----------------------------------------------------

    def _check(self, got: np.ndarray, want: np.ndarray) -> None:
        """Exact comparison; ``want`` may be one period of a periodic reference (it is tiled over ``got``)."""
        self.stats.checked_elements += got.size
        want16 = want if want.dtype == DTYPE else want.astype(DTYPE)
        if want16 is not want and not np.array_equal(want16.astype(np.float64), want):
            raise RuntimeError(f"reference not exact in {DTYPE.name}")   # inputs are chosen so that it always is
        period = want16.size
        whole = got.size - got.size % period
        self.stats.wrong += int(np.count_nonzero(got[:whole].reshape(-1, period) != want16))
        self.stats.wrong += int(np.count_nonzero(got[whole:] != want16[:got.size - whole]))

    def _run_dense(self, emu, rec: TrafficRecord) -> Timing:
        count = self.count_of(rec)
        local = [rec.nodes[i] for i in emu.node_range]
        work = np.stack([dense_input(n, count, self.seed) for n in local])
        t = emu.run_inplace(rec.collective, work, "sum", rec.algo)
        if rec.collective == "alltoall":    # block j of node i becomes block i of node j
            p = len(rec.nodes)
            sent = np.stack([dense_input(n, count, self.seed) for n in rec.nodes]).reshape(p, p, -1)
            for row, j in zip(work, emu.node_range):
                self._check(row, sent[:, j, :].reshape(-1).astype(np.float64))
            return t
        ref = dense_reference(rec.nodes, min(count, PATTERN_PERIOD), self.seed)   # one period
        for row in work:
            self._check(row, ref)
        return t

    def _run_embedding(self, emu, rec: TrafficRecord) -> Timing:
        """Each TP rank contributes the embedding rows of the tokens in its vocabulary shard, zeros elsewhere."""
        tp, h, vocab = len(rec.nodes), self.model.hidden, self.model.vocab
        ids = batch_token_ids(self.tokens_of(rec), vocab, self.seed)
        owner = row_owner(ids, vocab, tp)
        full = embedding_rows(ids, h, DTYPE)
        work = np.zeros((emu.local_nodes, full.size), dtype=DTYPE)
        for i, pos in enumerate(emu.node_range):
            view = work[i].reshape(-1, h)
            view[owner == pos] = full[owner == pos]
        t = emu.run_inplace("allreduce", work, "sum", rec.algo)   # sparse algorithms: default spot options
        ref = full.reshape(-1)      # the table's rows for every token: what the sum must give
        for row in work:
            self._check(row, ref)
        return t

    def _run_p2p(self, rec: TrafficRecord) -> Timing:
        pairs = self.pairs(rec)
        buffers = {}
        for a, _ in pairs:
            if self.node_rank[a] == self.comm.rank:
                buffers[a] = np.random.default_rng([self.seed, 11, a]).integers(0, 256, rec.bytes, dtype=np.uint8)
        for _, b in pairs:
            if self.node_rank[b] == self.comm.rank:
                buffers[b] = np.zeros(rec.bytes, dtype=np.uint8)
        t = run_p2p(self.comm, self.node_rank, self.topology, self.profile, pairs, buffers,
                    rec.algo.removeprefix("p2p-"))
        for a, b in pairs:
            if self.node_rank[b] == self.comm.rank:
                want = np.random.default_rng([self.seed, 11, a]).integers(0, 256, rec.bytes, dtype=np.uint8)
                self.stats.checked_elements += rec.bytes
                self.stats.wrong += int(np.count_nonzero(buffers[b] != want))
        return t

    def run_record(self, rec: TrafficRecord) -> CommCost | None:
        """Run one record with real data; None on ranks that host none of its nodes (they skip it)."""
        if rec.collective == "p2p":          # every rank joins: the ends move data, all agree on the time
            self.stats.real_runs += 1
            return _as_cost(self._run_p2p(rec))
        emu = self.emulator(rec.nodes)
        self.stats.real_runs += 1
        if emu is None:
            return None
        if rec.what == "embedding":
            return _as_cost(self._run_embedding(emu, rec))
        return _as_cost(self._run_dense(emu, rec))

    def iteration_cost(self, iteration: int, records: Sequence[TrafficRecord]) -> CommCost:
        """Run what is new (or everything, with real_data="all"), then agree on the times in one Allreduce."""
        groups = self.unique(records)
        if self.real_data == "all":
            todo = list(records)
        else:
            new: dict[tuple, TrafficRecord] = {}        # attn_out and mlp_out share a key: run it once
            for k, rec, _ in groups:
                if k not in self.memo:
                    new.setdefault(k, rec)
            todo = list(new.values())
        agreed = np.zeros((len(todo), 3))
        if todo:
            vals = np.zeros_like(agreed)
            for i, rec in enumerate(todo):
                c = self.run_record(rec)
                if c is not None:
                    vals[i] = (c.emulated_us, c.host_busy_us, c.wire_bytes)
            self.comm.Allreduce(vals, agreed, op=MPI.MAX)
        resolved = [CommCost(float(v[0]), float(v[1]), int(v[2])) for v in agreed]
        if self.real_data == "all":   # every call ran; same keys give the same times, so sum them as grouped
            got: dict[tuple, CommCost] = {}
            for rec, c in zip(todo, resolved):
                if got.setdefault(self.key(rec), c) != c:   # the premise of real_data="first"
                    raise RuntimeError(f"iteration {iteration}: two {rec.what} {rec.collective} calls of "
                                       f"{rec.bytes} B with {rec.algo} took different emulated times")
            return self._total(groups, [got[k] for k, _, _ in groups])
        self.memo.update((self.key(rec), c) for rec, c in zip(todo, resolved))
        return self._total(groups, [self.memo[k] for k, _, _ in groups])

    def totals(self) -> tuple[int, int, int]:
        """(real-data calls, checked elements, wrong elements) summed over ranks (collective)."""
        mine = np.array([self.stats.checked_elements, self.stats.wrong], dtype=np.int64)
        out = np.empty_like(mine)
        self.comm.Allreduce(mine, out, op=MPI.SUM)
        return self.stats.real_runs, int(out[0]), int(out[1])
