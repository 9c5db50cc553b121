"""``nicemu bench --concurrent K``: K identical calls at once on one fabric, and their slowdown.

Where the K calls sit (``--concurrent-groups``): ``same`` puts every call on every node; ``disjoint`` on the
sub-tori of a torus's trailing dimensions (or blocks of a switch); ``interleaved`` call ``j`` on nodes
``j, j+K, ...`` of a ring or switch (collectives/model/concurrent.py ``place``).

Timing comes from one fabric model in both executors (collectives/model/concurrent.py, docs/model.md §21.6):
contention couples calls that each rank only sees part of, so the MPI executor moves and checks the real
data of every call (``same``: the K calls one after another on all ranks; otherwise each group on its own
sub-communicator) and takes the concurrent times from the model, which every rank computes alike.
"""

from __future__ import annotations

import argparse

import numpy as np

from nicemu.collectives.api.host_best import NAME as HOST_BEST
from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.concurrent import PLACEMENTS, Call, place, run_concurrent
from nicemu.collectives.model.executor import run_model
from nicemu.collectives.registry import ROOTED_COLLECTIVES, get, is_sparse
from nicemu.errors import CollectiveError, NicemuError, UsageError

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
    elif any(is_sparse(a) or not get(a).emulated for a in algos):
        bad = next(a for a in algos if is_sparse(a) or not get(a).emulated)
        what = f"--algo {bad}; use dense algorithms such as ring, directreduce, host-best"
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
    if args.executor == "mpi" and comm.size != topology.nodes:
        raise UsageError(f"--concurrent with --executor mpi runs one rank per node: use mpiexec -n "
                         f"{topology.nodes} for {topology.name}, or --executor model")


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
            "concurrent_groups": args.concurrent_groups, "nodes_per_call": calls[0].schedule.topology.nodes}


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

    def run(self, run_one, algo: str, dtype: np.dtype, nbytes: int) -> dict:
        """Real data of every call through ``run_one`` (bench's _run_mpi); wrong counts summed over calls."""
        from mpi4py import MPI
        args = self.args
        recs = []
        if self.sub is None:
            for j in range(args.concurrent):
                recs.append(run_one(self.emu, _seeded(args, j), algo, dtype, nbytes))
            wall = sum(r["wall_us"] for r in recs)
            wrong = sum(r["wrong"] for r in recs)
        else:
            rec = run_one(self.sub, _seeded(args, self.group), algo, dtype, nbytes)
            recs.append(rec)
            both = np.array([rec["wall_us"], rec["wrong"]], dtype=np.float64)
            wall_wrong = np.empty(2)
            self.world.Allreduce(both[:1], wall_wrong[:1], op=MPI.MAX)
            self.world.Allreduce(both[1:], wall_wrong[1:], op=MPI.SUM)
            wall, wrong = float(wall_wrong[0]), int(wall_wrong[1])
        return {"wall_us": wall, "wrong": wrong, "mpi_alone_us": recs[0].get("emulated_us")}

    def free(self) -> None:
        if self.sub is not None:
            self.sub.free()


def _seeded(args: argparse.Namespace, j: int) -> argparse.Namespace:
    """Call ``j``'s data: the run's seed plus ``j``, so the K calls reduce different vectors."""
    return argparse.Namespace(**{**vars(args), "seed": args.seed + j})


def mpi_fields(groups: Groups, run_one, args: argparse.Namespace, algo: str, topology, profile,
               dtype: np.dtype, nbytes: int) -> dict:
    """Real data of the K calls, then their concurrent times from the model (the same on every rank)."""
    real = groups.run(run_one, algo, dtype, nbytes)
    rec = model_fields(args, algo, topology, profile, dtype, nbytes)
    if real["mpi_alone_us"] is not None and real["mpi_alone_us"] != rec["alone_us"]:
        raise NicemuError(f"internal: the MPI executor timed one call alone at {real['mpi_alone_us']} us and the "
                          f"model at {rec['alone_us']} us; please report this")
    rec.update(wall_us=real["wall_us"], wrong=real["wrong"])
    return rec
