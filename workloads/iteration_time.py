"""Duration of one serving iteration: roofline compute plus the emulated time of its collectives.

``iteration_us = compute_us + sum(comm_us of every collective it issues)``.
Compute and communication do not overlap: in TP inference each AllReduce sits
on the critical path between two GEMMs, and a pipeline stage waits for the
previous stage's activations. The stages of one batch run one after the other.

The caller passes the function that times one
:class:`~nicemu.workloads.traffic.TrafficRecord`: ``nicemu.collectives.model_time`` for the
model executor, or ``Emulator.run_inplace`` on real data. ``workloads`` may
import ``collectives`` (workloads sit above it), but taking the function as an argument
keeps this module free of MPI, testable alone, and lets the CLI pick the
executor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np

from nicemu.workloads.accelerators import Accelerator
from nicemu.workloads.batching import Iteration
from nicemu.workloads.compute import IterationCompute, iteration_compute
from nicemu.workloads.kv_restore import restore_in_pass
from nicemu.workloads.models import Model
from nicemu.workloads.parallelism import Parallelism
from nicemu.workloads.traffic import TrafficRecord, iteration_traffic


@dataclass(frozen=True)
class CommCost:
    """What the emulator reports for one collective or transfer."""

    emulated_us: float
    host_busy_us: float = 0.0   # host CPU time spent on it (0 on the NIC paths)
    wire_bytes: int = 0


@dataclass(frozen=True)
class IterationCost:
    index: int
    compute_us: float
    comm_us: float
    host_comm_us: float
    wire_bytes: int
    collectives: int
    comm_by_what: dict[str, float] = field(default_factory=dict)   # comm_us split by record ``what``
    restore_us: float = 0.0       # --prefix-reuse: what bringing prefixes' KV back adds to the pass
    pcie_kv_us: float = 0.0       # ... its PCIe time (host to device), and
    pcie_nic_us: float = 0.0      # the collectives' PCIe time in the same direction (tracked with a restore)
    restore_alone_us: float = 0.0  # what the restore would add with the NIC leaving PCIe idle

    @property
    def total_us(self) -> float:
        return self.compute_us + self.comm_us + self.restore_us


@dataclass(frozen=True)
class PassCalls:
    """Where a pass's calls sit alone: call ``i`` starts ``swap_us + offset_us[i]`` after the pass starts and
    takes ``cost_us[i]`` (a shared fabric moves them, workloads/serve_fabric.py)."""

    index: int
    swap_us: float
    offset_us: np.ndarray
    cost_us: np.ndarray
    records: list[TrafficRecord]


def call_offsets(records: Sequence[TrafficRecord], compute: IterationCompute, costs: np.ndarray) -> np.ndarray:
    """When each record starts in its pass (µs after the pass's compute begins), compute and calls in issue
    order: the embedding AllReduce after the lookup; per layer ``attn_out`` after the attention block
    (QKV, attention, output projection), ``dispatch`` after the router, ``combine``, ``mlp_out`` and a stage's
    ``activations`` after the whole layer; every call after the ones issued before it."""
    emb, layer = compute.embedding.time_us, compute.layer_us
    router = compute.op_us("router")
    attn = layer - compute.op_us("mlp_up") - compute.op_us("mlp_down") - router
    pos = np.empty(len(records))
    for i, r in enumerate(records):
        if r.what == "embedding":
            pos[i] = emb
        elif r.what == "attn_out":
            pos[i] = emb + r.layer * layer + attn
        elif r.what == "dispatch":
            pos[i] = emb + r.layer * layer + attn + router
        else:
            pos[i] = emb + (r.layer + 1) * layer
    return pos + (np.cumsum(costs) - costs)


CommFn = Callable[[TrafficRecord], CommCost]
#: sees every iteration as it is timed: (iteration, its compute, its communication microseconds, its records
#: in issue order, a function that returns their costs in that order: called only if needed, and what
#: restoring reused prefixes' KV adds to the pass in microseconds)
IterationHook = Callable[[Iteration, IterationCompute, float, list[TrafficRecord], Callable[[], list[CommCost]],
                          float], None]


class IterationComm(Protocol):
    """A backend that times one iteration's records at once (workloads/comm_backends.py)."""

    def iteration_cost(self, iteration: int, records: Sequence[TrafficRecord]) -> CommCost: ...

    def last_by_what(self) -> dict[str, float]: ...

    def last_costs(self, records: Sequence[TrafficRecord]) -> list[CommCost]: ...


class IterationTimer:
    """The duration callback for :class:`~nicemu.workloads.batching.Batcher`; keeps every iteration's cost.

    Args:
        comm_time: times one record (it is called for every record in issue
            order, so under MPI every rank must batch identically), or an
            :class:`IterationComm` that times an iteration's records at once.
        on_traffic: optional sink for each iteration's records (e.g. a
            :class:`~nicemu.workloads.traffic.TrafficCsv`'s ``write``).
        on_iteration: optional :data:`IterationHook` (serve's ``--trace``); when None nothing
            per record is kept.
        instance: the model instance whose nodes run the records (disaggregated prefill/decode).
        restore: ``load`` or ``partial`` (``--kv-restore``): how a pass brings back the KV of the reused
            prefixes it admits (``Batch.restores``), over PCIe at ``pcie_GBps`` shared with the NIC's DMA
            reads (:func:`~nicemu.workloads.kv_restore.restore_in_pass`); None: no prefix is reused.
        restore_log: optional dict that gathers each request's share of the restore time (by its tokens).
        swap_in: ``partial`` (``--preempt swap --kv-restore partial``): the KV of the swapped-out requests a
            pass readmits (``Batch.swap_ins``) comes back through the pass like a restore, in the same
            layer pipeline as the pass's prefixes; what it adds goes to ``Iteration.swap_in_us``.
            ``load``: the batcher swaps them in before the pass.
    """

    def __init__(self, model: Model, accelerator: Accelerator, par: Parallelism, comm_time: CommFn | IterationComm,
                 algo: str = "ring", embedding_algo: str | None = None, alltoall_algo: str | None = None,
                 dtype_bytes: int = 2, on_traffic: Callable[[list[TrafficRecord]], None] | None = None,
                 p2p_algo: str = "direct", on_iteration: IterationHook | None = None, instance: int = 0,
                 restore: str | None = None, pcie_GBps: float = float("inf"),
                 restore_log: dict[int, float] | None = None, swap_in: str = "load") -> None:
        par.check_model(model)
        self.model, self.accelerator, self.par = model, accelerator, par
        self.comm_time = comm_time
        self.algo, self.embedding_algo, self.alltoall_algo = algo, embedding_algo, alltoall_algo
        self.dtype_bytes = dtype_bytes
        self.on_traffic = on_traffic
        self.p2p_algo = p2p_algo
        self.on_iteration = on_iteration
        self.instance = instance           # which model instance's nodes run the records (disaggregated)
        self.restore, self.pcie_GBps = restore, pcie_GBps
        self.restore_log = restore_log     # request id -> its share of the restore time, by its tokens
        self.swap_in = swap_in
        # pipeline stages: each restores its own layers over its own PCIe (docs/model.md §15.2)
        self.stage_layers = [len(r) for r in par.stage_layers(model.layers)] if par.pp > 1 else None
        self.stage_groups = [set(par.tp_group(s, instance)) for s in range(par.pp)] if par.pp > 1 else None
        self.kv_width = par.kv_heads_per_rank(model) * model.head_dim   # one rank's K (or V) columns
        self.costs: list[IterationCost] = []
        self._traffic: dict[tuple, list[TrafficRecord]] = {}
        #: every pass's calls with their alone offsets and costs, when a list is set here (--fabric shared)
        self.passes: list[PassCalls] | None = None

    def records(self, it: Iteration) -> list[TrafficRecord]:
        """The iteration's records; built once per batch shape (tokens, phase), then reused."""
        batch = it.batch
        key = (batch.tokens, batch.phase)
        recs = self._traffic.get(key)
        if recs is None:
            recs = iteration_traffic(-1, batch, self.model, self.par, self.algo, self.embedding_algo,
                                     self.alltoall_algo, self.p2p_algo, dtype_bytes=self.dtype_bytes,
                                     instance=self.instance)
            if len(self._traffic) > 4096:
                self._traffic.clear()
            self._traffic[key] = recs
        return recs

    def __call__(self, it: Iteration) -> float:
        compute = iteration_compute(self.model, self.accelerator, it.batch, self.par, self.dtype_bytes)
        compute_us = compute.total_us
        records = self.records(it)
        if self.on_traffic is not None:
            self.on_traffic([r._replace(iteration=it.index) for r in records])
        per_record: list[CommCost] = []
        if hasattr(self.comm_time, "iteration_cost"):
            total = self.comm_time.iteration_cost(it.index, records)
            comm_us, host_us, wire = total.emulated_us, total.host_busy_us, total.wire_bytes
            by_what = self.comm_time.last_by_what()
            record_costs = partial(self.comm_time.last_costs, records)
        else:
            comm_us = host_us = 0.0
            wire = 0
            by_what = {}
            for rec in records:
                cost = self.comm_time(rec._replace(iteration=it.index))
                comm_us += cost.emulated_us
                host_us += cost.host_busy_us
                wire += cost.wire_bytes
                by_what[rec.what] = by_what.get(rec.what, 0.0) + cost.emulated_us
                per_record.append(cost)
            record_costs = partial(list, per_record)
        restore_us = pcie_kv = pcie_nic = restore_alone = 0.0
        swapping = self.swap_in == "partial" and it.batch.swap_ins
        if self.restore is not None or swapping:
            restore_us, pcie_kv, pcie_nic, restore_alone, it.swap_in_us = self._restore(it, records,
                                                                                       compute_us + comm_us)
            if it.batch.restores:
                if self.restore_log is not None and it.batch.restore_tokens:
                    per_token = restore_us / it.batch.restore_tokens
                    for rs in it.batch.restores:
                        log = self.restore_log
                        log[rs.request_id] = log.get(rs.request_id, 0.0) + per_token * rs.tokens
                by_what = {**by_what, "kv_restore": restore_us}
        self.costs.append(IterationCost(it.index, compute_us, comm_us, host_us, wire, len(records), by_what,
                                        restore_us, pcie_kv, pcie_nic, restore_alone))
        if self.on_iteration is not None:
            self.on_iteration(it, compute, comm_us, records, record_costs, restore_us)
        if self.passes is not None:
            costs = np.array([c.emulated_us for c in record_costs()], dtype=np.float64)
            self.passes.append(PassCalls(it.index, it.swap_us, call_offsets(records, compute, costs), costs,
                                         records))
        return compute_us + comm_us + restore_us + it.swap_in_us

    def _restore(self, it: Iteration, records: list[TrafficRecord], pass_us: float
                 ) -> tuple[float, float, float, float, float]:
        """The pass's reused prefixes and (``swap_in`` partial) swap-ins brought back together through it:
        (restore_us, pcie_kv_us, pcie_nic_us, restore_alone_us, swap_in_us). Prefixes and swap-ins share one
        layer pipeline, one PCIe link per rank and the accelerator; what they add, their PCIe time and the
        time without the NIC's reads are split between them by their tokens."""
        batch = it.batch
        if self.stage_groups is None:
            pcie_nic: float | list[float] = self.comm_time.iteration_pcie_us(records)
            nic_total = pcie_nic
        else:
            pcie_nic = self.comm_time.stage_pcie_us(records, self.stage_groups)
            nic_total = sum(pcie_nic)
        mine = batch.restore_tokens if self.restore is not None else 0
        swapped = batch.swap_in_tokens if self.swap_in == "partial" else 0
        tokens = mine + swapped
        if not (batch.restores or swapped):
            return 0.0, 0.0, nic_total, 0.0, 0.0
        method = "partial" if swapped else self.restore
        zero = 0.0 if self.stage_groups is None else [0.0] * len(self.stage_groups)
        shared, alone = (restore_in_pass(method, self.model, self.accelerator, tokens, pass_us, self.pcie_GBps,
                                         self.kv_width, busy, self.dtype_bytes, self.stage_layers)
                         for busy in (pcie_nic, zero))
        added, added_alone = shared.step_us - pass_us, alone.step_us - pass_us
        share = mine / tokens if tokens else 1.0
        return (added * share, shared.pcie_us * share, nic_total, added_alone * share if batch.restores else 0.0,
                added * (1.0 - share))
