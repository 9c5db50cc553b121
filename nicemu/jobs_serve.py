"""Serving jobs of ``nicemu jobs`` (``workload: serve``): one ``nicemu serve`` instance, tensor parallel over
the job's nodes, served first on an idle fabric and then moved onto the fabric it shares with the other jobs.

The instance runs exactly as ``nicemu serve --tp N --fabric alone`` on the job's topology (its batches, its
passes and where each call sits in them). For the shared fabric its passes become one chain
(workloads/jobs_fabric.py); the delays move every pass and every token, and TTFT and TPOT come from the
moved times, beside the idle-fabric ones. docs/model.md §21.6 ("Serve jobs") and §21.7.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from nicemu import serve
from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.registry import is_sparse
from nicemu.errors import CollectiveError, NicemuError, UsageError
from nicemu.progress import Progress
from nicemu.workloads import IterationTimer, run_batching, summarize
from nicemu.workloads.batching import BatchingResult
from nicemu.workloads.comm_backends import DTYPE, ModelComm, algos_for, group_topology
from nicemu.workloads.jobs import Job
from nicemu.workloads.jobs_fabric import ServePass, ServeWork, serve_call
from nicemu.workloads.serve_fabric import (
    Extras,
    InstanceRun,
    Lengthened,
    pass_extras,
    pass_residual,
    shifted,
    unshared,
)

#: metrics reported alone and shared (ms)
METRICS = ("ttft_ms_mean", "ttft_ms_p99", "tpot_ms_mean", "tpot_ms_p99", "e2e_ms_mean")
#: relative difference allowed between a call's cost in serve and its flows' alone span
_SPAN_RTOL = 1e-9


@dataclass
class ServeJob:
    """A serve job's run and its passes as chains. ``result`` holds every pass at its alone duration;
    ``batched`` the timeline its batches were formed on (the same on an idle fabric; a re-formed round's
    passes lengthened by what sharing added the round before, docs/model.md §21.7 step 6)."""

    job: Job
    model: str
    result: BatchingResult
    passes: list
    costs: list
    work: ServeWork
    batched: BatchingResult | None = None

    def summary(self, start_delay=None, end_delay=None) -> dict:
        """Serving metrics of the run, moved by the passes' delays if given."""
        res = self.result
        if start_delay is not None:
            res = shifted(InstanceRun(self.result, self.passes), start_delay, end_delay)
        return summarize(res, self.costs, True)

    def residual(self, delays) -> float:
        """How far (µs) the shared replay moves a pass from where its batch was formed (0: a fixed point)."""
        if delays is None:
            return 0.0
        return pass_residual(self.batched or self.result, self.result, *delays)

    @staticmethod
    def extras(delays) -> Extras:
        """What sharing added to each pass, for the next round's batches."""
        return Extras() if delays is None else Extras(pass_extras(0, *delays))


def _options(job: Job, profile: str, overrides: list[str]) -> argparse.Namespace:
    """``nicemu serve``'s options for the job: its defaults, the job's keys, TP over the job's nodes."""
    p = argparse.ArgumentParser(add_help=False)
    serve.add_arguments(p)
    args = p.parse_args([])
    for key, value in job.serve:
        setattr(args, key, str(value) if key in ("input_len", "output_len") else value)
    args.tp, args.topology, args.algo = len(job.nodes), job.topology.name, job.algo
    args.profile, args.overrides, args.executor, args.fabric = profile, list(overrides), "model", "alone"
    return args


class _Comm:
    size, rank = 1, 0


def check(job: Job, profile: str, overrides: list[str]) -> None:
    """The job's serve options, as nicemu serve checks them (one line naming the job)."""
    try:
        serve._validate(_options(job, profile, overrides), _Comm())
    except NicemuError as exc:
        raise UsageError(f"job '{job.name}': {exc}") from None


def _serve(job: Job, profile_spec: str, overrides: list[str], comm=None, extras: Extras | None = None):
    """The job's requests served on an idle fabric, as ``nicemu serve`` serves them: (result, its passes, its
    costs, topology, profile, model, backend). ``comm``: the job's own ranks, which then move and check the
    data of every distinct call once (``nicemu serve --executor mpi``'s backend); the times are the model's.
    ``extras``: every pass lengthened by what sharing added to it in the round before (re-formed batches)."""
    args = _options(job, profile_spec, overrides)
    _, model, par, topology, profile, acc, sched, requests = serve._validate(args, _Comm())
    labels = algos_for(job.algo, profile.nic.gpudirect)
    if comm is None:
        backend = ModelComm(topology, profile, model, args.seed)
    else:
        from nicemu.workloads.comm_mpi import MpiComm
        backend = MpiComm(comm, topology, profile, model, args.seed, "first")
    timer = IterationTimer(model, acc, par, backend, labels[0], labels[1], labels[2], dtype_bytes=DTYPE.itemsize,
                           p2p_algo=labels[3], instance=0, restore=None, pcie_GBps=profile.pcie.bandwidth_GBps,
                           restore_log={}, swap_in="load")
    timer.passes = []
    step = serve._Step(timer, Progress(0, False), job.algo)
    duration = step if extras is None else Lengthened(step, 0, extras)
    return run_batching(requests, duration, sched), timer.passes, step.costs, topology, profile, model, backend


def idle_summary(job: Job, profile_spec: str, overrides: list[str]) -> dict:
    """The job's serving metrics on an idle fabric from the model (what its real-data run must report)."""
    result, _, costs, *_ = _serve(job, profile_spec, overrides)
    return summarize(result, costs, True)


def real_data(job: Job, profile_spec: str, overrides: list[str], comm) -> tuple[int, int, int, dict]:
    """Serve the job on its own ranks ``comm`` with real data (collective over them): (real-data calls,
    elements checked and elements wrong over its ranks, the run's metrics)."""
    result, _, costs, _, _, _, backend = _serve(job, profile_spec, overrides, comm)
    try:
        runs, checked, wrong = backend.totals()
    finally:
        backend.free()
    return runs, checked, wrong, summarize(result, costs, True)


def build(job: Job, profile_spec: str, overrides: list[str], chains, extras: Extras | None = None) -> ServeJob:
    """Serve the job's requests on an idle fabric (as ``nicemu serve``), then lay its passes out for the
    shared fabric; ``chains``: the jobs' Chains, whose calls alone check the serve costs. ``extras``: a
    re-formed round, its batches formed with every pass lengthened by them, its passes laid out alone."""
    batched, passes, costs, topology, profile, model, backend = _serve(job, profile_spec, overrides, None, extras)
    result = batched if extras is None else unshared(batched, 0, extras)
    schedules: dict[tuple, object] = {}
    out = []
    for it, p in zip(result.iterations, passes):
        calls = []
        for j, rec in enumerate(p.records):
            if rec.collective == "p2p":
                raise CollectiveError("internal: a serve job of one tensor-parallel instance makes no transfers")
            key = backend.key(rec)
            sched = schedules.get(key)
            if sched is None and is_sparse(rec.algo):        # the spot protocol's messages (§21.6)
                sched = schedules[key] = backend.sparse_flows(rec)
            elif sched is None:
                group = group_topology(topology, rec.nodes)
                count = rec.bytes // (len(rec.nodes) * DTYPE.itemsize) if rec.collective == "alltoall" else \
                    rec.bytes // DTYPE.itemsize
                sched = schedules[key] = call_schedule(rec.collective, rec.algo, group, profile, count,
                                                       DTYPE.itemsize)[0]
            nodes = job.nodes[np.asarray(rec.nodes, dtype=np.int64)]
            span = serve_call(chains, sched, nodes, DTYPE.itemsize).span_us
            cost = float(p.cost_us[j])
            if abs(span - cost) > _SPAN_RTOL * max(abs(cost), 1.0):
                raise CollectiveError(f"internal: {rec.collective} {rec.algo} of {rec.bytes} B takes {span} us as "
                                      f"flows but {cost} us in serve")
            calls.append((sched, nodes, job.start_us + it.start_us + p.swap_us + float(p.offset_us[j])))
        out.append(ServePass(job.start_us + it.start_us, job.start_us + it.start_us + it.duration_us, tuple(calls)))
    work = ServeWork(job.name, DTYPE.itemsize, tuple(out))
    return ServeJob(job, model.name, result, passes, costs, work, batched)
