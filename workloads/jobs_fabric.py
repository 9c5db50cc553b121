"""Jobs of iterations on one fabric as chains (collectives/model/chains.py): every iteration of a job starts
when its previous one has ended on all the job's nodes, so what another job's traffic costs one iteration
delays all the job's later ones.

A job's iteration is a set of calls, each at a fixed offset from the iteration's start (a collective job: one
call at 0; a data-parallel training job: its gradient buckets at the times backward produces them), and a
compute time the iteration lasts at least. On the chains an iteration is a start marker, its calls placed
after it, and an end marker that waits for each call's end with slack ``T − (offset + span)`` and for the
start with slack ``T − compute``, ``T`` being the iteration's contention-free length. The next iteration
starts ``gap_us`` after that end (a gap is compute: it absorbs no delay). docs/model.md §21.6.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nicemu.collectives.model.chains import Chains, overlapping_calls
from nicemu.collectives.model.concurrent import MAX_FLOWS, connected
from nicemu.collectives.model.sparse_flows import SparseFlows
from nicemu.collectives.schedules.steps import Schedule
from nicemu.errors import CollectiveError


@dataclass(frozen=True)
class JobWork:
    """What one job puts on the fabric, per iteration and alone."""

    name: str
    nodes: np.ndarray                              # physical node of each of the job's logical nodes
    itemsize: int
    calls: tuple[tuple[Schedule, float], ...]      # (schedule on the job's topology, offset from the start µs)
    compute_us: float                              # the iteration lasts at least this long
    start_us: float
    iterations: int
    gap_us: float
    in_order: bool                                 # its calls run one after another (one chain of calls)


#: rounds of looking for serve calls that newly overlap another job after a replay moved them; then all replay
MAX_ROUNDS = 8


@dataclass(frozen=True)
class ServePass:
    """One serving pass alone: its window (µs, absolute) and its calls in issue order."""

    start_us: float
    end_us: float
    # (a dense call's schedule or a sparse call's messages, physical nodes, start µs absolute)
    calls: tuple[tuple[Schedule | SparseFlows, np.ndarray, float], ...]


@dataclass(frozen=True)
class ServeWork:
    """A serving instance's passes on the fabric."""

    name: str
    itemsize: int
    passes: tuple[ServePass, ...]


def serve_call(chains: Chains, call: Schedule | SparseFlows, nodes: np.ndarray, itemsize: int):
    """A serve call alone on the chains: a dense collective's transfers, or a sparse one's messages."""
    key = ("serve", id(call), itemsize, nodes.tobytes())
    if isinstance(call, SparseFlows):
        return chains.sparse(key, call, nodes)
    return chains.collective(key, call, nodes, itemsize)


def _alone(chains: Chains, job: JobWork, schedule: Schedule):
    key = ("job", id(schedule), job.itemsize, np.asarray(job.nodes).tobytes())
    return chains.collective(key, schedule, job.nodes, job.itemsize)


def uses(chains: Chains, job: JobWork | ServeWork) -> frozenset[int]:
    """Every resource (link, node resource) the job's calls load."""
    out: set[int] = set()
    if isinstance(job, ServeWork):
        seen = set()
        for p in job.passes:
            for sched, nodes, _ in p.calls:
                if (id(sched), nodes.tobytes()) not in seen:
                    seen.add((id(sched), nodes.tobytes()))
                    out |= serve_call(chains, sched, nodes, job.itemsize).uses
        return frozenset(out)
    for sched, _ in job.calls:
        out |= _alone(chains, job, sched).uses
    return frozenset(out)


def components(chains: Chains, jobs: Sequence[JobWork | ServeWork]) -> list[list[int]]:
    """Groups of jobs connected by shared resources; a job alone in its group shares nothing."""
    return connected([np.array(sorted(uses(chains, j)), dtype=np.int64) for j in jobs])


def _flows(chains: Chains, jobs: Sequence[JobWork | ServeWork], masks: dict[int, np.ndarray]) -> int:
    n = 0
    for k, j in enumerate(jobs):
        if isinstance(j, ServeWork):
            calls = [(s, v) for p in j.passes for s, v, _ in p.calls]
            keep = masks.get(k, np.ones(len(calls), dtype=bool))
            n += sum(len(serve_call(chains, s, v, j.itemsize).first) + 1 for (s, v), x in zip(calls, keep) if x)
            n += 2 * len(j.passes)
        else:
            n += j.iterations * sum(len(_alone(chains, j, s).first) + 1 for s, _ in j.calls)
    return n


def _lay_serve(chains: Chains, job: ServeWork, chain: int, keep: np.ndarray | None) -> tuple[list[int], list[int]]:
    """A serving instance's passes as one chain: (start marker, end marker) of every pass. Only the calls in
    ``keep`` (all if None) become flows; the others pass their delay on, as a call that meets nothing does."""
    starts, ends = [], []
    prev, prev_end = None, 0.0
    i = 0
    for p in job.passes:
        s = chains.marker(p.start_us, [] if prev is None else [(prev, max(0.0, p.start_us - prev_end))])
        at = s
        for sched, nodes, t in p.calls:
            if keep is None or keep[i]:
                at = chains.place(serve_call(chains, sched, nodes, job.itemsize), t, at, chain)
            i += 1
        prev = chains.marker(p.end_us, [(at, 0.0)])
        prev_end = p.end_us
        starts.append(s)
        ends.append(prev)
    return starts, ends


def end_delays(chains: Chains, jobs: Sequence[JobWork | ServeWork], masks: dict[int, np.ndarray] | None = None
               ) -> list:
    """Replay ``jobs`` together: how much later than contention-free each job's last iteration ends (µs); for
    a serving job, (start delays, end delays) of its passes. ``masks``: per serving job (its index in
    ``jobs``), which of its calls (in pass and issue order) become flows; default all."""
    masks = masks or {}
    flows = _flows(chains, jobs, masks)
    if flows > MAX_FLOWS:
        raise CollectiveError(f"jobs {', '.join(j.name for j in jobs)} make {flows:,} flows over all their "
                              f"iterations, over the {MAX_FLOWS:,} the fabric replay holds in memory; use fewer "
                              "iterations or requests, larger gradient buckets or a smaller model")
    chains.clear()
    last: list = []
    for k, job in enumerate(jobs):
        if isinstance(job, ServeWork):
            last.append(_lay_serve(chains, job, k, masks.get(k)))
            continue
        placed = [(_alone(chains, job, s), off) for s, off in job.calls]
        length = max([job.compute_us, *(off + a.span_us for a, off in placed)])
        t = job.start_us
        start = chains.marker(t)
        for i in range(job.iterations):
            ends = [(chains.place(a, t + off, start, k if job.in_order else None), length - off - a.span_us)
                    for a, off in placed]
            end = chains.marker(t + length, [(start, length - job.compute_us), *ends])
            t += length
            if i + 1 < job.iterations:
                start = chains.marker(t + job.gap_us, [(end, 0.0)]) if job.gap_us > 0 else end
                t += job.gap_us
        last.append(end)
    d = chains.run().delay
    return [(d[x[0]], d[x[1]]) if isinstance(x, tuple) else float(d[x]) for x in last]


def sharing_delays(chains: Chains, jobs: Sequence[JobWork | ServeWork]) -> list:
    """Per job: what sharing the fabric with the others adds to its end, over its own replay alone (its
    calls' contention among themselves, which its alone time already holds); for a serving job, its passes'
    (start, end) delays (one instance alone is one chain, which keeps its alone times exactly)."""
    shared = _with_serve_search(chains, jobs) if any(isinstance(j, ServeWork) for j in jobs) else \
        end_delays(chains, jobs)
    return [d if isinstance(j, ServeWork) else d - end_delays(chains, [j])[0] for j, d in zip(jobs, shared)]


def _with_serve_search(chains: Chains, jobs: Sequence[JobWork | ServeWork]) -> list:
    """Replay with only the serve calls that meet another job as flows: a serve call whose window overlaps
    another job's (a collective or train job's whole span, another serve job's call) on a common resource.
    A replay moves windows, so the search repeats on the moved ones (as serve does, §21.7) until no new
    call is found; after ``MAX_ROUNDS`` rounds every serve call is replayed."""
    start, end, chain, owner, loads = [], [], [], [], []
    for k, j in enumerate(jobs):
        if isinstance(j, ServeWork):
            for p_i, p in enumerate(j.passes):
                for sched, nodes, t in p.calls:
                    a = serve_call(chains, sched, nodes, j.itemsize)
                    start.append(t)
                    end.append(t + a.span_us)
                    chain.append(k)
                    owner.append((k, p_i))
                    loads.append(a.uses)
        else:
            free = (j.iterations * max([j.compute_us, *(off + _alone(chains, j, s).span_us for s, off in j.calls)])
                    + (j.iterations - 1) * j.gap_us)
            start.append(j.start_us)
            end.append(j.start_us + free)
            chain.append(k)
            owner.append((k, -1))
            loads.append(uses(chains, j))
    start_a, end_a, chain_a = np.array(start), np.array(end), np.array(chain, dtype=np.int64)
    is_serve = np.array([isinstance(jobs[k], ServeWork) for k in chain], dtype=bool)
    chosen = ~is_serve
    moved_start, moved_end = start_a, end_a
    out = None
    for rounds in range(MAX_ROUNDS + 1):
        a, b = overlapping_calls(moved_start, moved_end, chain_a)
        new = np.zeros(len(start), dtype=bool)
        for x, y in zip(a.tolist(), b.tolist()):
            if loads[x] & loads[y]:
                new[x] = new[y] = True
        new &= ~chosen
        if out is not None and not new.any():
            break
        if rounds == MAX_ROUNDS:
            new = ~chosen
        chosen |= new
        masks = {}
        for k, j in enumerate(jobs):
            if isinstance(j, ServeWork):
                masks[k] = chosen[chain_a == k]
        out = end_delays(chains, jobs, masks)
        sd = np.zeros(len(start))
        ed = np.zeros(len(start))
        for i, (k, p_i) in enumerate(owner):
            if p_i >= 0:
                sd[i], ed[i] = out[k][0][p_i], out[k][1][p_i]
            else:
                ed[i] = out[k]
        moved_start, moved_end = start_a + sd, end_a + ed
    return out
