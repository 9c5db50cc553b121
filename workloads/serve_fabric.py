"""``serve --fabric shared``: the instances of a deployment, and the KV caches moving between them, share
the fabric's links and PCIe instead of each call running on an idle fabric.

Serving runs every instance on its own timeline first (docs/model.md §8: each call starts idle), which
fixes each pass's batch, its calls and where they sit in the pass (compute and calls in issue order,
:func:`~nicemu.workloads.iteration_time.call_offsets`). This module then puts all of them on one fabric
(collectives/model/chains.py): every instance is a chain of passes, a pass a chain of calls; a pass
starts when the previous one has ended, or when its requests have arrived (that wait is slack that
absorbs delay); a decode instance's pass that takes in a request first waits for its KV cache; a KV
transfer starts when its prompt's pass ends. Calls of different chains whose windows overlap and that
load a common resource are replayed as flows under max-min sharing; the others pass their delay on
unchanged. Replaying moves windows, so overlaps are looked for again until no new one appears.

That replay keeps every batch's composition (the first-order result, round 0). A slower pass would in a
deployment let more requests arrive before the next batch forms, so serve re-forms the batches
(docs/model.md §21.7): round ``r`` serves the requests again with every pass lengthened by what sharing
added to the same pass (instance, pass index) of round ``r - 1``, and every KV transfer by what it added
to the same request's, then replays the new passes laid out at their alone durations
(:class:`Extras`, ``run_on_shared_fabric(..., extras=)``). It stops when no pass's start or end and no
KV landing moves by more than :data:`REFORM_TOL_US` between the batching's timeline and the replay's.
Sparse calls (an embedding AllReduce through OmNICCL or OmniReduce) share the fabric as the spot
protocol's messages (collectives/model/sparse_flows.py, ``Chains.sparse``) when the caller says how to build
them (``sparse=``); without it they keep their alone time and load nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.chains import Chains, overlapping_calls
from nicemu.collectives.model.sparse_flows import SparseFlows
from nicemu.collectives.registry import is_sparse
from nicemu.errors import CollectiveError
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus
from nicemu.workloads.batching import BatchingResult
from nicemu.workloads.comm_backends import DTYPE, group_topology
from nicemu.workloads.iteration_time import PassCalls
from nicemu.workloads.traffic import TrafficRecord

#: rounds of looking for new overlaps after a replay has moved the windows
MAX_ROUNDS = 8
#: relative difference allowed between a call's cost in serve and its flows' alone span
_SPAN_RTOL = 1e-9
#: re-formed batches have converged when nothing moves by more than this (µs) between rounds
REFORM_TOL_US = 1e-3
#: re-formed rounds at most, by default (``serve --fabric-rounds``)
DEFAULT_REFORM_ROUNDS = 4


@dataclass
class Extras:
    """What sharing added in one round (µs), to lengthen the next round's batching by: per pass, keyed by
    (instance number, pass index), its end delay minus its start delay; per KV transfer, keyed by request
    id, its landing's delay minus its start's."""

    passes: dict[tuple[int, int], float] = field(default_factory=dict)
    kv: dict[int, float] = field(default_factory=dict)

    def of_pass(self, instance: int, index: int) -> float:
        return self.passes.get((instance, index), 0.0)


class Lengthened:
    """A re-formed round's duration callback: the pass's own duration (``timer``, anything with ``costs``)
    plus what sharing added to the same pass (instance, index) in the round before."""

    def __init__(self, timer, instance: int, extras: Extras) -> None:
        self.timer, self.instance, self.extras = timer, instance, extras

    @property
    def costs(self):
        return self.timer.costs

    def __call__(self, it) -> float:
        return self.timer(it) + self.extras.of_pass(self.instance, it.index)


def pass_extras(instance: int, start_delay: np.ndarray, end_delay: np.ndarray) -> dict[tuple[int, int], float]:
    """What a replay added to each pass of one instance (its end delay minus its start delay), to lengthen
    the next round's batching by (:class:`Extras`)."""
    return {(instance, k): float(x) for k, x in enumerate(np.maximum(0.0, end_delay - start_delay)) if x > 0}


def pass_residual(batched: BatchingResult, unshared_run: BatchingResult, start_delay: np.ndarray,
                  end_delay: np.ndarray) -> float:
    """The largest move (µs) of a pass's start or end from the timeline its batches were formed on
    (``batched``) to the replay of them (``unshared_run`` laid out alone, moved by the delays)."""
    if not batched.iterations:
        return 0.0
    b_end = np.array([it.start_us + it.duration_us for it in batched.iterations])
    u_end = np.array([it.start_us + it.duration_us for it in unshared_run.iterations])
    # a pass starts where it was batched, plus its start delay (the unshared run keeps the starts)
    return max(float(np.abs(start_delay).max()), float(np.abs(u_end + end_delay - b_end).max()))


@dataclass
class InstanceRun:
    """One instance's own run and the calls of its passes (``passes[k]`` is ``result.iterations[k]``'s)."""

    result: BatchingResult
    passes: list[PassCalls]
    prefilled: bool = False       # a decode instance: requests arrive with their KV cache


@dataclass
class KvMove:
    """One request's KV cache, from prefill instance ``source`` to decode instance ``target`` (indices into
    the instance list), starting when its prompt's pass ends and landing ``kv_us`` later, alone."""

    request_id: int
    source: int
    target: int
    start_us: float
    kv_us: float
    records: list[TrafficRecord]
    costs: list[float]


@dataclass
class SharedTiming:
    """Delays against the idle-fabric run (µs): per instance, of each pass's start and end; per KV move."""

    start_delay: list[np.ndarray]
    end_delay: list[np.ndarray]
    kv_delay: dict[int, float] = field(default_factory=dict)         # request id -> its landing's delay
    kv_start_delay: dict[int, float] = field(default_factory=dict)   # ... and its start's
    rounds: int = 0
    replayed_calls: int = 0
    flows: int = 0
    slowed_flows: int = 0
    instances: list[int] = field(default_factory=list)   # the instance number of each entry of the delays
    residual_us: float = 0.0      # the largest move of a pass's start or end, or a KV landing, against the
                                  # timeline the batches were formed on (run_on_shared_fabric)

    def extras(self) -> Extras:
        """What this replay added to each pass and KV transfer, for the next round of batching."""
        out = Extras()
        for num, s, e in zip(self.instances, self.start_delay, self.end_delay):
            out.passes.update(pass_extras(num, s, e))
        for rid, land in self.kv_delay.items():
            x = land - self.kv_start_delay.get(rid, 0.0)
            if x > 0:
                out.kv[rid] = float(x)
        return out

    @property
    def slowed_passes(self) -> int:
        """Passes that took longer than alone."""
        return int(sum(np.count_nonzero(e - s > 1e-9) for s, e in zip(self.start_delay, self.end_delay)))


class _Calls:
    """Every call of the run that could share the fabric, with its window alone and its chain."""

    def __init__(self) -> None:
        self.start: list[np.ndarray] = []
        self.end: list[np.ndarray] = []
        self.chain: list[np.ndarray] = []
        self.key: list[np.ndarray] = []
        self.where: list[tuple[int, int, np.ndarray]] = []    # (chain, pass or KV index, record positions)


#: a sparse record's call alone, as the spot protocol's messages (ModelComm.sparse_flows)
SparseOf = Callable[[TrafficRecord], SparseFlows]


def run_shared(topology: Torus, profile: Profile, instances: Sequence[InstanceRun],
               moves: Sequence[KvMove], chains: Chains | None = None, sparse: SparseOf | None = None
               ) -> SharedTiming:
    """Replay the run's instances and KV moves on one fabric (see the module docstring); ``chains``: one
    already holding some calls alone, to reuse; ``sparse``: how a sparse record's messages are made (None:
    sparse calls stay off the fabric)."""
    chains = chains or Chains(topology, profile)
    keys: dict[tuple, int] = {}
    records: list[TrafficRecord] = []

    def key_of(rec: TrafficRecord) -> int:
        k = _record_key(rec)
        i = keys.get(k)
        if i is None:
            i = keys[k] = len(records)
            records.append(rec)
        return i

    # alone windows: every call of every pass, then every KV move's records (their own chains)
    table = _Calls()
    starts = [np.array([it.start_us for it in inst.result.iterations]) for inst in instances]
    ends = [np.array([it.start_us + it.duration_us for it in inst.result.iterations]) for inst in instances]
    for c, inst in enumerate(instances):
        if len(inst.passes) != len(inst.result.iterations):
            raise CollectiveError(f"internal: instance {c} has {len(inst.passes)} passes for "
                                  f"{len(inst.result.iterations)} iterations")
        for k, p in enumerate(inst.passes):
            keep = np.array([sparse is not None or not is_sparse(r.algo) for r in p.records], dtype=bool)
            if not keep.any():
                continue
            pos = np.flatnonzero(keep)
            s = starts[c][k] + p.swap_us + p.offset_us[pos]
            table.start.append(s)
            table.end.append(s + p.cost_us[pos])
            table.chain.append(np.full(len(pos), c))
            table.key.append(np.array([key_of(p.records[j]) for j in pos], dtype=np.int64))
            table.where.append((c, k, pos))
    landing_alone = {m.request_id: m.start_us + m.kv_us for m in moves}
    links = _kv_links(instances, ends)
    for j, m in enumerate(moves):
        pos = np.arange(len(m.records))
        s = np.full(len(pos), m.start_us)
        table.start.append(s)
        table.end.append(s + np.asarray(m.costs, dtype=np.float64))
        table.chain.append(np.full(len(pos), len(instances) + j))
        table.key.append(np.array([key_of(r) for r in m.records], dtype=np.int64))
        table.where.append((len(instances) + j, -1, pos))
    if not table.start:
        return _zero(instances)
    start, end = np.concatenate(table.start), np.concatenate(table.end)
    chain, key = np.concatenate(table.chain), np.concatenate(table.key)
    block = np.repeat(np.arange(len(table.where)), [len(s) for s in table.start])
    slot = np.concatenate([np.arange(len(s)) for s in table.start])

    alone: dict[int, object] = {}

    def alone_of(i: int):
        a = alone.get(i)
        if a is None:
            a = alone[i] = _alone(chains, topology, profile, records[i], sparse)
        return a

    shares: dict[tuple[int, int], bool] = {}

    def share(a: int, b: int) -> bool:
        k = (a, b) if a <= b else (b, a)
        hit = shares.get(k)
        if hit is None:
            hit = shares[k] = bool(alone_of(a).uses & alone_of(b).uses)
        return hit

    replayed = np.zeros(len(start), dtype=bool)
    out = _zero(instances)
    rounds = 0
    moved_start, moved_end = start.copy(), end.copy()
    while rounds < MAX_ROUNDS:
        found = overlapping_calls(moved_start, moved_end, chain)
        if len(found[0]):
            a, b = found
            hit = np.fromiter((share(int(x), int(y)) for x, y in zip(key[a], key[b])), dtype=bool, count=len(a))
            new = np.zeros(len(start), dtype=bool)
            new[a[hit]] = True
            new[b[hit]] = True
            new &= ~replayed
        else:
            new = np.zeros(len(start), dtype=bool)
        if not new.any():
            break
        replayed |= new
        rounds += 1
        out = _replay(chains, instances, moves, table, block, slot, replayed, key, alone_of, starts, ends,
                      landing_alone, links)
        moved_start, moved_end = _moved(out, table, block, start, end, len(instances))
    out.rounds = rounds
    out.replayed_calls = int(replayed.sum())
    return out


def _zero(instances: Sequence[InstanceRun]) -> SharedTiming:
    z = [np.zeros(len(inst.result.iterations)) for inst in instances]
    return SharedTiming(z, [x.copy() for x in z])


def _record_key(rec: TrafficRecord) -> tuple:
    """What a record's call on the fabric depends on (not its iteration; its ``what`` only for a sparse call,
    whose blocks are an embedding's rows or an activation's, all non-zero)."""
    return rec.collective, rec.algo, rec.bytes, rec.nodes, is_sparse(rec.algo) and rec.what == "embedding"


def _alone(chains: Chains, topology: Torus, profile: Profile, rec: TrafficRecord, sparse: SparseOf | None = None):
    """The call a record makes, alone on the fabric (cached in ``chains`` by the record's key)."""
    key = _record_key(rec)
    if is_sparse(rec.algo):
        if sparse is None:
            raise CollectiveError(f"internal: sparse {rec.algo} call replayed without its messages")
        hit = chains.cached(key)
        return hit if hit is not None else chains.sparse(key, sparse(rec), np.asarray(rec.nodes, dtype=np.int64))
    if rec.collective == "p2p":
        half = len(rec.nodes) // 2
        pairs = list(zip(rec.nodes[:half], rec.nodes[half:]))
        return chains.transfers(key, pairs, rec.bytes, rec.algo.removeprefix("p2p-"))
    group = group_topology(topology, rec.nodes)
    count = rec.bytes // (len(rec.nodes) * DTYPE.itemsize) if rec.collective == "alltoall" else \
        rec.bytes // DTYPE.itemsize
    sched, _ = call_schedule(rec.collective, rec.algo, group, profile, count, DTYPE.itemsize)
    return chains.collective(key, sched, rec.nodes, DTYPE.itemsize)


def _moved(out: SharedTiming, table: _Calls, block: np.ndarray, start: np.ndarray, end: np.ndarray,
           n_inst: int) -> tuple[np.ndarray, np.ndarray]:
    """The calls' windows widened by their pass's (or KV move's) delays: start by its start's, end by its end's."""
    ds = np.zeros(len(table.where))
    de = np.zeros(len(table.where))
    land = list(out.kv_delay.values())          # in the order of the moves, as _replay makes them
    leave = list(out.kv_start_delay.values())
    for i, (c, k, _) in enumerate(table.where):
        if c < n_inst:
            ds[i], de[i] = out.start_delay[c][k], out.end_delay[c][k]
        elif land:
            ds[i], de[i] = leave[c - n_inst], land[c - n_inst]
    return start + ds[block], end + de[block]


def _kv_links(instances: Sequence[InstanceRun], ends: list[np.ndarray]
              ) -> tuple[dict[int, tuple[int, int]], dict[tuple[int, int], list[int]]]:
    """Where KV moves attach: request -> (instance, pass) that ends its prompt; (decode instance, pass) -> the
    requests that pass takes in."""
    prompt_end: dict[int, tuple[int, int]] = {}
    taken_in: dict[tuple[int, int], list[int]] = {}
    for c, inst in enumerate(instances):
        at = {float(e): k for k, e in enumerate(ends[c])}
        for r in inst.result.requests:
            if not r.token_us:
                continue
            if inst.prefilled:
                if r.admitted_iteration is not None:
                    taken_in.setdefault((c, r.admitted_iteration), []).append(r.id)
            else:
                prompt_end[r.id] = (c, at[float(r.token_us[0])])
    return prompt_end, taken_in


def _replay(fresh: Chains, instances, moves, table: _Calls, block, slot, replayed, key, alone_of, starts, ends,
            landing_alone, links) -> SharedTiming:
    """One replay with the calls marked in ``replayed`` as flows; the rest pass their delay on."""
    fresh.clear()
    mine: dict[tuple[int, int], list[tuple[int, int]]] = {}     # (chain, pass) -> (record position, row)
    for i in np.flatnonzero(replayed):
        c, k, pos = table.where[block[i]]
        mine.setdefault((c, k), []).append((int(pos[slot[i]]), int(i)))
    n_inst = len(instances)
    prompt_end, taken_in = links
    end_marker: dict[tuple[int, int], int] = {}
    start_marker: dict[tuple[int, int], int] = {}
    # a pass without replayed calls or KV dependencies gets no marker: its delay is max(0, d - slack) of the
    # marker before it, with the idle time since summed (max(0, max(0, x - a) - b) = max(0, x - a - b))
    skipped: dict[tuple[int, int], tuple[int | None, float]] = {}
    needed = {prompt_end[m.request_id] for m in moves}
    landing: dict[int, int] = {}

    def move(j: int) -> None:
        m = moves[j]
        c, k = prompt_end[m.request_id]
        after = end_marker[(c, k)]
        deps = []
        for p, row in mine.get((n_inst + j, -1), []):
            done = fresh.place(alone_of(int(key[row])), m.start_us, after)
            deps.append((done, m.kv_us - m.costs[p]))
        deps = deps or [(after, 0.0)]
        landing[m.request_id] = fresh.marker(m.start_us + m.kv_us, deps)

    # chains in time order of their passes: a decode pass's KV dependencies come from prefill passes
    # that end before it starts, so prefill instances are laid down first, then the moves, then decode
    order = [c for c in range(n_inst) if not instances[c].prefilled] + \
            [c for c in range(n_inst) if instances[c].prefilled]
    moved = False
    for c in order:
        if instances[c].prefilled and not moved:
            for j in range(len(moves)):
                move(j)
            moved = True
        inst = instances[c]
        prev, acc = None, 0.0
        for k, p in enumerate(inst.passes):
            gap = max(0.0, float(starts[c][k] - ends[c][k - 1])) if k else 0.0
            calls = mine.get((c, k))
            kv_in = taken_in.get((c, k), [])
            if not calls and not kv_in and (c, k) not in needed:
                # nothing of it is replayed or waited for: its delay follows from the last marker's (below)
                acc += gap
                skipped[(c, k)] = (prev, acc)
                continue
            deps = [] if prev is None else [(prev, acc + gap)]
            acc = 0.0
            for rid in kv_in:
                deps.append((landing[rid], max(0.0, float(starts[c][k] - landing_alone[rid]))))
            if calls:
                s = fresh.marker(float(starts[c][k]), deps)
                start_marker[(c, k)] = s
                at = s
                for j, row in sorted(calls):
                    t = float(starts[c][k] + p.swap_us + p.offset_us[j])
                    a = alone_of(int(key[row]))
                    _check_span(a.span_us, float(p.cost_us[j]), p.records[j])
                    at = fresh.place(a, t, at, chain=c)
                prev = end_marker[(c, k)] = fresh.marker(float(ends[c][k]), [(at, 0.0)])
            else:
                prev = end_marker[(c, k)] = fresh.marker(float(ends[c][k]), deps)
    if not moved:
        for j in range(len(moves)):
            move(j)
    res = fresh.run()
    d = res.delay
    sd, ed = [], []
    for c, inst in enumerate(instances):
        n = len(inst.passes)
        e = np.array([d[end_marker[(c, k)]] if (c, k) in end_marker else
                      (0.0 if skipped[(c, k)][0] is None else max(0.0, d[skipped[(c, k)][0]] - skipped[(c, k)][1]))
                      for k in range(n)])
        s = np.array([d[start_marker[(c, k)]] if (c, k) in start_marker else e[k] for k in range(n)])
        sd.append(s)
        ed.append(e)
    kv = {m.request_id: float(d[landing[m.request_id]]) for m in moves}
    kv_start = {m.request_id: float(ed[prompt_end[m.request_id][0]][prompt_end[m.request_id][1]]) for m in moves}
    return SharedTiming(sd, ed, kv, kv_start, 0, 0, res.flows, res.slowed_flows)


def _check_span(span: float, cost: float, rec: TrafficRecord) -> None:
    if abs(span - cost) > _SPAN_RTOL * max(abs(cost), 1.0):
        raise CollectiveError(f"internal: {rec.collective} {rec.algo} of {rec.bytes} B on {len(rec.nodes)} nodes "
                              f"takes {span} us as flows but {cost} us in serve")


def shifted(inst: InstanceRun, start_delay: np.ndarray, end_delay: np.ndarray,
            landing: dict[int, float] | None = None) -> BatchingResult:
    """The instance's run with its passes moved by the delays: each token appears when its pass ends, a
    decode instance's first token of a request when its KV cache lands (``landing``: delay per request)."""
    res = inst.result
    at = {it.start_us + it.duration_us: k for k, it in enumerate(res.iterations)}
    logs = [replace(it, start_us=it.start_us + float(start_delay[k]),
                    duration_us=it.duration_us + float(end_delay[k] - start_delay[k]))
            for k, it in enumerate(res.iterations)]
    reqs = []
    for r in res.requests:
        tokens = []
        for i, t in enumerate(r.token_us):
            if i == 0 and inst.prefilled:
                tokens.append(t + (landing or {}).get(r.id, 0.0))
            else:
                tokens.append(t + float(end_delay[at[t]]))
        reqs.append(replace(r, token_us=tokens))
    return BatchingResult(reqs, logs, res.kv)


def unshared(res: BatchingResult, instance: int, extras: Extras,
             landing: dict[int, float] | None = None) -> BatchingResult:
    """One instance's run of a re-formed round laid out at its passes' alone durations, for the replay: each
    pass keeps its start and loses the extra it was formed with, each token appears at its pass's alone end;
    ``landing`` (a decode instance): each request's first token, its KV cache landing alone, by request id."""
    at = {it.start_us + it.duration_us: k for k, it in enumerate(res.iterations)}
    logs = [replace(it, duration_us=it.duration_us - extras.of_pass(instance, k))
            for k, it in enumerate(res.iterations)]
    reqs = []
    for r in res.requests:
        tokens = []
        for i, t in enumerate(r.token_us):
            if i == 0 and landing is not None:
                tokens.append(landing[r.id])
            else:
                k = at[t]
                tokens.append(logs[k].start_us + logs[k].duration_us)
        reqs.append(replace(r, token_us=tokens))
    return BatchingResult(reqs, logs, res.kv)


def _residual(batched: Sequence[BatchingResult], inst: Sequence[InstanceRun], timing: SharedTiming,
              landing: dict[int, float], batched_landing: dict[int, float]) -> float:
    """The largest move (µs) of a pass's start or end, or of a KV cache's landing (a decode instance's
    arrival), from the timeline the batches were formed on to the shared replay of them."""
    worst = 0.0
    for b, x, sd, ed in zip(batched, inst, timing.start_delay, timing.end_delay):
        worst = max(worst, pass_residual(b, x.result, sd, ed))
    for rid, t in batched_landing.items():
        worst = max(worst, abs(landing[rid] + timing.kv_delay.get(rid, 0.0) - t))
    return worst


def run_on_shared_fabric(topology: Torus, profile: Profile, result: BatchingResult,
                         passes: dict[int, list[PassCalls]], replicas: Sequence[BatchingResult] | None = None,
                         dis=None, per_replica: tuple[int, int] = (0, 0),
                         kv_records: Callable[[int, int, int], list[TrafficRecord]] | None = None,
                         extras: Extras | None = None, chains: Chains | None = None,
                         sparse: SparseOf | None = None) -> tuple[BatchingResult, SharedTiming, dict]:
    """A finished serve run moved onto the shared fabric: (the merged result with the shared times, the delays,
    each KV transfer's shared time by request id). ``passes``: every instance's passes by its instance number;
    ``replicas``: each replica's own result (colocated replicas); ``dis``: a
    :class:`~nicemu.workloads.disaggregation.Disaggregated` run, ``per_replica`` its (P, D), and
    ``kv_records(prompt, source, target)`` the records of one request's KV transfer between instance numbers.
    Their alone times come from their flows (equal to serve's transfer timing, checked against the run's KV
    time), so the run's backend is not asked again and its totals stay as they were. ``extras``: what the run's
    passes and KV transfers were lengthened by when it was batched (a re-formed round; ``dis.kv_us`` stays
    alone), taken off before the replay; ``chains``: one to reuse (it keeps the calls alone); ``sparse``: how
    a sparse record's messages are made, to put sparse calls on the fabric too (:func:`run_shared`)."""
    chains = chains or Chains(topology, profile)
    extras = extras or Extras()
    moves: list[KvMove] = []
    if dis is not None:
        p, d = per_replica
        nums = [(q // p) * (p + d) + q % p for q in range(len(dis.prefill))]
        nums += [(q // d) * (p + d) + p + q % d for q in range(len(dis.decode))]
        batched = list(dis.prefill) + list(dis.decode)
        pre = [unshared(r, n, extras) for r, n in zip(dis.prefill, nums)]
        done = {r.id: r.token_us[0] for res in pre for r in res.requests if r.token_us}
        landing = {rid: done[rid] + dis.kv_us[rid] for rid in dis.kv_us}
        dec = [unshared(r, n, extras, landing) for r, n in zip(dis.decode, nums[len(pre):])]
        inst = [InstanceRun(r, passes[n]) for r, n in zip(pre, nums)]
        inst += [InstanceRun(r, passes[n], True) for r, n in zip(dec, nums[len(pre):])]
        prompt = {r.id: r.input_tokens for r in result.requests}
        for rid in sorted(dis.kv_us, key=lambda i: (done[i], i)):
            pi, di = dis.placement[rid]
            src, dst = (pi // p) * (p + d) + pi % p, (di // d) * (p + d) + p + di % d
            recs = kv_records(prompt[rid], src, dst)
            costs = [_alone(chains, topology, profile, r).span_us for r in recs]
            _check_span(max(costs), dis.kv_us[rid], recs[0])
            moves.append(KvMove(rid, pi, len(dis.prefill) + di, done[rid], dis.kv_us[rid], recs, costs))
        batched_landing = {r.id: r.token_us[0] for res in dis.decode for r in res.requests if r.token_us}
    else:
        batched = list(replicas) if replicas is not None and len(replicas) > 1 else [result]
        nums = list(range(len(batched)))
        inst = [InstanceRun(unshared(r, n, extras), passes[n]) for r, n in zip(batched, nums)]
        landing = batched_landing = {}
    timing = run_shared(topology, profile, inst, moves, chains, sparse)
    timing.instances = nums
    timing.residual_us = _residual(batched, inst, timing, landing, batched_landing)
    parts = [shifted(x, s, e, timing.kv_delay) for x, s, e in zip(inst, timing.start_delay, timing.end_delay)]
    kv_shared = {m.request_id: m.kv_us + timing.kv_delay.get(m.request_id, 0.0)
                 - timing.kv_start_delay.get(m.request_id, 0.0) for m in moves}
    if len(parts) == 1:
        return parts[0], timing, kv_shared
    by_id = {}
    for x, part in zip(inst, parts):
        for r in part.requests:
            if r.token_us and (dis is None or x.prefilled):
                by_id[r.id] = r
    reqs = []
    for r in result.requests:
        new = by_id.get(r.id)
        if new is None:
            reqs.append(r)
        elif dis is None:
            reqs.append(new)
        else:       # the merged request keeps its own fields, with the decode side's (shifted) tokens
            reqs.append(replace(r, token_us=list(new.token_us)))
    return BatchingResult(reqs, [it for part in parts for it in part.iterations], result.kv), timing, kv_shared


@dataclass
class Reformed:
    """The rounds of :func:`reform`: round 0's batching run and its replay (the first-order result), the last
    round's, and how many rounds re-formed the batches."""

    first_run: object
    first: tuple[BatchingResult, SharedTiming, dict]
    last_run: object
    last: tuple[BatchingResult, SharedTiming, dict]
    rounds: int

    @property
    def converged(self) -> bool:
        return self.last[1].residual_us <= REFORM_TOL_US


def reform(serve_round: Callable[[Extras | None], object],
           share: Callable[[object, Extras | None], tuple[BatchingResult, SharedTiming, dict]],
           max_rounds: int, tol_us: float = REFORM_TOL_US) -> Reformed:
    """Batches re-formed under sharing, to a fixed point (docs/model.md §21.7). ``serve_round(extras)`` serves
    the requests once, every pass and KV transfer lengthened by ``extras`` (None: round 0, on an idle fabric);
    ``share(run, extras)`` replays that run on the shared fabric (:func:`run_on_shared_fabric`). Round ``r``
    lengthens by what round ``r - 1``'s replay added; it stops when the replay moves nothing by more than
    ``tol_us`` against the timeline the batches were formed on, or after ``max_rounds`` re-formed rounds."""
    run = serve_round(None)
    first = shared = share(run, None)
    first_run, rounds = run, 0
    while rounds < max_rounds and shared[1].residual_us > tol_us:
        extras = shared[1].extras()
        rounds += 1
        run = serve_round(extras)
        shared = share(run, extras)
    return Reformed(first_run, first, run, shared, rounds)
