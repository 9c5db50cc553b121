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

What it keeps from the idle-fabric run: every batch's composition. A slower pass would in a deployment
let more requests arrive before the next batch forms; here only the times move (a first-order model,
stated in docs/model.md §21.7). Sparse calls (an embedding AllReduce through OmNICCL or OmniReduce) keep
their alone time and load nothing here (collectives/model/sparse_flows.py makes their messages flows for train).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.chains import Chains, overlapping_calls
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


def run_shared(topology: Torus, profile: Profile, instances: Sequence[InstanceRun],
               moves: Sequence[KvMove], chains: Chains | None = None) -> SharedTiming:
    """Replay the run's instances and KV moves on one fabric (see the module docstring); ``chains``: one
    already holding some calls alone, to reuse."""
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
            keep = np.array([not is_sparse(r.algo) for r in p.records], dtype=bool)
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
            a = alone[i] = _alone(chains, topology, profile, records[i])
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
    """What a dense record's call on the fabric depends on (not its iteration, not its ``what``)."""
    return rec.collective, rec.algo, rec.bytes, rec.nodes


def _alone(chains: Chains, topology: Torus, profile: Profile, rec: TrafficRecord):
    """The call a record makes, alone on the fabric (cached in ``chains`` by the record's key)."""
    key = _record_key(rec)
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


def run_on_shared_fabric(topology: Torus, profile: Profile, result: BatchingResult,
                         passes: dict[int, list[PassCalls]], replicas: Sequence[BatchingResult] | None = None,
                         dis=None, per_replica: tuple[int, int] = (0, 0),
                         kv_records: Callable[[int, int, int], list[TrafficRecord]] | None = None
                         ) -> tuple[BatchingResult, SharedTiming, dict]:
    """A finished serve run moved onto the shared fabric: (the merged result with the shared times, the delays,
    each KV transfer's shared time by request id). ``passes``: every instance's passes by its instance number;
    ``replicas``: each replica's own result (colocated replicas); ``dis``: a
    :class:`~nicemu.workloads.disaggregation.Disaggregated` run, ``per_replica`` its (P, D), and
    ``kv_records(prompt, source, target)`` the records of one request's KV transfer between instance numbers.
    Their alone times come from their flows (equal to serve's transfer timing, checked against the run's KV
    time), so the run's backend is not asked again and its totals stay as they were."""
    chains = Chains(topology, profile)
    moves: list[KvMove] = []
    if dis is not None:
        p, d = per_replica
        inst = [InstanceRun(r, passes[(q // p) * (p + d) + q % p]) for q, r in enumerate(dis.prefill)]
        inst += [InstanceRun(r, passes[(q // d) * (p + d) + p + q % d], True) for q, r in enumerate(dis.decode)]
        prompt = {r.id: r.input_tokens for r in result.requests}
        for rid in sorted(dis.kv_us, key=lambda i: (dis.prefill_done_us[i], i)):
            pi, di = dis.placement[rid]
            src, dst = (pi // p) * (p + d) + pi % p, (di // d) * (p + d) + p + di % d
            recs = kv_records(prompt[rid], src, dst)
            costs = [_alone(chains, topology, profile, r).span_us for r in recs]
            _check_span(max(costs), dis.kv_us[rid], recs[0])
            moves.append(KvMove(rid, pi, len(dis.prefill) + di, dis.prefill_done_us[rid], dis.kv_us[rid], recs, costs))
    elif replicas is not None and len(replicas) > 1:
        inst = [InstanceRun(r, passes[i]) for i, r in enumerate(replicas)]
    else:
        inst = [InstanceRun(result, passes[0])]
    timing = run_shared(topology, profile, inst, moves, chains)
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
