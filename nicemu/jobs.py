"""``nicemu jobs FILE.yml``: several jobs share one fabric; each one's slowdown, and the links that got hot.

The file (workloads/jobs.py) places jobs of repeated collectives, data-parallel training jobs
(nicemu/jobs_train.py) and serving jobs (nicemu/jobs_serve.py) on node sets of one topology, each from
its own start time. All jobs replay together on the fabric model (docs/model.md §21.6): a job's span is
from its start to the end of its last iteration, against the same job alone. Jobs of collectives replay
through ``run_concurrent``; a group of jobs that shares resources with a train or serve job is chained on
one replay (workloads/jobs_fabric.py). Under ``--executor mpi`` (one rank per node) every collective and
train job's data moves on its own sub-communicator and is checked against numpy, and a serve job's ranks run
each distinct call of its serving once with real data (``nicemu serve --executor mpi``'s backend); the times
come from the same model, so both executors report the same numbers. Rank 0 alone computes that model
(nicemu/rank0.py): every rank would compute the same, many times over where ranks share cores.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from nicemu import argtypes, jobs_serve, jobs_train
from nicemu.collectives.api.checks import check_algo_collective, check_dtype_op
from nicemu.collectives.api.host_best import NAME as HOST_BEST
from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.chains import Chains
from nicemu.collectives.model.concurrent import Call, resource_capacity, resource_name, run_concurrent
from nicemu.collectives.model.fabric import Fabric
from nicemu.collectives.model.sparse_flows import SparseCall, SparseFlows
from nicemu.collectives.model.sparse_flows import carried as sparse_carried
from nicemu.errors import CollectiveError, NicemuError, UsageError
from nicemu.nic.profile import load_profile
from nicemu.rank0 import on_rank0
from nicemu.report import bus_factor
from nicemu.workloads.jobs import Job, load_jobs
from nicemu.workloads.jobs_fabric import JobWork, ServeWork, components, sharing_delays
from nicemu.workloads.serve_fabric import DEFAULT_REFORM_ROUNDS, REFORM_TOL_US

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
    p.add_argument("--fabric-rounds", type=int, default=DEFAULT_REFORM_ROUNDS, metavar="N",
                   help=f"re-form serve jobs' batches under sharing up to N times, until no pass moves by more "
                        f"than {REFORM_TOL_US:g} us (default {DEFAULT_REFORM_ROUNDS}; 0: keep the idle fabric's "
                        "batches, the first-order result)")
    p.add_argument("--hot-links", type=int, default=5, metavar="N", help="list the N busiest links (default 5)")
    p.add_argument("--json", type=argtypes.output_file, help="write the jobs and the hot links as JSON")


def _check(jf, args, comm):
    spec = args.profile or jf.profile or "directreduce-paper"
    profile = load_profile(spec, args.overrides)
    if not 0 <= args.hot_links <= 10_000:
        raise UsageError(f"--hot-links {args.hot_links} is outside 0..10,000")
    if not 0 <= args.fabric_rounds <= 100:
        raise UsageError(f"--fabric-rounds {args.fabric_rounds} is outside 0..100 (0: the first-order result)")
    for job in jf.jobs:
        if job.train is not None:
            jobs_train.check(job)
            continue
        if job.serve is not None:
            jobs_serve.check(job, spec, args.overrides)
            continue
        where = f"job '{job.name}'"
        try:
            jobs_train.check_dense(job.algo, "not a dense emulated algorithm")
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
    return profile, spec


def _calls(jobs: list[Job], profile) -> tuple[list[Call], list[str]]:
    calls, ran = [], []
    for job in jobs:
        dtype = check_dtype_op(job.dtype, "sum")
        count = job.size // dtype.itemsize
        sched, algo = call_schedule(job.collective, job.algo, job.topology, profile, count, dtype.itemsize)
        calls.append(Call(sched, job.nodes, dtype.itemsize, job.start_us, job.iterations, job.gap_us))
        ran.append(algo)
    return calls, ran


def _real_data(jf, profile, spec: str, overrides: list[str], comm) -> tuple[list[int], np.ndarray, dict | None]:
    """Every job's iterations with real data on its own ranks: elements wrong per job, (real-data calls,
    elements checked) per job (all ranks), and this rank's serve job's metrics (None elsewhere)."""
    from mpi4py import MPI

    from nicemu.bench import _run_mpi, data_options
    from nicemu.collectives.api.emulator import Emulator
    from nicemu.memory import check_fits
    rank = comm.rank
    mine = next((i for i, j in enumerate(jf.jobs) if rank in j.nodes.tolist()), None)
    train = None
    if mine is not None and jf.jobs[mine].train is not None:
        tp, dtype, _ = jobs_train.job_plan(jf.jobs[mine])
        train = tp, dtype
    # every rank together, before the jobs split: the same verdict everywhere, never a hang
    biggest = max(b.elems for b in train[0].buckets) * train[1].itemsize if train else 0
    check_fits(comm, 1, biggest, train[1].itemsize if train else 1, "mpi", fix=jobs_train.TOO_BIG,
               what=f"a train job's largest gradient bucket ({biggest:,} B)")
    sub = comm.Split(MPI.UNDEFINED if mine is None else mine,
                     0 if mine is None else int(np.flatnonzero(jf.jobs[mine].nodes == rank)[0]))
    counts = np.zeros((3, len(jf.jobs)), dtype=np.int64)          # wrong, real-data calls, elements checked
    metrics = None
    if mine is not None and jf.jobs[mine].serve is not None:
        try:                              # its backend keeps sub-communicators of ``sub`` until it is freed
            runs, checked, bad, metrics = jobs_serve.real_data(jf.jobs[mine], spec, overrides, sub)
            if sub.rank == 0:
                counts[:, mine] = bad, runs, checked
        finally:
            sub.Free()
    elif mine is not None:
        job: Job = jf.jobs[mine]
        try:
            emu = Emulator(sub, job.topology, profile)
        finally:
            sub.Free()
        try:
            if train is not None:
                bad = jobs_train.real_data(emu, job, *train)
            else:
                bad = _run_mpi(emu, data_options(job.collective, 1000 * mine, job.iterations), job.algo,
                               check_dtype_op(job.dtype, "sum"), job.size)["wrong"]
            if emu.comm.rank == 0:
                counts[0, mine] = bad
        finally:
            emu.free()
    total = np.zeros_like(counts)
    comm.Allreduce(counts, total, op=MPI.SUM)
    return total[0].tolist(), total[1:], metrics


def _same_serving(comm, jf, spec: str, overrides: list[str], metrics: dict | None, mine: int | None) -> None:
    """A serve job's run with real data must report what the model's idle-fabric run reports (both executors
    give the same metrics, as ``nicemu serve`` does); checked on the job's ranks, agreed on by all."""
    from mpi4py import MPI
    bad = np.zeros(1, dtype=np.int64)
    if metrics is not None and metrics != jobs_serve.idle_summary(jf.jobs[mine], spec, overrides):
        bad[0] = mine + 1
    got = np.zeros_like(bad)
    comm.Allreduce(bad, got, op=MPI.MAX)
    if got[0]:
        raise CollectiveError(f"internal: serve job '{jf.jobs[int(got[0]) - 1].name}' reports different metrics "
                              "with real data than in the model")


def _sharing(jf, chains: Chains, calls: dict[int, Call], trains: dict, serves: dict) -> dict:
    """Per job that shares resources with a train or serve job: what sharing adds to its end over its replay
    alone, from the chained replay (workloads/jobs_fabric.py; clipped at 0 as in §21.6); a serve job's passes'
    (start, end) delays. Jobs of collectives only keep ``run_concurrent``'s results, exactly as before."""
    if not trains and not serves:
        return {}
    works: list = []
    for i, job in enumerate(jf.jobs):
        if i in trains:
            works.append(trains[i].work())
        elif i in serves:
            works.append(serves[i].work)
        else:
            c = calls[i]
            works.append(JobWork(job.name, job.nodes, c.itemsize, ((c.schedule, 0.0),), 0.0, job.start_us,
                                 job.iterations, job.gap_us, True))
    out: dict = {}
    for comp in components(chains, works):
        if len(comp) > 1 and any(i in trains or i in serves for i in comp):
            delay = sharing_delays(chains, [works[i] for i in comp])
            out.update({i: d if i in serves else max(float(d), 0.0) for i, d in zip(comp, delay)})
    return out


def _reform(jf, chains: Chains, calls: dict[int, Call], trains: dict, serves: dict, extra: dict, spec: str,
            args: argparse.Namespace) -> tuple[int, dict[int, float]]:
    """Serve jobs' batches re-formed under sharing (docs/model.md §21.7, step 6): each round serves every
    serve job again with its passes lengthened by what the last replay added, then replays the jobs; until
    no pass moves by more than REFORM_TOL_US, or ``--fabric-rounds``. Updates ``serves`` and ``extra`` to
    the last round; returns (rounds run, each serve job's residual, µs)."""
    residual = {i: sv.residual(extra.get(i)) for i, sv in serves.items()}
    rounds = 0
    while rounds < args.fabric_rounds and any(r > REFORM_TOL_US for r in residual.values()):
        rounds += 1
        for i, sv in list(serves.items()):
            if extra.get(i) is not None:
                serves[i] = jobs_serve.build(jf.jobs[i], spec, args.overrides, chains, sv.extras(extra[i]))
        extra.clear()
        extra.update(_sharing(jf, chains, calls, trains, serves))
        residual = {i: sv.residual(extra.get(i)) for i, sv in serves.items()}
    return rounds, residual


def _serve_loads(work: ServeWork, fabric, profile) -> np.ndarray:
    """The bytes a serve job's calls put on every resource (for the hot links)."""
    count: dict[tuple, list] = {}
    for p in work.passes:
        for sched, nodes, _ in p.calls:
            hit = count.setdefault((id(sched), nodes.tobytes()), [sched, nodes, 0])
            hit[2] += 1
    fab = Fabric(fabric, profile)
    total = np.zeros(len(resource_capacity(fab)))
    for sched, nodes, k in count.values():
        if isinstance(sched, SparseFlows):
            total += sparse_carried(fab, SparseCall(sched, nodes)) * k
            continue
        loads: list = []
        run_concurrent([Call(sched, nodes, work.itemsize)], fabric, profile, loads)
        total += loads[0] * k
    return total


def _serve_record(sv: jobs_serve.ServeJob, delays, sv0: jobs_serve.ServeJob, delays0, rounds: int,
                  residual: float, max_rounds: int) -> dict:
    """A serve job's record: TTFT, TPOT and E2E sharing the fabric (the last round's batches), beside the same
    on an idle fabric and in first order (``sv0``, ``delays0``: the idle fabric's batches moved)."""
    job = sv.job
    alone = sv0.summary()
    shared = alone if delays is None else sv.summary(*delays)
    first = alone if delays0 is None else sv0.summary(*delays0)
    a_us, s_us = alone["duration_s"] * 1e6, shared["duration_s"] * 1e6
    passes = sv.result.iterations
    busy = sum(it.duration_us for it in passes) + (0.0 if delays is None else float(np.sum(delays[1] - delays[0])))
    return {"job": job.name, "workload": "serve", "nodes": len(job.nodes), "topology": job.topology.name,
            "collective": "serve", "algo": job.algo, "best_host_algo": None, "bytes": 0, "dtype": job.dtype,
            "iterations": len(passes), "start_us": job.start_us, "gap_us": 0.0, "alone_us": a_us,
            "emulated_us": s_us, "slowdown_vs_alone": s_us / a_us if a_us > 0 else 1.0,
            "iteration_us": busy / len(passes) if passes else 0.0, "algbw_GBps": None, "busbw_GBps": None,
            "wire_bytes": sum(c.wire_bytes for c in sv.costs), "model": sv.model, "requests": alone["requests"],
            **{k: shared[k] for k in jobs_serve.METRICS}, **{f"{k}_alone": alone[k] for k in jobs_serve.METRICS},
            "slowed_passes": 0 if delays is None else int(np.count_nonzero(delays[1] - delays[0] > 1e-9)),
            "fabric_reform_max_rounds": max_rounds, "fabric_reform_rounds": rounds,
            "fabric_reform_residual_us": residual, "fabric_reform_converged": residual <= REFORM_TOL_US,
            **{f"{k}_first_order": first[k] for k in ("ttft_ms_mean", "tpot_ms_mean", "e2e_ms_mean")}}


def _record(job: Job, alone: float, shared: float, algo: str, wire: int) -> dict:
    """A collective job's record."""
    busy = shared - job.gap_us * (job.iterations - 1)
    per_iter = busy / job.iterations
    algbw = job.size / (per_iter * 1e3) if per_iter > 0 else None
    return {"job": job.name, "workload": "collective", "nodes": len(job.nodes), "topology": job.topology.name,
            "collective": job.collective, "algo": job.algo, "best_host_algo": algo if job.algo == HOST_BEST else None,
            "bytes": job.size, "dtype": job.dtype, "iterations": job.iterations, "start_us": job.start_us,
            "gap_us": job.gap_us, "alone_us": alone, "emulated_us": shared,
            "slowdown_vs_alone": shared / alone if alone > 0 else 1.0, "iteration_us": per_iter, "algbw_GBps": algbw,
            "busbw_GBps": None if algbw is None else algbw * bus_factor(job.collective, len(job.nodes)),
            "wire_bytes": wire}


def _train_record(t: jobs_train.TrainJob, extra: float) -> dict:
    """A train job's record: its iterations alone and sharing the fabric, and the communication left exposed."""
    job, tp = t.job, t.plan
    alone = t.alone_us
    shared = alone + extra
    per_iter = (shared - job.gap_us * (job.iterations - 1)) / job.iterations
    return {"job": job.name, "workload": "train", "nodes": len(job.nodes), "topology": job.topology.name,
            "collective": "allreduce", "algo": job.algo,
            "best_host_algo": "+".join(sorted(set(t.chosen))) if job.algo == HOST_BEST else None,
            "bytes": tp.grad_elems * t.itemsize, "dtype": job.dtype, "iterations": job.iterations,
            "start_us": job.start_us, "gap_us": job.gap_us, "alone_us": alone, "emulated_us": shared,
            "slowdown_vs_alone": shared / alone if alone > 0 else 1.0, "iteration_us": per_iter,
            "algbw_GBps": None, "busbw_GBps": None, "wire_bytes": t.wire_bytes * job.iterations,
            "model": t.model, "global_batch": job.train.global_batch, "seq_len": job.train.seq_len,
            "bucket_mb": job.train.bucket_mb, "buckets": len(t.calls), "iteration_alone_us": t.iteration_us,
            "compute_us": tp.compute_us, "exposed_alone_us": t.iteration_us - tp.compute_us,
            "exposed_us": per_iter - tp.compute_us}


def run(args: argparse.Namespace, comm) -> int:
    jf = load_jobs(args.file)
    profile, spec = _check(jf, args, comm)
    wrong, real = [None] * len(jf.jobs), None
    if args.executor == "mpi":
        wrong, real, metrics = _real_data(jf, profile, spec, args.overrides, comm)
        mine = next((i for i, j in enumerate(jf.jobs) if comm.rank in j.nodes.tolist()), None)
        _same_serving(comm, jf, spec, args.overrides, metrics, mine)
    on_rank0(comm, lambda: _model(jf, profile, spec, args, wrong, real), "the jobs' model")
    return 1 if any(w for w in wrong if w) else 0


def _model(jf, profile, spec: str, args: argparse.Namespace, wrong: list, real) -> None:
    """The jobs on the shared fabric (the same for both executors), printed and written (on rank 0 alone)."""
    coll = [i for i, j in enumerate(jf.jobs) if j.workload == "collective"]
    calls, ran = _calls([jf.jobs[i] for i in coll], profile)
    loads: list = []
    out = run_concurrent(calls, jf.topology, profile, loads)
    carried = loads[0] if loads else np.zeros(len(resource_capacity(Fabric(jf.topology, profile))))
    trains = {i: jobs_train.build(j, jf.topology, profile) for i, j in enumerate(jf.jobs) if j.train is not None}
    for t in trains.values():
        carried = carried + t.loads * t.job.iterations
    chains = Chains(jf.topology, profile)
    serves = {i: jobs_serve.build(j, spec, args.overrides, chains) for i, j in enumerate(jf.jobs)
              if j.serve is not None}
    extra = _sharing(jf, chains, dict(zip(coll, calls)), trains, serves)
    first = {i: (sv, extra.get(i)) for i, sv in serves.items()}      # round 0: the idle fabric's batches
    rounds, residual = _reform(jf, chains, dict(zip(coll, calls)), trains, serves, extra, spec, args)
    for sv in serves.values():
        carried = carried + _serve_loads(sv.work, jf.topology, profile)
    timing = dict(zip(coll, zip(out, ran)))
    records = []
    for i, (job, bad) in enumerate(zip(jf.jobs, wrong)):
        if i in trains:
            records.append(_train_record(trains[i], extra.get(i, 0.0)))
        elif i in serves:
            records.append(_serve_record(serves[i], extra.get(i), *first[i], rounds, residual[i],
                                         args.fabric_rounds))
        else:
            t, algo = timing[i]
            shared = t.alone_us + extra[i] if i in extra else t.emulated_us
            records.append(_record(job, t.alone_us, shared, algo, t.wire_bytes))
        records[-1].update(wrong=bad, executor=args.executor, profile=profile.name, fabric=jf.topology.name)
    span = max(j.start_us + r["emulated_us"] for j, r in zip(jf.jobs, records))
    hot = _hot_links(jf, profile, span, carried, args.hot_links)
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
    train = [r for r in records if r["workload"] == "train"]
    if train:
        print("# train jobs (ms): an iteration alone and sharing (gaps left out), its compute, and the "
              "communication exposed past it alone and sharing")
        print(f"#{'job':>9} {'model':>14} {'buckets':>8} {'iter alone':>11} {'iter shared':>11} {'compute':>10} "
              f"{'exposed alone':>13} {'exposed shared':>14}")
        for r in train:
            print(f"{r['job']:>10} {r['model']:>14} {r['buckets']:>8} {r['iteration_alone_us'] / 1e3:11.3f} "
                  f"{r['iteration_us'] / 1e3:11.3f} {r['compute_us'] / 1e3:10.3f} "
                  f"{r['exposed_alone_us'] / 1e3:13.3f} {r['exposed_us'] / 1e3:14.3f}")
    served = [r for r in records if r["workload"] == "serve"]
    if served:
        print("# serve jobs (ms): TTFT and TPOT means and P99s on an idle fabric -> sharing it")
        for r in served:
            print(f"{r['job']:>10} {r['model']:>14} {r['requests']:>5} requests: " + ", ".join(
                f"{k.removesuffix('_ms_mean').replace('_ms_', ' ')} "
                f"{'-' if r[k + '_alone'] is None else format(r[k + '_alone'], '.3f')} -> "
                f"{'-' if r[k] is None else format(r[k], '.3f')}" for k in jobs_serve.METRICS[:4])
                  + f"; {r['slowed_passes']} of {r['iterations']} passes slowed; " + _reformed(r))
    if hot:
        print(f"# busiest links over the run ({hot[0]['span_us']:.3f} us): link, bytes, utilisation")
        for h in hot:
            print(f"#   {h['link']:>16} {h['bytes']:>16,.0f} {100 * h['utilization']:6.1f}%")
        if any(h["utilization"] > 1.0 + 1e-9 for h in hot):
            print("# a link over 100% carries one job's own overlapping steps at once: a routed algorithm's step "
                  "model lets some of them share a link, which the replay does not count as contention "
                  "(docs/model.md §21.6, step 5)")
    if args.executor == "mpi":
        for i in serves:
            print(f"# real data, serve job '{jf.jobs[i].name}': {real[0, i]} calls (the first of each distinct "
                  f"collective), {real[1, i]:,} elements checked")
        total = sum(r["wrong"] for r in records)
        print(f"# out of bounds values : {total} {'OK' if total == 0 else 'FAILED'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"fabric": jf.topology.name, "profile": profile.name, "jobs": records,
                       "hot_links": hot}, f, indent=1)
            f.write("\n")
        print(f"# wrote {len(records)} jobs to {args.json}")


def _reformed(r: dict) -> str:
    """How a serve job's batches re-formed under sharing, in a few words."""
    if not r["fabric_reform_max_rounds"]:
        return "first order (--fabric-rounds 0)"
    if r["fabric_reform_converged"]:
        return (f"batches re-formed in {r['fabric_reform_rounds']} round(s)" if r["fabric_reform_rounds"]
                else "batches stand")
    return (f"NOT converged after {r['fabric_reform_rounds']} rounds (passes move by up to "
            f"{r['fabric_reform_residual_us']:.3f} us; raise --fabric-rounds)")


def _hot_links(jf, profile, span: float, carried: np.ndarray, top: int) -> list[dict]:
    """The ``top`` links with the highest utilisation over the run's span (bytes / capacity / span)."""
    fabric = Fabric(jf.topology, profile)
    links = len(fabric.capacity)
    if span <= 0 or top == 0:
        return []
    util = carried[:links] / (resource_capacity(fabric)[:links] * span)
    order = [int(i) for i in np.argsort(-util, kind="stable")[:top] if carried[i] > 0]
    return [{"link": resource_name(fabric, i), "bytes": float(carried[i]), "utilization": float(util[i]),
             "span_us": span} for i in order]
