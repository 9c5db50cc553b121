"""Timing every collective and transfer of a serving run on the emulator: model or MPI executor.

Both backends answer ``iteration_cost(iteration, records)`` for the records
:func:`workloads.traffic.iteration_traffic` issues, and both give the same
numbers for the same records (the emulator's two executors agree exactly).

Group mapping. A TP group is a set of consecutive node ids (DESIGN §1, TP
innermost). Its collectives run on the *group topology*:

* the whole topology when the group is all of it (PP = 1, not disaggregated);
* else the sub-torus of the trailing dimensions whose sizes multiply to the
  group size (``torus:2x8`` with TP 8: each stage is one ``ring:8`` row with
  that dimension's links), because row-major ids make those nodes contiguous;
* else ``ring:TP`` with the last dimension's links: a group that is an arc of
  a longer ring is emulated as if it had its own wrap-around link (an
  approximation; a torus whose trailing dimensions equal TP avoids it).

Point-to-point transfers (PP activations, KV cache) run on the whole topology
(collectives/p2p.py), so their routes and shared links are real.

What runs with real data (``MpiComm``). Ranks host nodes in contiguous
blocks; each group's collectives run on a sub-communicator of the ranks that
host its nodes, through an :class:`~collectives.Emulator` on the group
topology, and ranks outside the group skip them. A collective's emulated time
is a deterministic function of (collective, algorithm, size, group topology,
and for the sparse embedding the block pattern). With ``real_data="first"``
(the default) the first occurrence of every distinct one runs with real data,
is checked element by element against an independent float64 reference, and
later repeats reuse its time; with ``real_data="all"`` every single call
moves data. Once per iteration with a new key, the ranks agree on the times
with one small Allreduce, so every rank schedules identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from collectives import COLLECTIVES, Emulator, model_time
from collectives.algorithms import SPARSE
from collectives.executor_model import Timing
from collectives.executor_mpi import node_blocks
from collectives.omniccl import model_sparse, sparse_config
from collectives.p2p import p2p_time, run_p2p
from nic.profile import Profile
from topologies import Torus
from workloads.embedding_shards import batch_token_ids, embedding_block_mask, embedding_rows, row_owner
from workloads.errors import WorkloadError
from workloads.iteration_time import CommCost
from workloads.models import Model
from workloads.traffic import TrafficRecord

DTYPE = np.dtype("float16")        # 2-byte activations (bf16 on the accelerators; same size on the wire)
PATTERN_PERIOD = 4099              # dense inputs repeat with this (prime) period, see dense_input
#: the dense algorithm that runs the per-layer AllReduces when --algo is a sparse one (README "Serving")
DENSE_PARTNER = {"omniccl": "directreduce", "omniccl-cpu": "ring", "omnireduce": "ring"}
#: which p2p path (collectives/p2p.py) each algorithm's transfers take
P2P_PATH = {"ring": "host", "directreduce": "nic", "omniccl": "nic", "omniccl-cpu": "host", "omnireduce": "host"}


def algos_for(algo: str) -> tuple[str, str, str, str]:
    """(per-layer AllReduce, embedding AllReduce, all-to-all, p2p label) of a ``--algo`` entry."""
    dense = DENSE_PARTNER.get(algo, algo)
    return dense, algo, dense, f"p2p-{P2P_PATH[algo]}"


def group_topology(topology: Torus, nodes: Sequence[int]) -> Torus:
    """The topology a TP group's collectives run on (see the module docstring)."""
    n = len(nodes)
    if n == topology.nodes:
        return topology
    size = 1
    for k in range(topology.ndim - 1, 0, -1):
        size *= topology.shape[k]
        if size == n:
            return Torus(topology.shape[k:], dim_links=topology.dim_links[k:])
        if size > n:
            break
    return Torus((n,), name=f"ring:{n}", dim_links=(topology.dim_links[-1],))


def has_alltoall() -> bool:
    return "alltoall" in COLLECTIVES


@dataclass
class CommStats:
    """Totals over a run, per kind of traffic (for the report) and real-data bookkeeping."""

    embedding_wire_bytes: int = 0
    embedding_us: float = 0.0
    layer_wire_bytes: int = 0
    p2p_us: float = 0.0
    real_runs: int = 0          # calls that moved real data (on this rank's groups, counted on all ranks)
    checked_elements: int = 0
    wrong: int = 0
    per_what_us: dict[str, float] = field(default_factory=dict)

    def add(self, rec: TrafficRecord, cost: CommCost, n: int = 1) -> None:
        """Count ``n`` records like ``rec`` that each cost ``cost``."""
        self.per_what_us[rec.what] = self.per_what_us.get(rec.what, 0.0) + n * cost.emulated_us
        if rec.what == "embedding":
            self.embedding_wire_bytes += n * cost.wire_bytes
            self.embedding_us += n * cost.emulated_us
        elif rec.collective == "p2p":
            self.p2p_us += n * cost.emulated_us
        else:
            self.layer_wire_bytes += n * cost.wire_bytes


def _as_cost(t: Timing) -> CommCost:
    return CommCost(float(t.emulated_us), float(t.host_busy_us), int(t.wire_bytes))


class _Backend:
    """Shared part: record keys, the memo and the per-iteration sum."""

    def __init__(self, topology: Torus, profile: Profile, model: Model, seed: int) -> None:
        self.topology, self.profile, self.model, self.seed = topology, profile, model, seed
        self.memo: dict[tuple, CommCost] = {}
        self.stats = CommStats()
        self._groups: dict[tuple[int, ...], Torus] = {}
        self._unique: dict[int, tuple] = {}

    def group(self, nodes: tuple[int, ...]) -> Torus:
        topo = self._groups.get(nodes)
        if topo is None:
            topo = self._groups[nodes] = group_topology(self.topology, nodes)
        return topo

    def key(self, rec: TrafficRecord) -> tuple:
        """What the emulated time depends on (the iteration index does not)."""
        return (rec.collective, rec.algo, rec.bytes, rec.nodes, rec.what == "embedding")

    def tokens_of(self, rec: TrafficRecord) -> int:
        return rec.bytes // (self.model.hidden * DTYPE.itemsize)

    def count_of(self, rec: TrafficRecord) -> int:
        """Elements per node: the whole tensor for AllReduce; for all-to-all each node's row, which is its
        share of the record's total (``bytes`` counts the whole EP group, workloads/traffic.py)."""
        if rec.collective == "alltoall":
            return rec.bytes // (len(rec.nodes) * DTYPE.itemsize)
        return rec.bytes // DTYPE.itemsize

    def pairs(self, rec: TrafficRecord) -> list[tuple[int, int]]:
        half = len(rec.nodes) // 2
        return list(zip(rec.nodes[:half], rec.nodes[half:]))

    def unique(self, records: Sequence[TrafficRecord]) -> list[tuple[tuple, TrafficRecord, int]]:
        """(key, first record, how many) per distinct (key, what), in first-issue order; cached per list.

        The timer hands the same list object for every iteration of the same batch shape, so a decode
        iteration's 161 records collapse to 2 keys once (the list is kept alive by the cache entry).
        """
        hit = self._unique.get(id(records))
        if hit is not None and hit[0] is records:
            return hit[1]
        counts: dict[tuple, list] = {}
        for rec in records:
            k = self.key(rec)
            g = (k, rec.what)               # attn_out and mlp_out share a time but are reported apart
            if g in counts:
                counts[g][2] += 1
            else:
                counts[g] = [k, rec, 1]
        out = [tuple(v) for v in counts.values()]
        if len(self._unique) > 8192:
            self._unique.clear()
        self._unique[id(records)] = (records, out)
        return out

    def _total(self, groups: Sequence[tuple[tuple, TrafficRecord, int]], costs: Sequence[CommCost]) -> CommCost:
        """Sum of every record's cost (each distinct one times its count), and the run's totals."""
        comm = host = 0.0
        wire = 0
        for (_, rec, n), c in zip(groups, costs):
            comm += n * c.emulated_us
            host += n * c.host_busy_us
            wire += n * c.wire_bytes
            self.stats.add(rec, c, n)
        return CommCost(comm, host, wire)


class ModelComm(_Backend):
    """Timing only: ``collectives.model_time``, the sparse model and ``p2p_time``, memoised by key."""

    def model_cost(self, rec: TrafficRecord) -> CommCost:
        if rec.collective == "p2p":
            return _as_cost(p2p_time(self.topology, self.profile, self.pairs(rec), rec.bytes,
                                     rec.algo.removeprefix("p2p-")))
        group = self.group(rec.nodes)
        if rec.algo in SPARSE:
            cfg = sparse_config(rec.algo, group.nodes)
            if rec.what == "embedding":
                ids = batch_token_ids(self.tokens_of(rec), self.model.vocab, self.seed)
                masks = embedding_block_mask(ids, self.model.vocab, group.nodes, self.model.hidden, cfg.block_size)
            else:           # activations have no zero blocks (dense_input never yields an all-zero block)
                masks = np.ones((group.nodes, -(-self.count_of(rec) // cfg.block_size)), dtype=bool)
            return _as_cost(model_sparse(cfg, masks, self.profile, DTYPE.itemsize))
        return _as_cost(model_time(rec.collective, rec.algo, group, self.profile, self.count_of(rec), DTYPE))

    def iteration_cost(self, iteration: int, records: Sequence[TrafficRecord]) -> CommCost:
        groups = self.unique(records)
        costs = []
        for k, rec, _ in groups:
            c = self.memo.get(k)
            if c is None:
                c = self.memo[k] = self.model_cost(rec)
            costs.append(c)
        return self._total(groups, costs)


def dense_input(node: int, count: int, seed: int) -> np.ndarray:
    """A node's activations: small integers (|x| <= 4) repeating with period PATTERN_PERIOD.

    Integers keep every float16 partial sum exact, so the result can be compared exactly.
    """
    base = np.random.default_rng([seed, 7, node]).integers(-4, 5, PATTERN_PERIOD)
    return np.resize(base, count).astype(DTYPE)


def dense_reference(nodes: Sequence[int], count: int, seed: int) -> np.ndarray:
    """The sum over the group in float64, from the inputs' definition (not from any algorithm).

    It repeats with the inputs' period, so one period (count = PATTERN_PERIOD) checks any length.
    """
    total = np.zeros(PATTERN_PERIOD)
    for n in nodes:
        total += np.random.default_rng([seed, 7, n]).integers(-4, 5, PATTERN_PERIOD)
    return np.resize(total, count)


class MpiComm(_Backend):
    """Real data on MPI ranks: one Emulator per TP group on the ranks hosting it (see the module docstring)."""

    def __init__(self, comm: MPI.Comm, topology: Torus, profile: Profile, model: Model, seed: int,
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
        self._emulators: dict[tuple[tuple[int, ...], bool], Emulator | None] = {}

    def reset_stats(self) -> None:
        """Fresh totals for the next algorithm (the emulators and the memo are kept)."""
        self.stats = CommStats()

    def free(self) -> None:
        for emu in self._emulators.values():
            if emu is not None:
                emu.free()
        self._emulators.clear()

    def emulator(self, nodes: tuple[int, ...], sparse: bool = False) -> Emulator | None:
        """The group's Emulator on this rank, or None if this rank hosts none of its nodes (collective).

        Sparse calls get their own Emulator (own communicator): the spot protocol receives from any
        source and tag, so a fast rank's next dense call must not be able to reach it.
        """
        key = (nodes, sparse)
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
            raise RuntimeError("reference not exact in float16")   # inputs are chosen so that it always is
        period = want16.size
        whole = got.size - got.size % period
        self.stats.wrong += int(np.count_nonzero(got[:whole].reshape(-1, period) != want16))
        self.stats.wrong += int(np.count_nonzero(got[whole:] != want16[:got.size - whole]))

    def _run_dense(self, emu: Emulator, rec: TrafficRecord) -> Timing:
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

    def _run_embedding(self, emu: Emulator, rec: TrafficRecord) -> Timing:
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
        emu = self.emulator(rec.nodes, rec.algo in SPARSE)
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
