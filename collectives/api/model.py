"""Model-only timing: schedules and emulated times without data, and without MPI.

    from nicemu.collectives import model_time
    t = model_time("allreduce", "directreduce", topology, profile, count)
    t.emulated_us, t.host_busy_us, t.wire_bytes
"""

from __future__ import annotations

import operator
from dataclasses import replace

import numpy as np

from nicemu.collectives.api import host_best
from nicemu.collectives.api.checks import (
    MAX_TRANSFERS,
    as_profile,
    as_topology,
    check_algo_collective,
    check_call_number,
    check_collective,
    check_count,
    check_dtype,
    check_ranks_per_node,
    check_root,
    check_schedule_size,
    check_sparse_call,
    fault_options,
    trace_mask,
)
from nicemu.collectives.model.executor import Timing, run_model
from nicemu.collectives.model.p2p_timing import p2p_time as _p2p_time
from nicemu.collectives.model.sparse_timing import model_sparse as _model_sparse
from nicemu.collectives.model.sparse_timing import plan_sparse as _plan_sparse
from nicemu.collectives.model.sparse_timing import time_sparse_plan as _time_sparse_plan
from nicemu.collectives.registry import ROOTED_COLLECTIVES, check_link_faults, get, sparse_config
from nicemu.collectives.schedules import hierarchical, hierarchical_alltoall
from nicemu.collectives.schedules.spot_protocol import PackedMasks, Plan, SparseConfig
from nicemu.collectives.schedules.steps import Schedule
from nicemu.errors import CollectiveError
from nicemu.nic.faults import FaultSpec
from nicemu.nic.profile import DEFAULT_SEGMENT_KiB, Profile
from nicemu.topologies import Torus


def resolve_host_best(collective: str, topology: Torus, profile: Profile, count: int, itemsize: int,
                      root: int = 0) -> str:
    """The host algorithm ``host-best`` runs for this call (collectives/api/host_best.py)."""
    check_collective(collective)
    if collective not in get(host_best.NAME).collectives:
        raise CollectiveError(f"host-best does not run {collective}; use one of "
                              f"{', '.join(get(host_best.NAME).collectives)}")
    root = check_root(root, topology, collective)
    return host_best.best_host(collective, topology, profile, check_count(count), itemsize, root)[0]


def segment_elems(profile: Profile | str, itemsize: int, algo: str | None = None, collective: str = "allreduce",
                  topology: Torus | str | None = None) -> int:
    """Elements per pipeline segment: the profile's ``host.segment_KiB`` in elements of ``itemsize`` bytes
    (``ring-pipelined``, and any ``algo`` without a segment rule of its own). ``directreduce-pipelined`` (with
    its ``collective`` and ``topology``) sizes it to NIC memory (docs/model.md §4.6). ``profile`` is a
    ``Profile``, a shipped name or a YAML path (:class:`ProfileError`)."""
    profile, itemsize = as_profile(profile), _itemsize(itemsize)
    rule = get(algo).segment_rule if algo is not None else None
    if rule is None:
        return profile.host.segment_elems(itemsize)
    if topology is None:
        raise CollectiveError(f"segment_elems of {algo} depends on the topology; pass topology='ring:8' or similar")
    check_collective(collective)
    check_algo_collective(algo, collective)
    return rule(profile, itemsize, as_topology(topology), collective, profile.topology.bidirectional)


def _itemsize(itemsize: int) -> int:
    if isinstance(itemsize, bool) or not isinstance(itemsize, (int, np.integer)) or itemsize < 1:
        raise CollectiveError(f"itemsize must be a whole number of bytes >= 1 (x.dtype.itemsize), got {itemsize!r}")
    return int(itemsize)


def _sparse_cfg(cfg: SparseConfig | str, nodes: int) -> SparseConfig:
    """A ``SparseConfig``, or a sparse algorithm's name turned into its default configuration."""
    if isinstance(cfg, str):
        return sparse_config(cfg, nodes)
    if not isinstance(cfg, SparseConfig):
        raise CollectiveError(f"cfg must be a sparse algorithm's name (omniccl, ...) or sparse_config(...), got "
                              f"{type(cfg).__name__}")
    return cfg


def _mask_nodes(masks: np.ndarray | PackedMasks) -> int:
    if isinstance(masks, PackedMasks):
        return masks.shape[0]
    shape = np.shape(masks)
    if len(shape) != 2 or shape[0] < 2:
        raise CollectiveError(f"block masks must be a bool array of shape (nodes >= 2, blocks), got shape {shape}")
    return shape[0]


def model_sparse(cfg: SparseConfig | str, masks: np.ndarray | PackedMasks, profile: Profile | str, itemsize: int,
                 faults: str | FaultSpec | None = None, call: int = 0,
                 stragglers: str | list | dict | None = None, telemetry: bool = False,
                 trace_nodes: str | list | None = None) -> Timing:
    """Emulated time of a sparse AllReduce from its block masks alone (the model executor, no data).

    Args:
        cfg: ``sparse_config(name, nodes, ...)`` or an algorithm name (``"omniccl"``: its defaults).
        masks: (nodes, blocks) bool, True where a node's block is non-zero, or ``PackedMasks``.
        profile: a ``Profile``, a shipped name or a YAML path.
        itemsize: bytes per element (4 for float32).
        faults, call, stragglers: as for ``model_time``; faults hit the Rx-spot writes.
        telemetry: also return ``Timing.telemetry`` (a ``LinkStats``: one switch port per node, then per
            dedicated aggregator, numbered after the nodes; docs/model.md "Telemetry of the spot protocol").
        trace_nodes: keep these nodes' events too (``"0-7"``, ``"all"`` or a list; dedicated aggregator
            ``a`` is traced with node ``a``); implies telemetry.

    Returns a ``Timing`` in microseconds and bytes, with ``upstream_bytes``, ``downstream_bytes`` and
    ``spilled``. Raises :class:`CollectiveError`, :class:`ProfileError` or :class:`FaultSpecError`.
    """
    nodes = _mask_nodes(masks)
    spec, slow = fault_options(faults, stragglers, nodes)
    return _model_sparse(_sparse_cfg(cfg, nodes), masks, as_profile(profile), _itemsize(itemsize), spec,
                         check_call_number(call), slow, _sparse_watch(telemetry, trace_nodes, nodes))


def _sparse_watch(telemetry: bool, trace_nodes: str | list | None, nodes: int) -> bool | np.ndarray:
    return trace_mask(trace_nodes, nodes) if trace_nodes is not None else bool(telemetry)


def plan_sparse(cfg: SparseConfig | str, masks: np.ndarray | PackedMasks) -> Plan:
    """The rounds of the spot protocol for these block masks: the first half of ``model_sparse``.

    ``cfg`` and ``masks`` as for ``model_sparse``; raises :class:`CollectiveError`.
    """
    return _plan_sparse(_sparse_cfg(cfg, _mask_nodes(masks)), masks)


def time_sparse_plan(plan: Plan, profile: Profile | str, itemsize: int, faults: str | FaultSpec | None = None,
                     call: int = 0, stragglers: str | list | dict | None = None, telemetry: bool = False,
                     trace_nodes: str | list | None = None) -> Timing:
    """Emulated time of planned rounds (``plan_sparse``): the second half of ``model_sparse``.

    Arguments, units and errors as for ``model_sparse``.
    """
    if not isinstance(plan, Plan):
        raise CollectiveError(f"plan must come from plan_sparse(...), got {type(plan).__name__}")
    spec, slow = fault_options(faults, stragglers, plan.layout.nodes)
    return _time_sparse_plan(plan, as_profile(profile), _itemsize(itemsize), spec, check_call_number(call), slow,
                             _sparse_watch(telemetry, trace_nodes, plan.layout.nodes))


def p2p_time(topology: Torus | str, profile: Profile | str, pairs: list[tuple[int, int]], nbytes: int,
             path: str) -> Timing:
    """Emulated time of point-to-point transfers issued together, without data (routed over the links).

    Args:
        topology, profile: specs or objects, as for ``model_time``.
        pairs: (source node, destination node) per transfer.
        nbytes: bytes per transfer.
        path: ``"host"`` (the host posts and completes each transfer) or ``"nic"``.

    Returns a ``Timing`` (microseconds; ``wire_bytes`` counts every hop). Raises :class:`CollectiveError`
    for a node outside the topology, a transfer to itself, a negative size or an unknown path.
    """
    return _p2p_time(as_topology(topology), as_profile(profile), _pairs(pairs),
                     check_count(nbytes, "nbytes"), path)


def _pairs(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    try:
        out = [(operator.index(a), operator.index(b)) for a, b in pairs]
    except (TypeError, ValueError):
        raise CollectiveError("pairs must be a list of (source node, destination node) whole numbers") from None
    return out


def build_schedule(collective: str, algo: str, topology: Torus | str, count: int,
                   bidirectional: bool = False, segment_elems: int | None = None, root: int = 0) -> Schedule:
    """The chunk-level program (``Schedule``) of a dense algorithm, which both executors run.

    ``topology`` is a spec or a ``Torus``, ``count`` elements per node; ``schedule.describe()`` prints it.
    Raises :class:`CollectiveError` for an unknown or sparse algorithm, one without a fixed schedule
    (``host-best``, ``mpi``), a collective it does not implement, or a schedule over 2**30 transfers;
    :class:`TopologyError` for a bad spec.

    ``segment_elems`` reaches only the algorithms the registry marks ``segmented`` (``ring-pipelined``);
    None means the default ``host.segment_KiB`` of float32 elements. ``root`` is the root node of a
    broadcast or reduce (other collectives take 0 only); the rooted schedules ignore ``bidirectional``.
    """
    check_collective(collective)
    entry = get(algo)
    if entry.sparse is not None:
        check_sparse_call(algo, collective, "sum")
    if entry.build is None:
        raise CollectiveError(f"algorithm '{algo}' has no fixed schedule: "
                              + ("its rounds depend on the data (time it with model_sparse)"
                                 if entry.sparse is not None else
                                 "it picks a host algorithm per call (resolve_host_best names it)"
                                 if algo == host_best.NAME else "it is MPI's own collective"))
    check_algo_collective(algo, collective)
    topology = as_topology(topology)
    count = check_count(count)
    root = check_root(root, topology, collective)
    rooted = {"root": root} if root or collective in ROOTED_COLLECTIVES else {}
    if not isinstance(bidirectional, (bool, np.bool_)):
        raise CollectiveError(f"bidirectional must be True or False, got {bidirectional!r}")
    check_schedule_size(topology, collective, algo)
    if entry.segmented:
        if segment_elems is None:
            segment_elems = int(DEFAULT_SEGMENT_KiB * 1024) // 4
        segment_elems = check_count(segment_elems, "segment_elems")
        if segment_elems < 1:
            raise CollectiveError("segment_elems must be at least 1 element")

    def one(topo: Torus, n: int) -> Schedule:
        if not entry.segmented:
            return entry.build(collective, topo, n, bool(bidirectional), **rooted)
        return entry.build(collective, topo, n, bool(bidirectional), segment_elems=segment_elems, **rooted)

    if topology.ranks_per_node > 1:
        check_ranks_per_node(topology, algo, collective)
        build = hierarchical_alltoall.build if collective == "alltoall" else hierarchical.build
        schedule = build(one, topology, count, algo)
    else:
        schedule = one(topology, count)
    if schedule.transfers > MAX_TRANSFERS:
        raise CollectiveError(
            f"{algo} {collective} on {topology.name} with segments of {segment_elems} elements has "
            f"{schedule.transfers:.3g} transfers, over the limit of 2**30; raise host.segment_KiB "
            f"(e.g. --set host.segment_KiB=1024) or use fewer nodes")
    return schedule


def call_schedule(collective: str, algo: str, topology: Torus, profile: Profile, count: int, itemsize: int
                  ) -> tuple[Schedule, str]:
    """The schedule one call of ``algo`` runs, built as the executors build it: ``host-best`` resolved to the
    host algorithm it picks, segmented algorithms with their profile's segment. Returns (schedule, the
    algorithm that runs). Raises as :func:`build_schedule` and :func:`resolve_host_best`."""
    ran = resolve_host_best(collective, topology, profile, count, itemsize) if algo == host_best.NAME else algo
    seg = segment_elems(profile, itemsize, ran, collective, topology) if get(ran).segmented else None
    return build_schedule(collective, ran, topology, count, profile.topology.bidirectional, seg), ran


def model_time(collective: str, algo: str, topology: Torus | str, profile: Profile | str, count: int,
               dtype: str | np.dtype = "float32", faults: str | FaultSpec | None = None,
               call: int = 0, stragglers: str | list | dict | None = None, ranks_per_node: int = 1,
               root: int = 0, telemetry: bool = False, trace_nodes: str | list | None = None) -> Timing:
    """Emulated timing of a dense algorithm without data (the model executor, no MPI).

    Args:
        collective: ``allreduce``, ``reducescatter``, ``allgather``, ``alltoall``, ``broadcast`` or ``reduce``.
        algo: a dense algorithm's name (``host-best`` included).
        topology: a spec (``"ring:8"``) or a ``Torus``; profile: a shipped name, a YAML path or a ``Profile``.
        count: elements per node; dtype: a type name (``"bfloat16"``, ``"half"``) or a numpy dtype.
        faults, stragglers: as ``Emulator`` takes them; ``call`` numbers the fault draws, so the MPI
            executor's call ``n`` and ``call=n`` see the same faults.
        ranks_per_node: ranks on every node, sharing its host memory (``Emulator`` and docs/model.md §19).
        root: the root node of ``broadcast`` and ``reduce`` (default 0; other collectives take 0 only).
        telemetry: also return per-link and per-resource statistics (``Timing.telemetry``, a ``LinkStats``).
        trace_nodes: keep these nodes' stream events too (``"0-7"``, ``"all"`` or a list); implies telemetry.

    Returns a ``Timing`` in emulated microseconds and bytes, equal bit for bit to the MPI executor's.
    Raises :class:`CollectiveError`, :class:`TopologyError`, :class:`ProfileError` or
    :class:`FaultSpecError` with a one-line message.
    """
    dt = check_dtype(dtype)
    topology, profile = as_topology(topology, ranks_per_node), as_profile(profile)
    check_ranks_per_node(topology, algo, collective)
    check_collective(collective)
    root = check_root(root, topology, collective)
    spec, slow = fault_options(faults, stragglers, topology)
    if spec is not None and spec.active:
        check_link_faults(algo, collective)
    watch = trace_mask(trace_nodes, topology.nodes) if trace_nodes is not None else bool(telemetry)
    if algo == host_best.NAME:
        algo = resolve_host_best(collective, topology, profile, count, dt.itemsize, root)
        if spec is None and not slow and watch is False:   # the choice was timed under exactly these conditions
            return replace(host_best.best_host(collective, topology, profile, count, dt.itemsize, root)[1],
                           chosen_algo=algo)
        timing = model_time(collective, algo, topology, profile, count, dt, faults, call, stragglers, root=root,
                            telemetry=telemetry, trace_nodes=trace_nodes)
        timing.chosen_algo = algo
        return timing
    schedule = build_schedule(collective, algo, topology, count, profile.topology.bidirectional,
                              segment_elems(profile, dt.itemsize, algo, collective, topology), root=root)
    return run_model(schedule, profile, dt.itemsize, spec, check_call_number(call), slow, watch)


