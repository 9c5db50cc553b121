"""Training jobs of ``nicemu jobs`` (``workload: train``): ``nicemu train``'s data-parallel iteration on a
job's nodes of the shared fabric.

Each iteration computes forward and backward on the job's share of the global batch and AllReduces the
gradient buckets as backward produces them (workloads/training.py); the buckets share the fabric with each
other, as in ``nicemu train``. Alone, the job's iteration is that of ``nicemu train`` with the buckets placed
on the job's nodes of the fabric; beside other jobs, its iterations are chained (workloads/jobs_fabric.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nicemu.collectives.api.checks import check_algo, check_dtype_op
from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.concurrent import Call, run_concurrent
from nicemu.collectives.registry import get, is_sparse
from nicemu.errors import NicemuError, UsageError
from nicemu.nic.ops import is_integer
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus
from nicemu.workloads import embedding_models
from nicemu.workloads.accelerators import load_accelerator
from nicemu.workloads.jobs import Job
from nicemu.workloads.jobs_fabric import JobWork
from nicemu.workloads.models import load_model
from nicemu.workloads.training import TrainPlan, plan

#: what to change when a train job's buckets do not fit with real data
TOO_BIG = ("use --executor model for timing only, more hosts under mpiexec, or a smaller model or bucket_mb (the "
           "embedding and LM head are buckets of their own)")


@dataclass
class TrainJob:
    """A train job's plan, its buckets' calls on its nodes, and its iteration alone on the fabric."""

    job: Job
    model: str
    itemsize: int
    plan: TrainPlan
    calls: list[Call]
    chosen: list[str]           # the algorithm each bucket ran (host-best's choice)
    iteration_us: float         # alone on the fabric: backward and every bucket done
    wire_bytes: int             # per iteration
    loads: np.ndarray           # bytes per fabric resource, per iteration

    @property
    def alone_us(self) -> float:
        j = self.job
        return j.iterations * self.iteration_us + (j.iterations - 1) * j.gap_us

    def work(self) -> JobWork:
        j = self.job
        return JobWork(j.name, j.nodes, self.itemsize, tuple((c.schedule, c.start_us) for c in self.calls),
                       self.plan.compute_us, j.start_us, j.iterations, j.gap_us, False)


def check_dense(algo: str, why: str) -> None:
    """A known algorithm that the model times on dense data (one line otherwise)."""
    check_algo(algo)
    if is_sparse(algo) or not get(algo).emulated:
        raise UsageError(f"algo {algo}: {why}; use e.g. ring, host-best or directreduce")


def check(job: Job) -> None:
    """A train job's algorithm, gradient type, model, accelerator and batch (one line naming the job)."""
    spec = job.train
    where = f"job '{job.name}'"
    try:
        check_dense(job.algo, "a train job reduces dense gradients")
        dtype = check_dtype_op(spec.grad_dtype, "sum")
        if is_integer(dtype):
            raise UsageError(f"grad_dtype {spec.grad_dtype}: gradients are floating point; use float32 or bfloat16")
        if embedding_models.find(spec.model) is not None:
            raise UsageError(f"model {spec.model} is an embedding model, which nicemu train runs; a train job "
                             "takes a transformer preset or config.json")
        load_model(spec.model)
        load_accelerator(spec.accelerator)
    except NicemuError as exc:
        raise UsageError(f"{where}: {exc}") from None
    if spec.global_batch % len(job.nodes):
        raise UsageError(f"{where}: global_batch {spec.global_batch} does not split over its {len(job.nodes)} "
                         f"nodes; use a multiple of {len(job.nodes)}")


def job_plan(job: Job) -> tuple[TrainPlan, np.dtype, str]:
    """One iteration's compute and buckets on one of the job's nodes, the gradients' type and the model's name."""
    spec = job.train
    model, acc = load_model(spec.model), load_accelerator(spec.accelerator)
    dtype = check_dtype_op(spec.grad_dtype, "sum")
    tp = plan(model, acc, spec.global_batch // len(job.nodes), spec.seq_len, dtype.itemsize,
              int(spec.bucket_mb * 2**20))
    return tp, dtype, model.name


def real_data(emu, job: Job, tp: TrainPlan, dtype: np.dtype) -> int:
    """Every bucket of the job really reduced once on its ranks (``nicemu train``'s real-data path): the
    elements wrong against numpy."""
    from nicemu.bench import _run_mpi, data_options
    return sum(_run_mpi(emu, data_options("allreduce", b.index, 1), job.algo, dtype, b.elems * dtype.itemsize)["wrong"]
               for b in tp.buckets)


def build(job: Job, fabric: Torus, profile: Profile) -> TrainJob:
    """The job's buckets on its nodes, and its iteration alone on ``fabric`` (as ``nicemu train`` times it)."""
    tp, dtype, model = job_plan(job)
    itemsize = dtype.itemsize
    cache: dict[int, tuple] = {}
    calls, chosen = [], []
    for b in tp.buckets:
        if b.elems not in cache:
            cache[b.elems] = call_schedule("allreduce", job.algo, job.topology, profile, b.elems, itemsize)
        sched, name = cache[b.elems]
        calls.append(Call(sched, job.nodes, itemsize, start_us=b.ready_us))
        chosen.append(name)
    loads: list = []
    out = run_concurrent(calls, fabric, profile, loads)
    it = max([tp.compute_us, *(c.start_us + t.emulated_us for c, t in zip(calls, out))])
    return TrainJob(job, model, itemsize, tp, calls, chosen, it, sum(t.wire_bytes for t in out), loads[0])
