"""Replay of dependent flows on a shared fabric: how much later each one ends when others share it.

A collective that runs alone has a timeline its own model computes exactly
(§2–§4 of docs/model.md). To put several of them on one fabric, each transfer
of each call becomes a *flow* with its alone window ``[base_start, base_end]``
(first to last byte at the receiver) and its *dependencies*: the earlier flows
whose end (or start, for a stream forwarded as it arrives) let it begin. The
replay keeps every gap between a dependency and its dependent (host passes,
PCIe, latencies: what the alone model put there) and lets only the streams
share: flows present at the same time get weighted-free max-min fair rates
(nic/fabric.py's progressive filling), each capped at the rate it had alone,
so a flow held down elsewhere in the alone model stays held down.

Everything is computed as *delays* against the alone timeline, so a flow
that is never slowed below its alone rate, and depends only on such flows,
keeps its alone times to the last bit: one call alone on the fabric gives
exactly what it gives without it. docs/model.md §21.6 states the rules.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from nicemu.nic.fabric import FabricError, Routes

#: a flow whose rate falls this far (relative) below its alone rate is slowed
_SLOWED_RTOL = 1e-9
#: flows whose projected end lies within this relative distance of an event end at it
_FINISH_RTOL = 1e-12
#: a resource whose flows' caps add up to this far (relative) below its capacity never holds one of them
_SLACK_RTOL = 1e-9
#: ... as long as it carries at most this many flows (rounding in the filling stays far below that margin)
_SLACK_FLOWS = 100_000


def spans(lo: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The indices ``lo[i] .. lo[i] + n[i] - 1`` of every span, concatenated (a CSR gather)."""
    ends = np.cumsum(n)
    return np.arange(ends[-1] if len(ends) else 0) + (lo - ends + n).repeat(n)


def matches(key: np.ndarray, wanted: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dependency, dependent) pairs: every ``t`` where ``valid`` depends on every ``d`` with
    ``key[d] == wanted[t]`` (how dependencies are found by what a flow waits for)."""
    order = np.argsort(key, kind="stable")
    keys = key[order]
    t = np.flatnonzero(valid)
    lo = np.searchsorted(keys, wanted[t], side="left")
    hi = np.searchsorted(keys, wanted[t], side="right")
    cnt = hi - lo
    return order[spans(lo, cnt)], np.repeat(t, cnt)


def by_window(first: np.ndarray, last: np.ndarray, dep: np.ndarray, tgt: np.ndarray
              ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Split dependencies ``dep[i] -> tgt[i]`` by their alone windows: "after end" where the dependent starts
    once its dependency has ended, "after start" where it starts while the dependency runs (a stream forwarded
    as it arrives); a dependent that started before its dependency keeps no edge (docs/model.md §21.6)."""
    ends = first[tgt] >= last[dep]
    starts = ~ends & (first[tgt] >= first[dep])
    return (dep[ends], tgt[ends]), (dep[starts], tgt[starts])


@dataclass(frozen=True)
class Edges:
    """Dependencies in compressed form: flow ``f`` releases ``targets[ptr[f]:ptr[f + 1]]``.

    ``slack`` (optional, one per edge, µs): idle time the dependent had alone after what it waits for, which
    absorbs that much of the delay (an instance that waited for a request's arrival starts late only by
    what the delay exceeds the wait). None: every edge passes its delay on whole."""

    ptr: np.ndarray      # (flows + 1,) int64
    targets: np.ndarray  # (edges,) int64
    slack: np.ndarray | None = None

    @staticmethod
    def from_pairs(flows: int, src: np.ndarray, dst: np.ndarray, slack: np.ndarray | None = None) -> Edges:
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        order = np.argsort(src, kind="stable")
        counts = np.bincount(src, minlength=flows)
        kept = None if slack is None else np.asarray(slack, dtype=np.float64)[order]
        if kept is not None and (len(kept) != len(src) or np.any(~(kept >= 0))):
            raise FabricError("give one slack >= 0 per dependency")
        return Edges(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), dst[order], kept)

    def of(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, target) of every edge leaving ``sources``."""
        src, dst, _ = self.with_slack(sources)
        return src, dst

    def with_slack(self, sources: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(source, target, slack or None) of every edge leaving ``sources``."""
        lo, hi = self.ptr[sources], self.ptr[sources + 1]
        n = hi - lo
        ix = spans(lo, n)
        return np.repeat(sources, n), self.targets[ix], None if self.slack is None else self.slack[ix]


@dataclass
class Replay:
    """Outcome of :func:`replay`: per flow, how much later it started and ended than alone (µs)."""

    start_delay: np.ndarray
    end_delay: np.ndarray
    slowed: np.ndarray        # bool: its rate fell below its alone rate at some time
    events: int


def replay(capacity: np.ndarray, routes: Routes, base_start: np.ndarray, base_end: np.ndarray,
           alone_rate: np.ndarray, after_end: Edges, after_start: Edges) -> Replay:
    """Delays of dependent flows sharing ``capacity`` (bytes/µs per resource) along ``routes``.

    Flow ``f`` joins at ``base_start[f]`` plus the largest delay among the flows it waits for:
    the end delay of those in ``after_end`` and the start delay of those in ``after_start``, each less
    its edge's slack (never below 0). It then
    moves ``alone_rate[f] * (base_end[f] - base_start[f])`` bytes at its max-min fair rate, never above
    ``alone_rate[f]``; a flow whose window is empty takes no time and no bandwidth. Its end delay is its
    start delay if it was never slowed, else its end minus ``base_end[f]``."""
    cap = np.asarray(capacity, dtype=np.float64)
    flows = routes.flows
    base_start = np.asarray(base_start, dtype=np.float64)
    base_end = np.asarray(base_end, dtype=np.float64)
    rate_cap = np.asarray(alone_rate, dtype=np.float64)
    if not (len(base_start) == len(base_end) == len(rate_cap) == flows):
        raise FabricError(f"give one start, end and alone rate per flow ({flows})")
    if np.any(base_end < base_start):
        raise FabricError("a flow ends before it starts; base_end must be >= base_start")
    span = base_end - base_start
    instant = (span <= 0) | ~(rate_cap > 0) | ~np.isfinite(rate_cap)
    remaining = np.zeros(flows)
    remaining[~instant] = rate_cap[~instant] * span[~instant]
    state = _State(base_start, after_end, after_start, flows)
    lengths = np.diff(routes.offsets)
    # the resources some flow crosses, numbered 0.. (only labels change; the rates do not depend on them)
    crossed = np.zeros(len(cap), dtype=bool)
    crossed[routes.resources] = True
    local = np.cumsum(crossed) - 1
    resources, cap = local[routes.resources], cap[crossed]
    # the flows present, in the order they joined, with their route lengths, caps and routes (concatenated)
    active = np.zeros(0, dtype=np.int64)
    n_act = np.zeros(0, dtype=np.int64)
    cap_act = np.zeros(0)
    ent = np.zeros(0, dtype=np.int64)
    events = 0
    t = -np.inf
    changed = True      # the flows present changed since their rates were filled (instant joins change nothing)
    while state.pending or len(active):
        if not len(active):
            t = max(t, state.pending.first())
        limit = t + _FINISH_RTOL * max(abs(t), 1.0)
        while state.pending and state.pending.first() <= limit:
            joined = state.pending.pop_due(limit)
            state.release(after_start, joined, state.start_delay, t)
            now = joined[instant[joined]]
            if len(now):
                state.end_delay[now] = state.start_delay[now]
                state.release(after_end, now, state.end_delay, t)
            moving = joined[~instant[joined]]
            if len(moving):
                changed = True
                n = lengths[moving]
                active = np.concatenate([active, moving])
                n_act = np.concatenate([n_act, n])
                cap_act = np.concatenate([cap_act, rate_cap[moving]])
                ent = np.concatenate([ent, resources[spans(routes.offsets[moving], n)]])
        if not len(active):
            continue
        events += 1
        if changed:
            rate = capped_rates(cap, ent, n_act, cap_act)
            state.slowed[active[rate < cap_act * (1 - _SLOWED_RTOL)]] = True
            changed = False
        projected = t + remaining[active] / rate
        t_next = float(projected.min())
        if state.pending:
            t_next = min(t_next, state.pending.first())
        done = projected <= t_next + _FINISH_RTOL * max(abs(t_next), 1.0)
        remaining[active] -= rate * (t_next - t)
        t = t_next
        gone = active[done]
        delay = state.start_delay[gone]
        state.end_delay[gone] = np.where(state.slowed[gone], np.maximum(projected[done] - base_end[gone], delay), delay)
        if len(gone):
            changed = True
            keep = ~done
            ent = ent[keep.repeat(n_act)]
            active, n_act, cap_act = active[keep], n_act[keep], cap_act[keep]
            state.release(after_end, gone, state.end_delay, t)
    if np.any(state.waiting > 0):
        raise FabricError("the dependencies form a cycle; every flow must wait only for earlier ones")
    return Replay(state.start_delay, state.end_delay, state.slowed, events)


class _Pending:
    """Flows released but not yet joined, by join time: a heap of runs (one per release) sorted by (time,
    flow), so taking the flows due costs a binary search per run rather than a heap operation per flow."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, np.ndarray, np.ndarray]] = []
        self._runs = 0

    def __bool__(self) -> bool:
        return bool(self._heap)

    def push(self, times: np.ndarray, flows: np.ndarray) -> None:
        if not len(flows):
            return
        if len(flows) > 1:
            order = np.lexsort((flows, times))
            times, flows = times[order], flows[order]
        heapq.heappush(self._heap, (float(times[0]), self._runs, times, flows))
        self._runs += 1

    def first(self) -> float:
        """The earliest join time pending."""
        return self._heap[0][0]

    def pop_due(self, limit: float) -> np.ndarray:
        """The flows due by ``limit``, in (time, flow) order: the order one heap of flows pops them in."""
        times, flows = [], []
        while self._heap and self._heap[0][0] <= limit:
            _, run, t, f = heapq.heappop(self._heap)
            k = int(np.searchsorted(t, limit, side="right"))
            times.append(t[:k])
            flows.append(f[:k])
            if k < len(t):
                heapq.heappush(self._heap, (float(t[k]), run, t[k:], f[k:]))
        if len(flows) == 1:
            return flows[0]
        t, f = np.concatenate(times), np.concatenate(flows)
        return f[np.lexsort((f, t))]


class _State:
    """What the replay knows of every flow: its delays, what it still waits for, and the flows ready to join."""

    def __init__(self, base_start: np.ndarray, after_end: Edges, after_start: Edges, flows: int) -> None:
        self.base_start = base_start
        # every flow's out-degree along either kind of edge (keyed by the Edges object)
        self.degree = {id(after_end): np.diff(after_end.ptr), id(after_start): np.diff(after_start.ptr)}
        self.waiting = (np.bincount(after_end.targets, minlength=flows)
                        + np.bincount(after_start.targets, minlength=flows)).astype(np.int64)
        self.start_delay = np.zeros(flows)
        self.end_delay = np.zeros(flows)
        self.slowed = np.zeros(flows, dtype=bool)
        self.pending = _Pending()
        ready = np.flatnonzero(self.waiting == 0)
        self.pending.push(base_start[ready], ready)

    def release(self, edges: Edges, sources: np.ndarray, delay: np.ndarray, t: float) -> None:
        """``sources`` passed ``delay`` on along ``edges``; the flows that wait for nothing more join at
        their own start plus their delay, or now if that has passed."""
        n = self.degree[id(edges)][sources]
        if not n.any():
            return
        ix = spans(edges.ptr[sources], n)
        dst = edges.targets[ix]
        passed = delay[sources].repeat(n)
        np.maximum.at(self.start_delay, dst, passed if edges.slack is None else passed - edges.slack[ix])
        np.subtract.at(self.waiting, dst, 1)
        ready = dst[self.waiting[dst] == 0]
        if len(ready) > 1:       # a flow waiting for several of these is ready once
            ready = np.sort(ready)
            ready = ready[np.concatenate(([True], ready[1:] != ready[:-1]))]
        if len(ready):
            self.pending.push(np.maximum(self.base_start[ready] + self.start_delay[ready], t), ready)


def capped_rates(capacity: np.ndarray, entries: np.ndarray, lengths: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Max-min fair rates of flows crossing ``entries`` (resource ids, ``lengths[i]`` for flow ``i`` in turn),
    each capped at ``caps[i]``: what nic/fabric.py's progressive filling gives with every cap as a private
    resource, to the last bit, without building those resources.

    Short cut: a resource whose flows' caps add up to clearly less than its capacity, or that carries one
    flow not above it, never binds any of them (its level always lies above the lowest cap still rising), so
    when every resource is such, each flow freezes at its cap alone: the rates are the caps."""
    rate = caps.copy()
    if not len(entries):
        return rate
    if len(capacity) <= 4 * len(entries) + 4096:
        left, er = capacity, entries
    else:                                                # number the resources in use 0.. (only labels change)
        used, er = np.unique(entries, return_inverse=True)
        left = capacity[used]
    nres = len(left)
    count = np.bincount(er, minlength=nres)
    load = np.bincount(er, weights=caps.repeat(lengths), minlength=nres)
    if (((load <= left * (1 - _SLACK_RTOL)) & (count <= _SLACK_FLOWS)) | ((count <= 1) & (load <= left))).all():
        return rate
    live = lengths > 0                                   # a flow on no resource runs at its cap
    ids, n, c = live.nonzero()[0], lengths[live], caps[live]
    left = left.astype(np.float64, copy=True)
    while len(ids):
        # the steps of nic/fabric.py's fill, with each flow's cap standing for its private resource
        starts = n.cumsum() - n
        level = np.full(nres, np.inf)
        np.divide(np.maximum(left, 0.0), count, out=level, where=count > 0)
        lev_e = level[er]
        low = np.minimum(np.minimum.reduceat(lev_e, starts), c)
        higher = np.bincount(er, weights=lev_e > low.repeat(n), minlength=nres)
        frozen = np.logical_or.reduceat((higher == 0)[er], starts) | (c <= low)
        rate[ids[frozen]] = low[frozen]
        frozen_e = frozen.repeat(n)
        left -= np.bincount(er[frozen_e], weights=low[frozen].repeat(n[frozen]), minlength=nres)
        er = er[~frozen_e]
        ids, n, c = ids[~frozen], n[~frozen], c[~frozen]
        count = np.bincount(er, minlength=nres)
    return rate
