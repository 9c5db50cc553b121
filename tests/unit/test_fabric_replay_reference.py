"""The fast replay (nic/fabric_replay.py) against the straightforward one it replaced: on seeded random
dependent flow sets, with contention, coincident events, one-packet flows, forwarded streams, slack and
caps that exactly fill a resource, every delay, slowed flag and event count is the same to the last bit.

The reference below is the replay as first written: a heap of flows, and at every event the progressive
filling of nic/fabric.py over all flows present, each with its cap as a private resource."""

from __future__ import annotations

import heapq

import numpy as np
import pytest

from nicemu.nic.fabric import Routes, fill_rates
from nicemu.nic.fabric_replay import Edges, capped_rates, replay


def _reference(cap, routes, base_start, base_end, rate_cap, after_end, after_start):
    flows = routes.flows
    span = base_end - base_start
    instant = (span <= 0) | ~(rate_cap > 0) | ~np.isfinite(rate_cap)
    remaining = np.zeros(flows)
    remaining[~instant] = rate_cap[~instant] * span[~instant]
    waiting = (np.bincount(after_end.targets, minlength=flows)
               + np.bincount(after_start.targets, minlength=flows)).astype(np.int64)
    start_delay, end_delay, slowed = np.zeros(flows), np.zeros(flows), np.zeros(flows, dtype=bool)
    heap = [(float(base_start[f]), int(f)) for f in np.flatnonzero(waiting == 0)]
    heapq.heapify(heap)
    active, events, t = [], 0, -np.inf

    def release(edges, sources, delay):
        for s in sources:
            for e in range(edges.ptr[s], edges.ptr[s + 1]):
                f = int(edges.targets[e])
                passed = delay[s] if edges.slack is None else delay[s] - edges.slack[e]
                start_delay[f] = max(start_delay[f], passed)
                waiting[f] -= 1
                if waiting[f] == 0:
                    heapq.heappush(heap, (max(float(base_start[f] + start_delay[f]), t), f))

    while heap or active:
        if not active:
            t = max(t, heap[0][0])
        limit = t + 1e-12 * max(abs(t), 1.0)
        while heap and heap[0][0] <= limit:
            joined = []
            while heap and heap[0][0] <= limit:
                joined.append(heapq.heappop(heap)[1])
            release(after_start, joined, start_delay)
            now = [f for f in joined if instant[f]]
            end_delay[now] = start_delay[now]
            release(after_end, now, end_delay)
            active += [f for f in joined if not instant[f]]
        if not active:
            continue
        events += 1
        act = np.array(active)
        ef, er = [], []
        for i, f in enumerate(active):
            route = routes.route(f)
            ef += [i] * (len(route) + 1)
            er += route + [len(cap) + i]
        rate = np.zeros(len(act))
        fill_rates(np.concatenate([cap, rate_cap[act]]), np.array(ef), np.array(er), np.ones(len(act)), rate)
        slowed[act[rate < rate_cap[act] * (1 - 1e-9)]] = True
        projected = t + remaining[act] / rate
        t_next = float(projected.min())
        if heap:
            t_next = min(t_next, heap[0][0])
        done = projected <= t_next + 1e-12 * max(abs(t_next), 1.0)
        remaining[act] -= rate * (t_next - t)
        t = t_next
        gone = act[done]
        end_delay[gone] = np.where(slowed[gone], np.maximum(projected[done] - base_end[gone], start_delay[gone]),
                                   start_delay[gone])
        active = act[~done].tolist()
        release(after_end, gone.tolist(), end_delay)
    return start_delay, end_delay, slowed, events


def _pairs(p: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([a for a, _ in p], dtype=np.int64), np.array([b for _, b in p], dtype=np.int64)


def _random_case(seed: int, flows: int = 120, resources: int = 10, slack: bool = False):
    """Flows in dependency chains on a few resources, times on a coarse grid so that many events coincide."""
    rng = np.random.default_rng(seed)
    cap = np.where(rng.random(resources) < 0.1, 1e300, rng.uniform(2.0, 12.0, resources))
    routes = [sorted(rng.choice(resources, size=rng.integers(0, 4), replace=False).tolist()) for _ in range(flows)]
    start = np.round(rng.uniform(0.0, 40.0, flows), 0)
    length = rng.choice([0.0, 1.0, 2.5, 4.0, 7.0], size=flows, p=[0.1, 0.3, 0.2, 0.2, 0.2])
    # caps: some a resource's whole capacity (alone, it is exactly full), some half of it, some lower
    rate = np.array([min([cap[r] for r in rt] + [1e300]) for rt in routes])
    rate = np.where(rate >= 1e300, 5.0, rate) * rng.choice([1.0, 0.5, 1 / 3, rng.uniform(0.2, 0.9)], size=flows)
    ends, starts, ends_slack = [], [], []
    for f in range(1, flows):
        for d in rng.choice(f, size=min(f, int(rng.integers(0, 3))), replace=False).tolist():
            if rng.random() < 0.7:
                ends.append((d, f))
                ends_slack.append(float(rng.choice([0.0, 0.5, 3.0])))
                start[f] = max(start[f], start[d] + length[d] + rng.choice([0.0, 1.0]))
            else:
                starts.append((d, f))
                start[f] = max(start[f], start[d] + rng.choice([0.0, 1.0]))
    after_end = Edges.from_pairs(flows, *_pairs(ends), np.array(ends_slack) if slack else None)
    after_start = Edges.from_pairs(flows, *_pairs(starts))
    return cap, Routes.from_lists(routes), start, start + length, rate, after_end, after_start


@pytest.mark.parametrize("slack", [False, True])
@pytest.mark.parametrize("seed", range(12))
def test_the_replay_equals_the_straightforward_one_to_the_last_bit(seed, slack):
    case = _random_case(seed, slack=slack)
    out = replay(*case)
    start_delay, end_delay, slowed, events = _reference(*case)
    assert slowed.sum() >= 5 and end_delay.max() > 0       # the flows really contend: nothing passes by default
    assert np.array_equal(out.start_delay, start_delay)
    assert np.array_equal(out.end_delay, end_delay)
    assert np.array_equal(out.slowed, slowed)
    assert out.events == events


@pytest.mark.parametrize("seed", range(40))
def test_capped_rates_equal_the_filling_with_private_resources(seed):
    """Random flow sets, from lightly loaded (the short cut: every flow at its cap) to overloaded ones, with
    caps that exactly fill a resource alone or together."""
    rng = np.random.default_rng(seed)
    resources, flows = int(rng.integers(1, 8)), int(rng.integers(1, 30))
    cap = rng.choice([3.0, 10.0, 12.5], size=resources)
    routes = [rng.choice(resources, size=rng.integers(0, min(3, resources) + 1), replace=False).tolist()
              for _ in range(flows)]
    lightly = seed % 2 == 0
    caps = np.array([min([cap[r] for r in rt] + [7.0]) for rt in routes])
    caps = caps * (rng.choice([1.0, 1 / 3, 0.25], size=flows) if not lightly else 1.0 / (flows + 1))
    if seed % 4 == 1:
        caps[:] = np.array([min([cap[r] for r in rt] + [7.0]) for rt in routes])   # each alone fills its link
    lengths = np.array([len(r) for r in routes], dtype=np.int64)
    entries = np.array([r for rt in routes for r in rt], dtype=np.int64)
    if seed % 5 == 3:                      # a large fabric of which these flows cross a few resources
        spread = np.sort(rng.choice(20_000, size=resources, replace=False))
        big = np.full(20_000, 1.0)
        big[spread] = cap
        cap, entries = big, spread[entries]
        resources = len(cap)
    got = capped_rates(cap, entries, lengths, caps)
    ef = np.concatenate([np.repeat(np.arange(flows), lengths), np.arange(flows)])
    er = np.concatenate([entries, resources + np.arange(flows)])
    order = np.argsort(ef, kind="stable")
    want = np.zeros(flows)
    fill_rates(np.concatenate([cap, caps]), ef[order], er[order], np.ones(flows), want)
    assert np.array_equal(got, want)
    if lightly:
        assert np.array_equal(got, caps)


@pytest.mark.parametrize("spec,algos", [("ring:6", ("ring", "directreduce-pipelined", "ring-pipelined")),
                                        ("torus:2x2x2", ("directreduce", "ring", "directreduce"))])
def test_calls_started_apart_replay_as_before(monkeypatch, spec, algos):
    """Real schedules (uneven sizes, framing, pipelined segments) started a little apart on one fabric: the
    inputs run_concurrent gives the replay, through both replays."""
    from nicemu.collectives.api.model import call_schedule
    from nicemu.collectives.model import concurrent
    from nicemu.nic.profile import load_profile
    from nicemu.topologies import parse_topology

    topo, prof = parse_topology(spec), load_profile("400g-gen5")
    seen = []

    def recorded(*args):
        seen.append(args)
        return replay(*args)

    monkeypatch.setattr(concurrent, "replay", recorded)
    calls = []
    for i, algo in enumerate(algos):
        sched, _ = call_schedule("allreduce", algo, topo, prof, (3 << 18) + 1000 * i, 4)
        calls.append(concurrent.Call(sched, np.arange(topo.nodes), 4, start_us=7.3 * i, repeat=1 + i % 2))
    concurrent.run_concurrent(calls, topo, prof)
    shared = max(seen, key=lambda args: args[1].flows)           # the replay of all calls together
    out = replay(*shared)
    start_delay, end_delay, slowed, events = _reference(*shared)
    assert slowed.sum() > 10
    assert np.array_equal(out.start_delay, start_delay)
    assert np.array_equal(out.end_delay, end_delay)
    assert np.array_equal(out.slowed, slowed)
    assert out.events == events
