"""``nicemu jobs FILE.yml``: several jobs share one fabric; each one's slowdown, and the links that got hot.

The file (workloads/jobs.py) places jobs of repeated collectives on node sets of one topology, each from
its own start time. All jobs replay together on the fabric model (docs/model.md §21.6): a job's span
is from its start to the end of its last iteration, against the same job alone. Under ``--executor mpi``
(one rank per node) every job's data moves on its own sub-communicator and is checked against numpy;
the times come from the same model, so both executors report the same numbers.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from nicemu import argtypes
from nicemu.collectives.api.checks import check_algo, check_algo_collective, check_dtype_op
from nicemu.collectives.api.host_best import NAME as HOST_BEST
from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.concurrent import Call, resource_capacity, resource_name, run_concurrent
from nicemu.collectives.model.fabric import Fabric
from nicemu.collectives.registry import get, is_sparse
from nicemu.errors import NicemuError, UsageError
from nicemu.nic.profile import load_profile
from nicemu.report import bus_factor
from nicemu.workloads.jobs import Job, load_jobs

HEADER = (f"{'job':>10} {'nodes':>6} {'collective':>13} {'algo':>22} {'size':>10} {'iters':>6} "
          f"{'alone(us)':>13} {'shared(us)':>13} {'slowdown':>9} {'iter(us)':>11} {'busbw':>8} {'#wrong':>6}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE.yml", help="the jobs file (docs/usage.md, 'nicemu jobs')")
    p.add_argument("--executor", default="model", choices=["model", "mpi"],
                   help="model: timing only (default); mpi: every job's data moves and is checked (mpiexec "
                        "with one rank per node of the fabric)")
    p.add_argument("--profile", default=None, help="a shipped profile or a YAML path (default: the file's "
                   "'profile', else directreduce-paper)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one profile field (repeatable)")
    p.add_argument("--hot-links", type=int, default=5, metavar="N", help="list the N busiest links (default 5)")
    p.add_argument("--json", type=argtypes.output_file, help="write the jobs and the hot links as JSON")


def _check(jf, args, comm):
    profile = load_profile(args.profile or jf.profile or "directreduce-paper", args.overrides)
    if not 0 <= args.hot_links <= 10_000:
        raise UsageError(f"--hot-links {args.hot_links} is outside 0..10,000")
    for job in jf.jobs:
        where = f"job '{job.name}'"
        try:
            check_algo(job.algo)
            if is_sparse(job.algo) or not get(job.algo).emulated:
                raise UsageError(f"algo {job.algo} is not a dense emulated algorithm; use e.g. ring, "
                                 "directreduce or host-best")
            check_algo_collective(job.algo, job.collective)
            dtype = check_dtype_op(job.dtype, "sum")
        except NicemuError as exc:
            raise UsageError(f"{where}: {exc}") from None
        if job.size % dtype.itemsize:
            raise UsageError(f"{where}: size {job.size} B is not a multiple of {dtype.name} ({dtype.itemsize} B)")
        if job.collective == "alltoall" and (job.size // dtype.itemsize) % len(job.nodes):
            raise UsageError(f"{where}: alltoall needs one equal block per node: {job.size} B does not split into "
                             f"{len(job.nodes)} blocks of {dtype.name}")
    if args.executor == "mpi" and comm.size != jf.topology.nodes:
        raise UsageError(f"--executor mpi runs one rank per node: use mpiexec -n {jf.topology.nodes} for "
                         f"{jf.topology.name}, or --executor model")
    return profile


def _calls(jf, profile) -> tuple[list[Call], list[str]]:
    calls, ran = [], []
    for job in jf.jobs:
        dtype = check_dtype_op(job.dtype, "sum")
        count = job.size // dtype.itemsize
        sched, algo = call_schedule(job.collective, job.algo, job.topology, profile, count, dtype.itemsize)
        calls.append(Call(sched, job.nodes, dtype.itemsize, job.start_us, job.iterations, job.gap_us))
        ran.append(algo)
    return calls, ran


def _real_data(jf, profile, comm) -> list[int]:
    """Every job's iterations with real data on its own ranks; elements wrong per job (all ranks)."""
    from mpi4py import MPI

    from nicemu.bench import _run_mpi, data_options
    from nicemu.collectives.api.emulator import Emulator
    rank = comm.rank
    mine = next((i for i, j in enumerate(jf.jobs) if rank in j.nodes.tolist()), None)
    sub = comm.Split(MPI.UNDEFINED if mine is None else mine,
                     0 if mine is None else int(np.flatnonzero(jf.jobs[mine].nodes == rank)[0]))
    wrong = np.zeros(len(jf.jobs), dtype=np.int64)
    if mine is not None:
        job: Job = jf.jobs[mine]
        try:
            emu = Emulator(sub, job.topology, profile)
        finally:
            sub.Free()
        try:
            rec = _run_mpi(emu, data_options(job.collective, 1000 * mine, job.iterations), job.algo,
                           check_dtype_op(job.dtype, "sum"), job.size)
            if emu.comm.rank == 0:
                wrong[mine] = rec["wrong"]
        finally:
            emu.free()
    total = np.zeros_like(wrong)
    comm.Allreduce(wrong, total, op=MPI.SUM)
    return total.tolist()


def run(args: argparse.Namespace, comm) -> int:
    jf = load_jobs(args.file)
    profile = _check(jf, args, comm)
    wrong = _real_data(jf, profile, comm) if args.executor == "mpi" else [None] * len(jf.jobs)
    calls, ran = _calls(jf, profile)
    loads: list = []
    out = run_concurrent(calls, jf.topology, profile, loads)
    records = []
    for job, t, algo, bad in zip(jf.jobs, out, ran, wrong):
        busy = t.emulated_us - job.gap_us * (job.iterations - 1)
        per_iter = busy / job.iterations
        algbw = job.size / (per_iter * 1e3) if per_iter > 0 else None
        records.append({
            "job": job.name, "nodes": len(job.nodes), "topology": job.topology.name, "collective": job.collective,
            "algo": job.algo, "best_host_algo": algo if job.algo == HOST_BEST else None, "bytes": job.size,
            "dtype": job.dtype, "iterations": job.iterations, "start_us": job.start_us, "gap_us": job.gap_us,
            "alone_us": t.alone_us, "emulated_us": t.emulated_us, "slowdown_vs_alone": t.slowdown_vs_alone,
            "iteration_us": per_iter, "algbw_GBps": algbw,
            "busbw_GBps": None if algbw is None else algbw * bus_factor(job.collective, len(job.nodes)),
            "wire_bytes": t.wire_bytes, "wrong": bad, "executor": args.executor, "profile": profile.name,
            "fabric": jf.topology.name})
    hot = _hot_links(jf, profile, calls, out, loads[0], args.hot_links)
    if comm.rank == 0:
        print(f"# nicemu jobs: {len(jf.jobs)} jobs on {jf.topology.describe()}, profile {profile.name}, "
              f"executor {args.executor}; times in emulated microseconds")
        print("# shared(us): from the job's start to its last iteration's end, sharing the fabric; alone(us): "
              "the same job alone; iter(us): its mean iteration, gaps left out")
        print("#" + HEADER[1:])
        for r in records:
            print(f"{r['job']:>10} {r['nodes']:>6} {r['collective']:>13} "
                  f"{r['algo'] + ('=' + r['best_host_algo'] if r['best_host_algo'] else ''):>22} {r['bytes']:>10} "
                  f"{r['iterations']:>6} {r['alone_us']:13.3f} {r['emulated_us']:13.3f} "
                  f"{r['slowdown_vs_alone']:8.3f}x {r['iteration_us']:11.3f} "
                  f"{'-' if r['busbw_GBps'] is None else format(r['busbw_GBps'], '.3f'):>8} "
                  f"{'-' if r['wrong'] is None else r['wrong']:>6}")
        if hot:
            print(f"# busiest links over the run ({hot[0]['span_us']:.3f} us): link, bytes, utilisation")
            for h in hot:
                print(f"#   {h['link']:>16} {h['bytes']:>16,.0f} {100 * h['utilization']:6.1f}%")
            if any(h["utilization"] > 1.0 + 1e-9 for h in hot):
                print("# a link over 100% carries one job's own overlapping steps at once: a routed algorithm's step "
                      "model lets some of them share a link, which the replay does not count as contention "
                      "(docs/model.md §21.6, step 5)")
        if args.executor == "mpi":
            total = sum(r["wrong"] for r in records)
            print(f"# out of bounds values : {total} {'OK' if total == 0 else 'FAILED'}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"fabric": jf.topology.name, "profile": profile.name, "jobs": records,
                           "hot_links": hot}, f, indent=1)
                f.write("\n")
            print(f"# wrote {len(records)} jobs to {args.json}")
    return 1 if any(w for w in wrong if w) else 0


def _hot_links(jf, profile, calls, out, carried: np.ndarray, top: int) -> list[dict]:
    """The ``top`` links with the highest utilisation over the run's span (bytes / capacity / span)."""
    fabric = Fabric(jf.topology, profile)
    links = len(fabric.capacity)
    span = max(c.start_us + t.emulated_us for c, t in zip(calls, out))
    if span <= 0 or top == 0:
        return []
    util = carried[:links] / (resource_capacity(fabric)[:links] * span)
    order = [int(i) for i in np.argsort(-util, kind="stable")[:top] if carried[i] > 0]
    return [{"link": resource_name(fabric, i), "bytes": float(carried[i]), "utilization": float(util[i]),
             "span_us": span} for i in order]
