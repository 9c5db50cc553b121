"""``nicemu bench --concurrent K``: K identical calls at once on one fabric, and their slowdown.

Where the K calls sit (``--concurrent-groups``): ``same`` puts every call on every node; ``disjoint`` on the
sub-tori of a torus's trailing dimensions (or blocks of a switch); ``interleaved`` call ``j`` on nodes
``j, j+K, ...`` of a ring or switch (collectives/model/concurrent.py ``place``).

Timing comes from one fabric model in both executors (collectives/model/concurrent.py, docs/model.md §21.6):
contention couples calls that each rank only sees part of, so the MPI executor moves and checks the real
data of every call (``same``: the K calls one after another on all ranks; otherwise each group on its own
sub-communicator) and takes the concurrent times from the model, which every rank computes alike.

Sparse algorithms (omniccl, omnireduce, ...) have no transfer schedule: each of the K calls is timed alone by the
sparse model for its own block pattern (the run's seed plus ``j``, as its data), on the nodes of its group, and
its messages share the fabric as flows (collectives/model/sparse_flows.py ``run_shared``). Its aggregators sit
among its own nodes (or, dedicated, beside them; docs/model.md §21.6).
"""

from __future__ import annotations

import argparse

import numpy as np

from nicemu.collectives.api.host_best import NAME as HOST_BEST
from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.concurrent import PLACEMENTS, Call, place, run_concurrent
from nicemu.collectives.model.executor import run_model
from nicemu.collectives.model.sparse_flows import SparseCall, run_shared, sparse_call_flows
from nicemu.collectives.registry import ROOTED_COLLECTIVES, get, is_sparse, sparse_config
from nicemu.collectives.schedules.sparse_patterns import check_pattern
from nicemu.errors import CollectiveError, NicemuError, UsageError
from nicemu.memory import check_model_fits, sparse_bytes
from nicemu.sizes import format_size

#: largest --concurrent: far beyond a sensible study, small enough that a typo cannot exhaust memory
MAX_CONCURRENT = 4096


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrent", type=int, default=1, metavar="K",
                   help="run K identical calls at once on one fabric and report each one's slowdown against "
                        "running alone (record keys alone_us, slowdown_vs_alone, concurrent_us; docs/model.md §21.6)")
    p.add_argument("--concurrent-groups", default="same", choices=list(PLACEMENTS),
                   help="where the K calls sit: same (all nodes), disjoint (sub-tori of a torus's trailing "
                        "dimensions, blocks of a switch) or interleaved (nodes j, j+K, ... of a ring or switch)")


def active(args: argparse.Namespace) -> bool:
    return getattr(args, "concurrent", 1) != 1


def validate(args: argparse.Namespace, algos: list[str], topology, profile, comm, dtype: np.dtype,
             sizes: list[int]) -> None:
    """One-line errors for what concurrent calls do not cover (the same verdict on every rank)."""
    k = getattr(args, "concurrent", 1)
    if not 1 <= k <= MAX_CONCURRENT:
        raise UsageError(f"--concurrent {k} is outside 1..{MAX_CONCURRENT}")
    if k == 1:
        if getattr(args, "concurrent_groups", "same") != "same":
            raise UsageError("--concurrent-groups needs --concurrent K with K >= 2")
        return
    what = None
    if args.collective in ROOTED_COLLECTIVES:
        what = f"--collective {args.collective} (rooted); use allreduce, reducescatter, allgather or alltoall"
    elif any(not get(a).emulated for a in algos):
        bad = next(a for a in algos if not get(a).emulated)
        what = f"--algo {bad} (no emulated time); use ring, directreduce, host-best, omniccl, ..."
    elif args.faults is not None or args.straggler:
        what = "--faults or --straggler; drop them"
    elif topology.ranks_per_node > 1:
        what = "--ranks-per-node; use one rank per node"
    elif any(getattr(args, flag, None) for flag in ("link_stats", "trace", "plot_links", "link_summary")):
        what = "--link-stats, --link-summary, --trace or --plot-links; drop them"
    if what is not None:
        raise UsageError(f"--concurrent does not cover {what}")
    try:
        groups = place(topology, profile, k, args.concurrent_groups)
    except CollectiveError as e:
        raise UsageError(f"--concurrent {k} --concurrent-groups {args.concurrent_groups}: {e}") from None
    if args.collective == "alltoall":
        nodes = groups[0][0].nodes
        bad = [s for s in sizes if (s // dtype.itemsize) % nodes]
        if bad:
            raise UsageError(f"--collective alltoall with {k} {args.concurrent_groups} calls needs sizes that "
                             f"split into {nodes} equal blocks (one per node of a call); {bad[0]} B does not")
    _validate_sparse(args, [a for a in algos if is_sparse(a)], groups[0][0].nodes, dtype, max(sizes))
    if args.executor == "mpi" and comm.size != topology.nodes:
        raise UsageError(f"--concurrent with --executor mpi runs one rank per node: use mpiexec -n "
                         f"{topology.nodes} for {topology.name}, or --executor model")


def _validate_sparse(args: argparse.Namespace, algos: list[str], nodes: int, dtype: np.dtype, nbytes: int) -> None:
    """Each call of a sparse algorithm runs on ``nodes`` nodes: its options and pattern must fit them, and the
    model's K calls (block masks and protocol state of each) must fit in memory."""
    from nicemu.bench import sparse_options
    for a in algos:
        try:
            check_pattern(nodes, args.density, args.overlap)
            cfg = sparse_config(a, nodes, **sparse_options(args))
        except CollectiveError as e:
            raise UsageError(f"--concurrent {args.concurrent} --concurrent-groups {args.concurrent_groups} runs "
                             f"{a} on {nodes} nodes per call: {e}") from None
        if args.executor == "model":
            check_model_fits(args.concurrent * sparse_bytes(cfg, nodes, nbytes, dtype.itemsize),
                             f"{args.concurrent} calls of {a} at {format_size(nbytes)} per node",
                             "use fewer calls, a larger --block-size or smaller --sizes")


def _calls(args: argparse.Namespace, algo: str, topology, profile, itemsize: int, count: int
           ) -> tuple[list[Call], str | None]:
    """The K calls' schedules where they sit; for host-best, the host algorithm it picked."""
    calls, chosen = [], None
    for sub, nodes in place(topology, profile, args.concurrent, args.concurrent_groups):
        sched, ran = call_schedule(args.collective, algo, sub, profile, count, itemsize)
        calls.append(Call(sched, nodes, itemsize))
        chosen = ran if algo == HOST_BEST else None
    return calls, chosen


def model_fields(args: argparse.Namespace, algo: str, topology, profile, dtype: np.dtype, nbytes: int) -> dict:
    """The record fields of K concurrent calls (both executors)."""
    return _model(args, algo, topology, profile, dtype, nbytes)[0]


def _model(args: argparse.Namespace, algo: str, topology, profile, dtype: np.dtype, nbytes: int
           ) -> tuple[dict, list[float]]:
    """The record fields, and every call's time alone (what the MPI executor's own timing must equal)."""
    if is_sparse(algo):
        return _sparse_model(args, algo, topology, profile, dtype, nbytes)
    count = nbytes // dtype.itemsize
    calls, chosen = _calls(args, algo, topology, profile, dtype.itemsize, count)
    out = run_concurrent(calls, topology, profile)
    alone = run_model(calls[0].schedule, profile, dtype.itemsize)
    slowest = max(out, key=lambda o: o.emulated_us)
    return {"emulated_us": slowest.emulated_us, "alone_us": slowest.alone_us,
            "slowdown_vs_alone": slowest.slowdown_vs_alone,
            "concurrent_us": [o.emulated_us for o in out],
            "host_busy_us": alone.host_busy_us, "nic_busy_us": alone.nic_busy_us,
            "wire_bytes": sum(o.wire_bytes for o in out),
            "framed_bytes": None if alone.framed_bytes is None else alone.framed_bytes * len(out),
            "best_host_algo": chosen, "concurrent": args.concurrent,
            "concurrent_groups": args.concurrent_groups, "nodes_per_call": calls[0].schedule.topology.nodes
            }, [slowest.alone_us] * len(out)


def sparse_calls(args: argparse.Namespace, algo: str, topology, profile, itemsize: int, count: int
                 ) -> list[SparseCall]:
    """The K sparse calls where they sit, call ``j`` timed alone for the block pattern of seed ``seed + j`` (the
    pattern of its data under the MPI executor), with the same options as a plain bench call."""
    from nicemu.bench import sparse_masks, sparse_options
    out = []
    for j, (sub, nodes) in enumerate(place(topology, profile, args.concurrent, args.concurrent_groups)):
        cfg = sparse_config(algo, sub.nodes, **sparse_options(args))
        masks = sparse_masks(args, sub.nodes, count, cfg.block_size, args.seed + j)
        out.append(SparseCall(sparse_call_flows(cfg, masks, profile, itemsize), nodes))
    return out


def _sparse_model(args: argparse.Namespace, algo: str, topology, profile, dtype: np.dtype, nbytes: int
                  ) -> tuple[dict, list[float]]:
    """K sparse calls sharing the fabric. Each has its own pattern, so its own time alone: ``alone_us``,
    ``host_busy_us`` and ``nic_busy_us`` are the slowest call's; the byte counts add up over the calls."""
    calls = sparse_calls(args, algo, topology, profile, dtype.itemsize, nbytes // dtype.itemsize)
    try:
        _, out = run_shared([], calls, topology, profile)
    except CollectiveError as e:
        raise UsageError(f"--concurrent {args.concurrent} --algo {algo} at {format_size(nbytes)}: {e}") from None
    i = max(range(len(out)), key=lambda j: out[j].emulated_us)
    alone = [c.alone.timing for c in calls]
    framed = [t.framed_bytes for t in alone]
    return {"emulated_us": out[i].emulated_us, "alone_us": out[i].alone_us,
            "slowdown_vs_alone": out[i].slowdown_vs_alone, "concurrent_us": [o.emulated_us for o in out],
            "host_busy_us": alone[i].host_busy_us, "nic_busy_us": alone[i].nic_busy_us,
            "wire_bytes": sum(o.wire_bytes for o in out),
            "framed_bytes": None if None in framed else sum(framed),
            "upstream_bytes": sum(t.upstream_bytes for t in alone),
            "downstream_bytes": sum(t.downstream_bytes for t in alone),
            "spots_spilled": any(t.spilled for t in alone),
            "best_host_algo": None, "concurrent": args.concurrent,
            "concurrent_groups": args.concurrent_groups, "nodes_per_call": calls[0].alone.workers
            }, [o.alone_us for o in out]


class Groups:
    """The MPI side: an emulator per call group (``same``: the whole one), built once per run."""

    def __init__(self, args: argparse.Namespace, emu, topology, profile) -> None:
        from nicemu.collectives.api.emulator import Emulator
        self.args, self.world = args, emu.comm
        self.emu = emu
        self.sub = None
        if args.concurrent_groups != "same":
            groups = place(topology, profile, args.concurrent, args.concurrent_groups)
            rank = self.world.rank
            self.group = next(j for j, (_, nodes) in enumerate(groups) if rank in nodes.tolist())
            sub_topo, nodes = groups[self.group]
            comm = self.world.Split(self.group, int(np.flatnonzero(nodes == rank)[0]))
            try:
                self.sub = Emulator(comm, sub_topo, profile)
            finally:
                comm.Free()

    def run(self, run_one, algo: str, dtype: np.dtype, nbytes: int, alone_us: list[float]) -> dict:
        """Real data of every call through ``run_one`` (bench's _run_mpi); wrong counts summed over calls.
        ``alone_us``: the model's time of every call alone, which each call's own MPI timing must equal (the
        same verdict on every rank)."""
        from mpi4py import MPI
        args = self.args
        if self.sub is None:
            recs = {j: run_one(self.emu, _seeded(args, j), algo, dtype, nbytes) for j in range(args.concurrent)}
            wall = sum(r["wall_us"] for r in recs.values())
            wrong = sum(r["wrong"] for r in recs.values())
        else:
            rec = run_one(self.sub, _seeded(args, self.group), algo, dtype, nbytes)
            recs = {self.group: rec}
            both = np.array([rec["wall_us"], rec["wrong"]], dtype=np.float64)
            wall_wrong = np.empty(2)
            self.world.Allreduce(both[:1], wall_wrong[:1], op=MPI.MAX)
            self.world.Allreduce(both[1:], wall_wrong[1:], op=MPI.SUM)
            wall, wrong = float(wall_wrong[0]), int(wall_wrong[1])
        off = [(j, r["emulated_us"]) for j, r in recs.items()
               if r.get("emulated_us") is not None and r["emulated_us"] != alone_us[j]]
        worst = np.empty(1)
        self.world.Allreduce(np.array([float(len(off))]), worst, op=MPI.MAX)
        if worst[0]:
            what = (f"call {off[0][0]} alone at {off[0][1]} us and the model at {alone_us[off[0][0]]} us" if off
                    else "a call alone on another rank differently from the model")
            raise NicemuError(f"internal: the MPI executor timed {what}; please report this")
        return {"wall_us": wall, "wrong": wrong}

    def free(self) -> None:
        if self.sub is not None:
            self.sub.free()


def _seeded(args: argparse.Namespace, j: int) -> argparse.Namespace:
    """Call ``j``'s data: the run's seed plus ``j``, so the K calls reduce different vectors."""
    return argparse.Namespace(**{**vars(args), "seed": args.seed + j})


def mpi_fields(groups: Groups, run_one, args: argparse.Namespace, algo: str, topology, profile,
               dtype: np.dtype, nbytes: int) -> dict:
    """The K calls' concurrent times from the model (the same on every rank, and first, so a run it refuses
    moves no data), then their real data."""
    rec, alone = _model(args, algo, topology, profile, dtype, nbytes)
    rec.update(groups.run(run_one, algo, dtype, nbytes, alone))
    return rec
