"""Timing every collective and transfer of a serving run on the emulator: model or MPI executor.

Both backends answer ``iteration_cost(iteration, records)`` for the records
:func:`nicemu.workloads.traffic.iteration_traffic` issues, and both give the same
numbers for the same records (the emulator's two executors agree exactly).

Group mapping. A TP group is a set of consecutive node ids (TP innermost, as
Megatron and vLLM number ranks). Its collectives run on the *group topology*:

* the whole topology when the group is all of it (PP = 1, not disaggregated);
* else the sub-torus of the trailing dimensions whose sizes multiply to the
  group size (``torus:2x8`` with TP 8: each stage is one ``ring:8`` row with
  that dimension's links), because row-major ids make those nodes contiguous;
* on a switch, ``switch:TP`` (its nodes keep their own ports);
* else ``ring:TP`` with the last dimension's links: a group that is an arc of
  a longer ring is emulated as if it had its own wrap-around link (an
  approximation; a torus whose trailing dimensions equal TP avoids it).

Point-to-point transfers (PP activations, KV cache) run on the whole topology
(collectives/schedules/p2p.py), so their routes and shared links are real.

What runs with real data (``MpiComm``, workloads/comm_mpi.py). Ranks host nodes in contiguous
blocks; each group's collectives run on a sub-communicator of the ranks that
host its nodes, through an :class:`~nicemu.collectives.Emulator` on the group
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

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

from nicemu.collectives import COLLECTIVES, Timing, model_sparse, model_time, p2p_time, sparse_config
from nicemu.collectives.model.sparse_flows import SparseFlows, sparse_call_flows
from nicemu.collectives.registry import REGISTRY, get, is_sparse
from nicemu.nic.profile import Profile
from nicemu.nic.telemetry import RESOURCES
from nicemu.topologies import Torus, switch
from nicemu.workloads.embedding_shards import batch_token_ids, embedding_block_mask
from nicemu.workloads.iteration_time import CommCost
from nicemu.workloads.models import Model
from nicemu.workloads.traffic import TrafficRecord

DTYPE = np.dtype(ml_dtypes.bfloat16)   # the models' 2-byte activations, as on the accelerators
PCIE_READ = RESOURCES.index("pcie_read")
PATTERN_PERIOD = 4099              # dense inputs repeat with this (prime) period, see dense_input


def algos_for(algo: str, gpudirect: bool | None = None) -> tuple[str, str, str, str]:
    """(per-layer AllReduce, embedding AllReduce, all-to-all, p2p label) of a ``--algo`` entry.

    A dense algorithm without an all-to-all (``ring-pipelined``) moves its all-to-alls with the first
    registered algorithm on the same engine that has one (``ring``). Point-to-point transfers take the
    algorithm's engine's path unless the hardware decides (the profile's ``nic.gpudirect``): true, the NIC
    path (GPUDirect RDMA); false, the host path.
    """
    entry = get(algo)
    dense = entry.dense_partner or algo
    a2a = dense
    if "alltoall" not in get(dense).collectives:
        a2a = next(a.name for a in REGISTRY.values() if a.scheduled and a.engine == get(dense).engine
                   and "alltoall" in a.collectives)
    path = entry.engine if gpudirect is None else ("nic" if gpudirect else "host")
    return dense, algo, a2a, f"p2p-{path}"


def group_topology(topology: Torus, nodes: Sequence[int]) -> Torus:
    """The topology a TP group's collectives run on (see the module docstring).

    With several ranks per node (``--ranks-per-node P``, ``nodes`` are then ranks): a group inside one
    node runs on that node alone (``Torus.single_node``: the intra-node phases, NVLink or host memory);
    a group of whole nodes on the group topology of those nodes, with their P ranks each (the
    hierarchical AllReduce of collectives/schedules/hierarchical.py; an EP group's all-to-all, whose ranks
    are numbered the same way, collectives/schedules/hierarchical_alltoall.py)."""
    n = len(nodes)
    if n == topology.nodes:
        return topology
    p = topology.ranks_per_node
    if p > 1:
        if n <= p:
            return Torus.single_node(n)
        node_ids = sorted({v // p for v in nodes})
        return group_topology(topology.node_topology, node_ids).with_ranks_per_node(p)
    if topology.switched:       # any nodes of a switch: a smaller switch, one port each
        return switch(n)
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
        self._last: tuple = ((), ())        # (groups, costs) of the iteration just timed
        self._pcie: dict[tuple, float] = {}

    def pcie_read_us(self, rec: TrafficRecord) -> float:
        """How long the record keeps its busiest node's PCIe busy in the host-to-device direction (the NIC's
        DMA reads from host memory, docs/model.md §20), from the model executor's telemetry, which both
        executors share bit for bit. Dense AllReduce and all-to-all only; sparse calls and transfers
        count 0."""
        k = self.key(rec)
        t = self._pcie.get(k)
        if t is None:
            t = 0.0
            if rec.collective in ("allreduce", "alltoall") and not is_sparse(rec.algo):
                stats = model_time(rec.collective, rec.algo, self.group(rec.nodes), self.profile, self.count_of(rec),
                                   DTYPE, telemetry=True).telemetry
                t = float(stats.resource_busy_us[PCIE_READ].max()) if stats is not None else 0.0
            self._pcie[k] = t
        return t

    def iteration_pcie_us(self, records: Sequence[TrafficRecord]) -> float:
        """The collectives' host-to-device PCIe time in one pass (records in issue order)."""
        return sum(n * self.pcie_read_us(rec) for _, rec, n in self.unique(records))

    def stage_pcie_us(self, records: Sequence[TrafficRecord], groups: Sequence[Collection[int]]) -> list[float]:
        """:meth:`iteration_pcie_us` per pipeline stage: a record counts for the stage whose TP group
        (``groups``, one per stage) holds its first node; each stage's PCIe links are its own."""
        out = [0.0] * len(groups)
        for _, rec, n in self.unique(records):
            t = self.pcie_read_us(rec)
            if t:
                out[next(i for i, g in enumerate(groups) if rec.nodes[0] in g)] += n * t
        return out

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
        self._last = (groups, costs)
        return CommCost(comm, host, wire)

    def last_by_what(self) -> dict[str, float]:
        """Emulated microseconds of the iteration just timed, per ``what`` (attn_out, embedding, ...)."""
        out: dict[str, float] = {}
        for (_, rec, n), c in zip(*self._last):
            out[rec.what] = out.get(rec.what, 0.0) + n * c.emulated_us
        return out

    def last_costs(self, records: Sequence[TrafficRecord]) -> list[CommCost]:
        """The cost of each of ``records`` (the list just timed by ``iteration_cost``), in issue order."""
        by_key = {k: c for (k, _, _), c in zip(*self._last)}
        key = self.key
        return [by_key[key(rec)] for rec in records]


class ModelComm(_Backend):
    """Timing only: ``nicemu.collectives.model_time``, the sparse model and ``p2p_time``, memoised by key."""

    def model_cost(self, rec: TrafficRecord) -> CommCost:
        if rec.collective == "p2p":
            return _as_cost(p2p_time(self.topology, self.profile, self.pairs(rec), rec.bytes,
                                     rec.algo.removeprefix("p2p-")))
        if is_sparse(rec.algo):
            return _as_cost(model_sparse(*self.sparse_masks(rec), self.profile, DTYPE.itemsize))
        group = self.group(rec.nodes)
        return _as_cost(model_time(rec.collective, rec.algo, group, self.profile, self.count_of(rec), DTYPE))

    def sparse_masks(self, rec: TrafficRecord) -> tuple:
        """A sparse call's configuration and its nodes' non-zero blocks: the embedding's from the batch's
        tokens, an activation's all non-zero."""
        nodes = self.group(rec.nodes).nodes
        cfg = sparse_config(rec.algo, nodes)
        if rec.what == "embedding":
            ids = batch_token_ids(self.tokens_of(rec), self.model.vocab, self.seed)
            return cfg, embedding_block_mask(ids, self.model.vocab, nodes, self.model.hidden, cfg.block_size)
        # activations have no zero blocks (dense_input never yields an all-zero block)
        return cfg, np.ones((nodes, -(-self.count_of(rec) // cfg.block_size)), dtype=bool)

    def sparse_flows(self, rec: TrafficRecord) -> SparseFlows:
        """A sparse call's messages alone, as flows for the shared fabric (collectives/model/sparse_flows.py),
        from the same blocks the model times it with."""
        return sparse_call_flows(*self.sparse_masks(rec), self.profile, DTYPE.itemsize)

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
    """A node's activations: -1, 0 or 1, repeating with period PATTERN_PERIOD.

    No partial sum of a group of up to 256 nodes leaves the integers bfloat16 holds exactly
    (|x| <= 256), so the result can be compared exactly in any reduction order.
    """
    base = np.random.default_rng([seed, 7, node]).integers(-1, 2, PATTERN_PERIOD)
    return np.resize(base, count).astype(DTYPE)


def dense_reference(nodes: Sequence[int], count: int, seed: int) -> np.ndarray:
    """The sum over the group in float64, from the inputs' definition (not from any algorithm).

    It repeats with the inputs' period, so one period (count = PATTERN_PERIOD) checks any length.
    """
    total = np.zeros(PATTERN_PERIOD)
    for n in nodes:
        total += np.random.default_rng([seed, 7, n]).integers(-1, 2, PATTERN_PERIOD)
    return np.resize(total, count)
