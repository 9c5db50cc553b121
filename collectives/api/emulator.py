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

import zlib
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from nicemu.collectives.api import nonblocking
from nicemu.collectives.api.checks import (
    as_profile,
    as_topology,
    check_algo,
    check_algo_collective,
    check_call_number,
    check_collective,
    check_count,
    check_dtype_op,
    check_op,
    check_options,
    check_per_node,
    check_ranks_per_node,
    check_root,
    check_sparse_call,
    check_work,
    fault_options,
    trace_mask,
)
from nicemu.collectives.api.host_best import NAME as HOST_BEST
from nicemu.collectives.api.model import build_schedule, resolve_host_best, segment_elems
from nicemu.collectives.api.nonblocking import Request
from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.link_faults import install as install_faults
from nicemu.collectives.model.sparse_timing import model_sparse
from nicemu.collectives.mpi.executor import MpiExecutor
from nicemu.collectives.mpi.native import run_native, run_native_alltoall
from nicemu.collectives.mpi.spot_executor import SpotRun, gather_masks
from nicemu.collectives.registry import ALGORITHMS, COLLECTIVES, check_link_faults, get, is_sparse, sparse_config
from nicemu.collectives.schedules import alltoall, hierarchical_alltoall
from nicemu.collectives.schedules.sparse_patterns import block_mask, nblocks_of
from nicemu.collectives.schedules.spot_protocol import plan_rounds
from nicemu.collectives.schedules.steps import Schedule, final_segments
from nicemu.errors import CollectiveError, NicemuError
from nicemu.nic.faults import FaultSpec
from nicemu.nic.ops import DTYPES, OPS, finish
from nicemu.nic.profile import Profile
from nicemu.nic.spots import RecordLayout, SpotWindows
from nicemu.nic.telemetry import LinkStats
from nicemu.topologies import Torus, ring


@dataclass
class Result:
    """Output of one emulated collective call: the data, and its emulated time and statistics.

    Times are emulated microseconds (``emulated_us``: the slowest node's completion; ``host_busy_us`` and
    ``nic_busy_us``: the busiest host CPU and NIC reduction engine), ``wire_bytes`` the payload bytes over
    all links and ``framed_bytes`` those plus ``link.header_bytes`` per packet; ``nic_spill_bytes`` the most
    bytes one NIC read back from host memory because they did not fit in ``nic.memory_KiB`` (dense). For
    ``algo="mpi"`` the timing fields are None (MPI's own collective has only a wall time).
    """

    data: np.ndarray | list[np.ndarray] | None   # None under the model executor
    emulated_us: float | None                    # None for algo="mpi"
    host_busy_us: float | None
    nic_busy_us: float | None
    wire_bytes: int | None
    node_done_us: np.ndarray | None = None        # per local node (per node under the model executor)
    faults: dict | None = None                    # with faults: drops, corruptions, retransmit_bytes, per_link
    chosen_algo: str | None = None                # host-best: the host algorithm it ran
    framed_bytes: int | None = None               # wire_bytes plus link.header_bytes per packet
    nic_spill_bytes: int | None = None            # dense: most bytes one NIC read back (did not fit)
    telemetry: LinkStats | None = None            # Emulator(telemetry=True): per link and resource, trace


class Emulator:
    """An emulated fabric on an mpi4py communicator: topology nodes on the ranks, a hardware profile, and
    the collectives (``allreduce``, ``reduce_scatter``, ``allgather``, ``alltoall``) on numpy arrays.

    Args:
        comm: an mpi4py communicator (default ``MPI.COMM_WORLD``), duplicated; at most one rank per node.
        topology: a spec (``"ring:8"``, ``"torus:4x4"``, ``"switch:8"``, ``"astra:FILE.yml"``) or a
            ``Torus``; default a ring of the rank count (at least 2 nodes).
        profile: a shipped profile name, a YAML path or a ``Profile``; default ``"ideal"``.
        overrides: ``--set``-style strings (``"nic.packet_bytes=4096"``).
        watchdog_s: seconds a wait may see no progress (default ``$NICEMU_WATCHDOG_S``, else 60; 0: off).
        faults: ``"drop=P,corrupt=Q,seed=S[,link=A->B]"`` or a ``FaultSpec`` (docs/model.md §11).
        stragglers: ``"NODE:FACTOR,..."``, a list of those, or ``{node: factor}`` (docs/model.md §12).
        ranks_per_node: ranks on every topology node (``--ranks-per-node``, docs/model.md §19): they share
            its host memory, each with its own NIC; node ids then number ranks (``node * P + r``). The
            dense AllReduce and all-to-all run hierarchically (docs/model.md §19.3, §13.6); other collectives
            and the sparse algorithms refuse it.
        telemetry: True gives every call's ``Result.telemetry`` (a ``LinkStats``: bytes, busy time and
            utilisation per directed link and per node resource; docs/model.md §20).
        trace_nodes: also keep the stream events of these nodes (``"0-7,12"``, ``"all"`` or a list;
            ``LinkStats.write_trace`` writes them as a Chrome trace). Implies ``telemetry``.

    Collective (every rank of ``comm`` constructs it). Raises :class:`TopologyError`,
    :class:`ProfileError`, :class:`FaultSpecError` or :class:`CollectiveError` (more ranks than nodes,
    a communicator that is not one) with a one-line message. Use it as a context manager, or call
    ``free()``.
    """

    def __init__(self, comm: MPI.Comm | None = None, topology: str | Torus | None = None,
                 profile: str | Profile = "ideal", overrides: tuple[str, ...] = (),
                 watchdog_s: float | None = None, faults: str | FaultSpec | None = None,
                 stragglers: str | list | dict | None = None, ranks_per_node: int = 1,
                 telemetry: bool = False, trace_nodes: str | list | None = None) -> None:
        comm = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(comm, MPI.Comm):
            raise CollectiveError(f"comm must be an mpi4py communicator, got {type(comm).__name__}")
        if topology is None:
            topology = ring(max(comm.size // check_per_node(ranks_per_node), 2))
        self.topology = as_topology(topology, ranks_per_node)
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
        if telemetry or trace_nodes is not None:
            self.executor.set_telemetry(True, None if trace_nodes is None
                                        else trace_mask(trace_nodes, self.topology.nodes))
        self._calls = 0
        self._schedules: dict[tuple, Schedule] = {}
        self._a2a_index: tuple[np.ndarray, np.ndarray] | None = None     # alltoall pack/unpack
        self._a2a_staging: np.ndarray | None = None
        self._spot_windows: dict[tuple, SpotWindows] = {}
        self._fabric = None     # a group of a split: where it sits on the parent's fabric (nonblocking.py)

    def free(self) -> None:
        """Release the RMA windows, persistent requests and the duplicated communicator (collective).

        Every rank calls it; the ``with`` block does. Raises nothing of its own (MPI errors abort)."""
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
        """How many topology nodes this rank hosts: the rows of the arrays it passes (raises nothing)."""
        return self.executor.local_nodes

    @property
    def node_range(self) -> range:
        """The ids of the nodes this rank hosts, in row order (contiguous blocks, rank 0 first; raises nothing)."""
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
                    call: int | None = None, root: int = 0) -> Timing | None:
        """The low-level form of the collectives: run on ``work`` in place and return the model's Timing.

        ``work`` is (local nodes x count), C-contiguous and writeable; the result is None for algo="mpi".
        The collective methods (``allreduce(..., out=x)`` for in place) are the API; this form, used
        by the CLI and serving, skips their agreement between ranks, so a bad argument on one rank may
        leave the others waiting. Raises :class:`CollectiveError` (bad ``work``, algorithm, op or
        options) and :class:`CollectiveStalled` (a peer stopped answering).

        ``sparse`` holds overrides for the sparse algorithms (block_size, aggregators,
        spots, spot_blocks, tx_spots); ``jitter_us`` adds random sleeps to their
        protocol steps (for stress tests). ``call`` numbers the fault draws (default: a
        counter of this emulator's calls); the model executor given the same number
        draws the same faults. ``root`` is the root node of ``broadcast`` and ``reduce``.
        """
        check_work(work, self.local_nodes)
        check_op(op)
        check_ranks_per_node(self.topology, algo, collective)
        root = check_root(root, self.topology, collective)
        if algo == HOST_BEST:
            if self.executor.agents.faults is not None:
                check_link_faults(algo, collective)
            chosen = resolve_host_best(collective, self.topology, self.profile, work.shape[1], work.dtype.itemsize,
                                       root)
            timing = self.run_inplace(collective, work, op, chosen, call=call, root=root)
            timing.chosen_algo = chosen
            return timing
        ex = self.executor
        call = self._calls if call is None else call
        self._calls += 1
        if ex.agents.faults is not None:
            check_link_faults(algo, collective)
            ex.agents.faults.begin(call)
        if collective == "alltoall":
            return self._run_alltoall(work, algo)
        if is_sparse(algo):
            timing = self._run_sparse(collective, work, op, algo, sparse or {}, jitter_us, call)
            finish(op, work, self.topology.nodes)
            return timing
        if algo == "mpi":
            seg_off, seg_cnt = final_segments(self.topology, work.shape[1])
            run_native(self.comm, collective, work, op, seg_off, seg_cnt, ex.lo, ex.hi, ex.bounds, root)
            if collective not in ("allgather", "broadcast"):
                finish(op, work, self.topology.nodes)
            return None
        seg = (segment_elems(self.profile, work.dtype.itemsize, algo, collective, self.topology)
               if get(algo).segmented else 0)
        key = (collective, algo, work.shape[1], seg, root)
        schedule = self._schedules.get(key)
        if schedule is None:
            schedule = self._schedules[key] = build_schedule(collective, algo, self.topology, work.shape[1],
                                                             self.profile.topology.bidirectional, seg or None,
                                                             root=root)
            if len(self._schedules) > 64:
                self._schedules.pop(next(iter(self._schedules)))
        timing = ex.run(schedule, work, op)
        if collective not in ("allgather", "broadcast"):
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
            layout = hierarchical_alltoall if self.topology.ranks_per_node > 1 else alltoall
            self._a2a_index = (layout.pack_index(self.topology, nodes), layout.unpack_index(self.topology, nodes))
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
        cfg = sparse_config(algo, self.topology.nodes, **check_options(algo, sparse))
        nblocks = nblocks_of(work.shape[1], cfg.block_size)
        masks = gather_masks(self.comm, block_mask(work, cfg.block_size).reshape(work.shape[0], -1),
                             ex.bounds, nblocks)
        plan = plan_rounds(masks, cfg)
        tel = ex.agents.telemetry       # every rank times the whole call: its telemetry is the call's
        watch = False if tel is None else (True if tel.traced is None else tel.traced)
        timing = model_sparse(cfg, masks, self.profile, work.dtype.itemsize, self.faults, call,
                              self.stragglers, watch)
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

    def run(self, collective: str, data: np.ndarray, op: str = "sum", algo: str = "directreduce", *,
            out: np.ndarray | None = None, call: int | None = None, root: int = 0,
            **options: int | None) -> Result:
        """Run ``collective`` by name (``allreduce``, ``reducescatter``, ``allgather``, ``alltoall``,
        ``broadcast``, ``reduce``; ``root``: the root node of the last two).

        The same as the method of that name (``allreduce`` and so on), which documents the arguments.
        Collective: every rank calls it with the same collective, algorithm, op, dtype, count and options.
        Raises :class:`CollectiveError` on every rank when any rank's arguments are wrong.
        """
        problem, rows, flat, work = None, None, False, None
        try:
            rows, flat, work, options = self._prepare(collective, data, op, algo, out, call, options)
            root = check_root(root, self.topology, collective)
        except NicemuError as exc:
            problem = str(exc)
        self._agree(problem, collective, algo, op, rows, options, root)
        timing = self.run_inplace(collective, work, op, algo, options or None, call=call, root=root)
        ex = self.executor
        result: np.ndarray | list[np.ndarray] = work
        if collective == "reducescatter":
            seg_off, seg_cnt = final_segments(self.topology, work.shape[1])
            result = [work[i - ex.lo, seg_off[i]:seg_off[i] + seg_cnt[i]] for i in range(ex.lo, ex.hi)]
            if out is None:
                result = [part.copy() for part in result]
            if flat:
                result = result[0]
        elif out is not None:
            result = out
        elif flat:
            result = work[0]
        if timing is None:
            return Result(result, None, None, None, None)
        return Result(result, timing.emulated_us, timing.host_busy_us, timing.nic_busy_us,
                      timing.wire_bytes, timing.node_done_us, timing.faults, timing.chosen_algo,
                      timing.framed_bytes, timing.nic_spill_bytes, timing.telemetry)

    def _prepare(self, collective: str, data: np.ndarray, op: str, algo: str, out: np.ndarray | None,
                 call: int | None, options: dict) -> tuple[np.ndarray, bool, np.ndarray, dict]:
        """Check one rank's arguments; returns (input rows, 1-D?, the working rows, the options)."""
        check_collective(collective)
        check_algo(algo)
        check_ranks_per_node(self.topology, algo, collective)
        if get(algo).sparse is not None:
            check_sparse_call(algo, collective, op)
        else:
            check_algo_collective(algo, collective)
        if call is not None:
            check_call_number(call)
        options = check_options(algo, options)
        if options:
            sparse_config(algo, self.topology.nodes, **options)
        if not isinstance(data, np.ndarray):
            raise CollectiveError(f"x must be a numpy array (np.asarray(x)), got {type(data).__name__}")
        rows, flat = self._as_rows(data)
        check_dtype_op(rows.dtype, op)
        if out is None:
            return rows, flat, np.array(rows, order="C", copy=True), options
        if not isinstance(out, np.ndarray):
            raise CollectiveError(f"out must be a numpy array (or x itself, for in place), got {type(out).__name__}")
        if out.shape != data.shape or out.dtype != data.dtype:
            raise CollectiveError(f"out must have the shape and dtype of x, {data.shape} {data.dtype}; got "
                                  f"{out.shape} {out.dtype} (np.empty_like(x), or out=x for in place)")
        if not out.flags.writeable:
            raise CollectiveError("out is read-only: the result is written into it; pass a writeable array "
                                  "(np.empty_like(x)) or leave out= away")
        if not out.flags.c_contiguous:
            raise CollectiveError("out must be C-contiguous (np.ascontiguousarray(x), then out= that array), "
                                  "got a strided or Fortran-ordered array")
        work = out.reshape(rows.shape)
        if not _same_memory(out, data):
            if np.shares_memory(out, data):
                raise CollectiveError("out overlaps x without being x: pass out=x for in place, or a separate "
                                      "array")
            np.copyto(work, rows)
        return rows, flat, work, options

    def _agree(self, problem: str | None, collective: str, algo: str, op: str, rows: np.ndarray | None,
               options: dict, root_node: object = 0) -> None:
        """Every rank reaches the same verdict: a problem on any rank, or ranks that disagree on the call,
        raises :class:`CollectiveError` on all of them (one small Allgather, and a Bcast on failure)."""
        def code(value: object, table: tuple | dict) -> int:
            return list(table).index(value) if value in table else -1
        sig = np.array([problem is not None, code(collective, COLLECTIVES), code(algo, ALGORITHMS),
                        code(op, OPS), -1 if rows is None else code(rows.dtype.name, DTYPES),
                        -1 if rows is None else rows.shape[1],
                        zlib.crc32(repr(sorted(options.items())).encode()),
                        root_node if isinstance(root_node, int) and 0 <= root_node < 1 << 62 else -1],
                       dtype=np.int64)
        every = np.empty((self.comm.size, sig.size), dtype=np.int64)
        self.comm.Allgather(sig, every)
        failed = np.flatnonzero(every[:, 0])
        if failed.size:
            root = int(failed[0])
            text = np.zeros(_MESSAGE_BYTES, dtype=np.uint8)
            if self.comm.rank == root:
                raw = problem.encode()[:_MESSAGE_BYTES]
                text[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            self.comm.Bcast(text, root=root)
            message = bytes(text).rstrip(b"\0").decode(errors="replace")
            raise CollectiveError(message if self.comm.rank == root else f"rank {root}: {message}")
        differ = np.flatnonzero((every != every[0]).any(axis=1))
        if differ.size:
            r = int(differ[0])
            what = (f"{_describe(every[0])} vs {_describe(every[r])}" if (every[0, :6] != every[r, :6]).any()
                    else f"root {every[0, 7]} vs {every[r, 7]}" if every[0, 7] != every[r, 7]
                    else "different options")
            raise CollectiveError(f"ranks 0 and {r} disagree on the call ({what}); every rank must pass the "
                                  f"same collective, algo, op, dtype, count, root and options")

    def allreduce(self, x: np.ndarray, op: str = "sum", algo: str = "directreduce", *,
                  out: np.ndarray | None = None, call: int | None = None, **options: int | None) -> Result:
        """AllReduce: every node gets the reduction (``op``) of all nodes' rows.

        Args:
            x: this rank's rows, shape (local_nodes, count), one per hosted node; a 1-D array of count
                elements when the rank hosts one node. Any supported dtype; ``x`` is only read.
            op: ``sum``, ``prod``, ``max``, ``min`` or ``avg`` (the sparse algorithms: sum or avg).
            algo: a registry name (``nicemu info``); ``host-best`` runs the fastest host algorithm.
            out: where to write the result, shaped and typed like ``x``, writeable and C-contiguous;
                ``out=x`` reduces in place (mpi4py's ``MPI.IN_PLACE``). Default: a new array.
            call: numbers the fault draws (default: this emulator's call counter).
            **options: a sparse algorithm's spot options ``block_size`` (elements per block),
                ``aggregators``, ``spots``, ``spot_blocks``, ``tx_spots``; a dense algorithm takes none.

        Returns a :class:`Result` (times in microseconds, bytes in bytes). Collective: every rank calls it
        with the same arguments. Raises :class:`CollectiveError` on every rank for a wrong shape or dtype,
        an unknown algorithm, op or option, an ``out`` that is read-only or not C-contiguous, or ranks
        that disagree; :class:`CollectiveStalled` if a peer stops answering for ``watchdog_s``.
        """
        return self.run("allreduce", x, op, algo, out=out, call=call, **options)

    def reduce_scatter(self, x: np.ndarray, op: str = "sum", algo: str = "directreduce", *,
                       out: np.ndarray | None = None, call: int | None = None, **options: int | None) -> Result:
        """ReduceScatter: node ``i`` gets the ``i``-th contiguous range of the reduction (see ``segments``).

        Arguments and errors as for ``allreduce``. ``Result.data`` is a list with one array per hosted
        node (one array for 1-D input); with ``out=`` they are views into ``out``, whose other elements
        are left as scratch.
        """
        return self.run("reducescatter", x, op, algo, out=out, call=call, **options)

    def allgather(self, x: np.ndarray, algo: str = "directreduce", *, out: np.ndarray | None = None,
                  call: int | None = None, **options: int | None) -> Result:
        """AllGather: every node gets every node's own range (``segments``) of its row.

        ``x`` holds full-length rows, of which only each node's own range is read. Arguments and errors
        as for ``allreduce`` (no ``op``).
        """
        return self.run("allgather", x, "sum", algo, out=out, call=call, **options)

    def alltoall(self, x: np.ndarray, algo: str = "directreduce", *, out: np.ndarray | None = None,
                 call: int | None = None, **options: int | None) -> Result:
        """AllToAll: block ``j`` (of count/nodes elements) of node ``i``'s row becomes block ``i`` of node ``j``'s.

        ``count`` must be a multiple of the node count. Arguments and errors as for ``allreduce``
        (no ``op``); ``algo="ring"`` is the host variant, ``"mpi"`` MPI's ``Alltoallv``.
        """
        return self.run("alltoall", x, "sum", algo, out=out, call=call, **options)

    def broadcast(self, x: np.ndarray, root: int = 0, algo: str = "directreduce", *, out: np.ndarray | None = None,
                  call: int | None = None) -> Result:
        """Broadcast (``MPI_Bcast``): every node ends with node ``root``'s row.

        ``x`` holds every hosted node's row; only the root's is read (the others are receive buffers, as
        in MPI). ``root`` is a node id of the topology. Arguments and errors as for ``allreduce`` (no
        ``op``); ``algo`` is one of ``names(collective="broadcast")``.
        """
        return self.run("broadcast", x, "sum", algo, out=out, call=call, root=root)

    def reduce(self, x: np.ndarray, op: str = "sum", root: int = 0, algo: str = "directreduce", *,
               out: np.ndarray | None = None, call: int | None = None) -> Result:
        """Reduce (``MPI_Reduce``): node ``root``'s row becomes the reduction (``op``) of all nodes' rows.

        Only the root's row of the result is defined: the other hosted nodes' rows are left as scratch
        (partial reductions that depend on the algorithm; ``algo="mpi"`` leaves them as they were), as
        MPI leaves a non-root receive buffer undefined. Arguments and errors as for ``allreduce``.
        """
        return self.run("reduce", x, op, algo, out=out, call=call, root=root)

    # --- non-blocking calls and groups (collectives/api/nonblocking.py, docs/model.md §21.6) ------------

    def iallreduce(self, x: np.ndarray, op: str = "sum", algo: str = "directreduce", *,
                   out: np.ndarray | None = None, **options: int | None) -> Request:
        """AllReduce whose data moves now and whose time ``waitall`` settles together with the other
        requests in flight: they share links, PCIe reads and NIC engines. Dense emulated algorithms only;
        arguments as :meth:`allreduce`. Collective. Raises :class:`CollectiveError` on every rank for a bad
        argument, a sparse algorithm or ``algo="mpi"``."""
        return nonblocking.start(self, "allreduce", x, op, algo, out, options)

    def ireduce_scatter(self, x: np.ndarray, op: str = "sum", algo: str = "directreduce", *,
                        out: np.ndarray | None = None, **options: int | None) -> Request:
        """Non-blocking :meth:`reduce_scatter`; raises as :meth:`iallreduce`."""
        return nonblocking.start(self, "reducescatter", x, op, algo, out, options)

    def iallgather(self, x: np.ndarray, algo: str = "directreduce", *, out: np.ndarray | None = None,
                   **options: int | None) -> Request:
        """Non-blocking :meth:`allgather`; raises as :meth:`iallreduce`."""
        return nonblocking.start(self, "allgather", x, "sum", algo, out, options)

    def ialltoall(self, x: np.ndarray, algo: str = "directreduce", *, out: np.ndarray | None = None,
                  **options: int | None) -> Request:
        """Non-blocking :meth:`alltoall`; raises as :meth:`iallreduce`."""
        return nonblocking.start(self, "alltoall", x, "sum", algo, out, options)

    def waitall(self, requests: list[Request]) -> list[Result]:
        """Settle ``requests`` together: they start at the same emulated time on this emulator's fabric.
        On a top-level emulator, requests of its groups (``split``) settle with its own. Collective: every
        rank passes the requests it holds, in the order it made them. Returns their Results (emulated times
        sharing the fabric; ``Request.alone_us`` and ``slowdown_vs_alone`` say what sharing cost). Raises
        :class:`CollectiveError` for a request already settled, one of another emulator, or ranks of a group
        that pass different requests."""
        return nonblocking.waitall(self, requests)

    def wait(self, request: Request) -> Result:
        """Settle one request, alone on the fabric (its blocking call's times). Collective; raises as
        :meth:`waitall`."""
        return nonblocking.waitall(self, [request])[0]

    def split(self, groups: list[list[int]], topologies: list | None = None) -> Emulator | None:
        """Emulators on disjoint groups of nodes, each with its own topology (default a ring of the group)
        embedded on those nodes: logical node ``i`` of group ``g`` is node ``groups[g][i]``, and its
        messages take that fabric's routes. Collective: every rank passes the same groups (one rank per
        node). Returns this rank's group, or None. Requests of the groups settle together in this
        emulator's ``waitall``. Free the group's emulator (``free()``) before this one. Raises
        :class:`CollectiveError` for groups that overlap, have fewer than 2 nodes, name unknown nodes or do
        not match their topologies, and for an emulator with several nodes per rank."""
        return nonblocking.split(self, groups, topologies)

    def segments(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, counts) in elements, two int arrays over all nodes: the range every node owns after a
        reduce-scatter of ``count`` elements (and reads in an allgather). Local, no communication; raises
        :class:`CollectiveError` for a count that is not a whole number >= 0."""
        return final_segments(self.topology, check_count(count))


#: longest error message one rank broadcasts to the others (bytes of UTF-8)
_MESSAGE_BYTES = 512


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` and ``b`` are views of the same elements (``out=x``): same start, shape and strides."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.shape == b.shape
            and a.strides == b.strides)


def _describe(sig: np.ndarray) -> str:
    """One rank's call signature (from ``Emulator._agree``) in words."""
    def name(table: tuple | dict, i: int) -> str:
        return list(table)[i] if 0 <= i < len(table) else "?"
    return (f"{name(COLLECTIVES, sig[1])} {name(ALGORITHMS, sig[2])} {name(OPS, sig[3])} "
            f"{name(DTYPES, sig[4])} count {sig[5]}")


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
