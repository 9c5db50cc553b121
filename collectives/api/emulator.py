"""The Python API: an emulated fabric on an mpi4py communicator.

    from mpi4py import MPI
    from nicemu.collectives import Emulator
    emu = Emulator(MPI.COMM_WORLD, topology="ring:8", profile="directreduce-paper")
    res = emu.allreduce(x, op="sum", algo="directreduce")
    res.data, res.emulated_us, res.host_busy_us, res.wire_bytes

A rank hosts ``emu.local_nodes`` topology nodes (``emu.node_range``). With one
node per rank, collectives take and return 1-D arrays; with several, arrays of
shape (local_nodes, count), one row per node.

``watchdog_s`` bounds every wait of a call (default: ``$NICEMU_WATCHDOG_S``,
else 60 s; 0 disables it): a peer that stalls or dies raises
:class:`nicemu.collectives.mpi.watchdog.CollectiveStalled` naming the waiting node, the
peer and the step, instead of hanging (see collectives/mpi/watchdog.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from nicemu.collectives.api.checks import (
    as_profile,
    as_topology,
    check_algo,
    check_collective,
    check_dtype_op,
    check_op,
    check_sparse_call,
    check_work,
    fault_options,
)
from nicemu.collectives.api.host_best import NAME as HOST_BEST
from nicemu.collectives.api.model import build_schedule, resolve_host_best, segment_elems
from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.link_faults import install as install_faults
from nicemu.collectives.model.sparse_timing import model_sparse
from nicemu.collectives.mpi.executor import MpiExecutor
from nicemu.collectives.mpi.native import run_native, run_native_alltoall
from nicemu.collectives.mpi.spot_executor import SpotRun, gather_masks
from nicemu.collectives.registry import check_link_faults, get, is_sparse, sparse_config
from nicemu.collectives.schedules import alltoall
from nicemu.collectives.schedules.sparse_patterns import block_mask, nblocks_of
from nicemu.collectives.schedules.spot_protocol import plan_rounds
from nicemu.collectives.schedules.steps import Schedule, final_segments
from nicemu.errors import CollectiveError
from nicemu.nic.faults import FaultSpec
from nicemu.nic.ops import finish
from nicemu.nic.profile import Profile
from nicemu.nic.spots import RecordLayout, SpotWindows
from nicemu.topologies import Torus, ring


@dataclass
class Result:
    """Output of one emulated collective call."""

    data: np.ndarray | list[np.ndarray] | None   # None under the model executor
    emulated_us: float | None                    # None for algo="mpi"
    host_busy_us: float | None
    nic_busy_us: float | None
    wire_bytes: int | None
    node_done_us: np.ndarray | None = None        # per local node (per node under the model executor)
    faults: dict | None = None                    # with faults: drops, corruptions, retransmit_bytes, per_link
    chosen_algo: str | None = None                # host-best: the host algorithm it ran
    framed_bytes: int | None = None               # wire_bytes plus link.header_bytes per packet (dense)


class Emulator:
    def __init__(self, comm: MPI.Comm | None = None, topology: str | Torus | None = None,
                 profile: str | Profile = "ideal", overrides: tuple[str, ...] = (),
                 watchdog_s: float | None = None, faults: str | FaultSpec | None = None,
                 stragglers: str | list | dict | None = None) -> None:
        """``faults``: ``"drop=P,corrupt=Q,seed=S[,link=A->B]"`` or a FaultSpec; ``stragglers``:
        ``"NODE:FACTOR,..."``, a list of those, or {node: factor} (docs/model.md §11, §12)."""
        comm = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(comm, MPI.Comm):
            raise CollectiveError(f"comm must be an mpi4py communicator, got {type(comm).__name__}")
        self.topology = ring(max(comm.size, 2)) if topology is None else as_topology(topology)
        self.profile = as_profile(profile, overrides)
        self.comm = comm.Dup()
        if self.comm.size > self.topology.nodes:
            raise CollectiveError(
                f"{self.comm.size} ranks for {self.topology.name} ({self.topology.nodes} nodes): "
                f"run with at most {self.topology.nodes} ranks")
        self.executor = MpiExecutor(self.comm, self.topology, self.profile, watchdog_s)
        self.faults, self.stragglers = fault_options(faults, stragglers, self.topology)
        install_faults(self.executor.agents, self.profile, self.topology, self.executor.lo,
                       self.faults, self.stragglers)
        self._calls = 0
        self._schedules: dict[tuple, Schedule] = {}
        self._a2a_index: tuple[np.ndarray, np.ndarray] | None = None     # alltoall pack/unpack
        self._a2a_staging: np.ndarray | None = None
        self._spot_windows: dict[tuple, SpotWindows] = {}

    def free(self) -> None:
        """Release the RMA windows and the duplicated communicator (collective)."""
        for wins in self._spot_windows.values():
            wins.free()
        self._spot_windows.clear()
        self.executor.free()                  # the lean path's persistent requests
        if self.comm != MPI.COMM_NULL:
            self.comm.Free()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc) -> None:
        self.free()

    @property
    def local_nodes(self) -> int:
        return self.executor.local_nodes

    @property
    def node_range(self) -> range:
        return range(self.executor.lo, self.executor.hi)

    def _as_rows(self, data: np.ndarray) -> tuple[np.ndarray, bool]:
        arr = np.asarray(data)
        if arr.ndim == 1 and self.local_nodes == 1:
            return arr.reshape(1, -1), True
        if arr.ndim != 2 or arr.shape[0] != self.local_nodes:
            raise CollectiveError(
                f"this rank hosts {self.local_nodes} nodes: pass an array of shape "
                f"({self.local_nodes}, count), got {arr.shape}")
        return arr, False

    def run_inplace(self, collective: str, work: np.ndarray, op: str, algo: str,
                    sparse: dict | None = None, jitter_us: float = 0.0,
                    call: int | None = None) -> Timing | None:
        """Run on ``work`` (local nodes x count, C-contiguous) in place; None timing for algo="mpi".

        ``sparse`` holds overrides for the sparse algorithms (block_size, aggregators,
        spots, spot_blocks, tx_spots); ``jitter_us`` adds random sleeps to their
        protocol steps (for stress tests). ``call`` numbers the fault draws (default: a
        counter of this emulator's calls); the model executor given the same number
        draws the same faults.
        """
        check_work(work, self.local_nodes)
        check_op(op)
        if algo == HOST_BEST:
            if self.executor.agents.faults is not None:
                check_link_faults(algo)
            chosen = resolve_host_best(collective, self.topology, self.profile, work.shape[1], work.dtype.itemsize)
            timing = self.run_inplace(collective, work, op, chosen, call=call)
            timing.chosen_algo = chosen
            return timing
        ex = self.executor
        call = self._calls if call is None else call
        self._calls += 1
        if ex.agents.faults is not None:
            check_link_faults(algo)
            ex.agents.faults.begin(call)
        if collective == "alltoall":
            return self._run_alltoall(work, algo)
        if is_sparse(algo):
            timing = self._run_sparse(collective, work, op, algo, sparse or {}, jitter_us, call)
            finish(op, work, self.topology.nodes)
            return timing
        if algo == "mpi":
            seg_off, seg_cnt = final_segments(self.topology, work.shape[1])
            run_native(self.comm, collective, work, op, seg_off, seg_cnt, ex.lo, ex.hi, ex.bounds)
            if collective != "allgather":
                finish(op, work, self.topology.nodes)
            return None
        seg = segment_elems(self.profile, work.dtype.itemsize) if get(algo).segmented else 0
        key = (collective, algo, work.shape[1], seg)
        schedule = self._schedules.get(key)
        if schedule is None:
            schedule = self._schedules[key] = build_schedule(collective, algo, self.topology, work.shape[1],
                                                             self.profile.topology.bidirectional, seg or None)
            if len(self._schedules) > 64:
                self._schedules.pop(next(iter(self._schedules)))
        timing = ex.run(schedule, work, op)
        if collective != "allgather":
            finish(op, work, self.topology.nodes)   # avg: the sum divided once, by the contributing nodes
        return timing

    def _run_alltoall(self, work: np.ndarray, algo: str) -> Timing | None:
        """All-to-all through a staging row of 2·count per node (collectives/schedules/alltoall.py)."""
        ex = self.executor
        count = work.shape[1]
        if is_sparse(algo):
            check_sparse_call(algo, "alltoall", "sum")
        alltoall.check_count(self.topology, count)
        if ex.agents.faults is not None:
            raise CollectiveError("faults are not supported for alltoall yet; run it without faults")
        if algo == "mpi":
            run_native_alltoall(self.comm, work, ex.bounds)
            return None
        key = ("alltoall", algo, count)
        schedule = self._schedules.get(key)
        if schedule is None:
            schedule = self._schedules[key] = build_schedule("alltoall", algo, self.topology, count)
        if self._a2a_index is None:
            nodes = np.arange(ex.lo, ex.hi)
            self._a2a_index = (alltoall.pack_index(self.topology, nodes),
                               alltoall.unpack_index(self.topology, nodes))
        if self._a2a_staging is None or self._a2a_staging.shape != (work.shape[0], 2 * count) \
                or self._a2a_staging.dtype != work.dtype:
            self._a2a_staging = np.empty((work.shape[0], 2 * count), dtype=work.dtype)
        return _run_staged(ex, schedule, work, self._a2a_staging, *self._a2a_index)

    def _run_sparse(self, collective: str, work: np.ndarray, op: str, algo: str, sparse: dict,
                    jitter_us: float, call: int = 0) -> Timing:
        check_sparse_call(algo, collective, op)
        if work.shape[1] == 0:
            raise CollectiveError(f"{algo} needs at least one element per node (it works on blocks)")
        ex = self.executor
        cfg = sparse_config(algo, self.topology.nodes, **sparse)
        nblocks = nblocks_of(work.shape[1], cfg.block_size)
        masks = gather_masks(self.comm, block_mask(work, cfg.block_size).reshape(work.shape[0], -1),
                             ex.bounds, nblocks)
        plan = plan_rounds(masks, cfg)
        timing = model_sparse(cfg, masks, self.profile, work.dtype.itemsize, self.faults, call,
                              self.stragglers)
        record = RecordLayout(cfg.spot_blocks, cfg.block_size * work.dtype.itemsize)
        key = (cfg.aggregators, cfg.spots, cfg.tx_spots, record)
        wins = self._spot_windows.get(key)
        if wins is None:
            for old in self._spot_windows.values():
                old.free()
            self._spot_windows.clear()
            agg_rank = ex.node_rank[plan.layout.aggregator_node]
            wins = self._spot_windows[key] = SpotWindows(
                self.comm, int(np.count_nonzero(agg_rank == self.comm.rank)), self.topology.nodes,
                cfg.spots, cfg.tx_spots, record)
        SpotRun(self.comm, plan, wins, work, ex.lo, ex.node_rank, jitter_us, watchdog=ex.watchdog,
                faults=self.faults, call=call, packet_bytes=self.profile.nic.packet_bytes).run()
        return timing

    def run(self, collective: str, data: np.ndarray, op: str = "sum",
            algo: str = "directreduce") -> Result:
        """Run a collective on a working copy; the caller's array is not modified."""
        check_collective(collective)
        check_algo(algo)
        rows, flat = self._as_rows(data)
        check_dtype_op(rows.dtype, op)
        work = np.array(rows, order="C", copy=True)
        timing = self.run_inplace(collective, work, op, algo)
        ex = self.executor
        out: np.ndarray | list[np.ndarray] = work
        if collective == "reducescatter":
            seg_off, seg_cnt = final_segments(self.topology, work.shape[1])
            out = [work[i - ex.lo, seg_off[i]:seg_off[i] + seg_cnt[i]].copy()
                   for i in range(ex.lo, ex.hi)]
            if flat:
                out = out[0]
        elif flat:
            out = work[0]
        if timing is None:
            return Result(out, None, None, None, None)
        return Result(out, timing.emulated_us, timing.host_busy_us, timing.nic_busy_us,
                      timing.wire_bytes, timing.node_done_us, timing.faults, timing.chosen_algo,
                      timing.framed_bytes)

    def allreduce(self, data: np.ndarray, op: str = "sum", algo: str = "directreduce") -> Result:
        return self.run("allreduce", data, op, algo)

    def reduce_scatter(self, data: np.ndarray, op: str = "sum",
                       algo: str = "directreduce") -> Result:
        """Node ``i`` gets the ``i``-th contiguous range (see ``segments``)."""
        return self.run("reducescatter", data, op, algo)

    def alltoall(self, data: np.ndarray, algo: str = "directreduce") -> Result:
        """Block j (of ``count/p`` elements) of node i's row becomes block i of node j's row."""
        return self.run("alltoall", data, "sum", algo)

    def allgather(self, data: np.ndarray, algo: str = "directreduce") -> Result:
        """``data`` holds full-length rows; only each node's own range (``segments``) is read."""
        return self.run("allgather", data, "sum", algo)

    def segments(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(offset, count) of the range every node owns after a reduce-scatter."""
        return final_segments(self.topology, count)


def _run_staged(executor: MpiExecutor, schedule: Schedule, work: np.ndarray, staging: np.ndarray,
                pack: np.ndarray, unpack: np.ndarray) -> Timing:
    """Run an all-to-all schedule on ``work`` (local nodes x count) through ``staging`` (x 2·count)."""
    nloc, count = work.shape
    p = schedule.topology.nodes
    rows = np.arange(nloc)[:, None]
    blocks = work.reshape(nloc, p, count // p)
    stage = staging.reshape(nloc, 2 * p, count // p)
    stage[:, :p] = blocks[rows, pack]
    timing = executor.run(schedule, staging, "sum")
    blocks[:] = stage[rows, unpack]
    return timing
