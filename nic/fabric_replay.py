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

from nicemu.nic.fabric import FabricError, Routes, fill_rates

#: a flow whose rate falls this far (relative) below its alone rate is slowed
_SLOWED_RTOL = 1e-9
#: flows whose projected end lies within this relative distance of an event end at it
_FINISH_RTOL = 1e-12


def spans(lo: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The indices ``lo[i] .. lo[i] + n[i] - 1`` of every span, concatenated (a CSR gather)."""
    return np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)


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
    waiting = (np.bincount(after_end.targets, minlength=flows)
               + np.bincount(after_start.targets, minlength=flows)).astype(np.int64)
    start_delay = np.zeros(flows)
    end_delay = np.zeros(flows)
    slowed = np.zeros(flows, dtype=bool)
    heap: list[tuple[float, int]] = [(float(base_start[f]), int(f)) for f in np.flatnonzero(waiting == 0)]
    heapq.heapify(heap)
    active = np.zeros(0, dtype=np.int64)
    lengths = np.diff(routes.offsets)
    events = 0
    t = -np.inf

    def release(edges: Edges, sources: np.ndarray, delay: np.ndarray) -> None:
        if not len(sources):
            return
        src, dst, slack = edges.with_slack(sources)
        if not len(dst):
            return
        np.maximum.at(start_delay, dst, delay[src] if slack is None else delay[src] - slack)
        np.subtract.at(waiting, dst, 1)
        for f in np.unique(dst[waiting[dst] == 0]).tolist():
            heapq.heappush(heap, (max(float(base_start[f] + start_delay[f]), t), f))

    while heap or len(active):
        if not len(active):
            t = max(t, heap[0][0])
        while heap and heap[0][0] <= t + _FINISH_RTOL * max(abs(t), 1.0):
            joined = []
            while heap and heap[0][0] <= t + _FINISH_RTOL * max(abs(t), 1.0):
                joined.append(heapq.heappop(heap)[1])
            joined = np.asarray(joined, dtype=np.int64)
            release(after_start, joined, start_delay)
            now = joined[instant[joined]]
            end_delay[now] = start_delay[now]
            release(after_end, now, end_delay)
            active = np.concatenate([active, joined[~instant[joined]]])
        if not len(active):
            continue
        events += 1
        # max-min rates of the active flows over their routes plus one private resource each (the cap)
        n = lengths[active]
        lo = routes.offsets[active]
        ix = spans(lo, n)
        local = np.arange(len(active))
        ef = np.concatenate([np.repeat(local, n), local])
        er = np.concatenate([routes.resources[ix], len(cap) + local])
        order = np.argsort(ef, kind="stable")
        rate = np.zeros(len(active))
        fill_rates(np.concatenate([cap, rate_cap[active]]), ef[order], er[order], np.ones(len(active)), rate)
        slowed[active[rate < rate_cap[active] * (1 - _SLOWED_RTOL)]] = True
        projected = t + remaining[active] / rate
        t_next = float(projected.min())
        if heap:
            t_next = min(t_next, heap[0][0])
        done = projected <= t_next + _FINISH_RTOL * max(abs(t_next), 1.0)
        remaining[active] -= rate * (t_next - t)
        t = t_next
        gone = active[done]
        end_delay[gone] = np.where(slowed[gone], np.maximum(projected[done] - base_end[gone], start_delay[gone]),
                                   start_delay[gone])
        active = active[~done]
        release(after_end, gone, end_delay)
    if np.any(waiting > 0):
        raise FabricError("the dependencies form a cycle; every flow must wait only for earlier ones")
    return Replay(start_delay, end_delay, slowed, events)
