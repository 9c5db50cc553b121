"""One training iteration under TP x DP x PP on one shared fabric: the TP AllReduces, the pipeline
transfers and the DP buckets share links and PCIe instead of each running on an idle fabric.

The alone accounting (nicemu/train_parallel.py) times the 1F1B schedule with every TP AllReduce and
pipeline transfer alone and only the DP buckets sharing the fabric. Here the same schedule is laid out
as chains (collectives/model/chains.py, docs/model.md §21.7) on one replay:

- every stage is one chain of its forwards and backwards in 1F1B order; inside an operation its TP
  AllReduces sit where they are issued, compute fixed between them, so a call starts late by what the
  previous one ended late; the ``D`` replicas' TP groups of a stage run each call together and the
  stage goes on when the slowest has ended (their pipeline transfers are issued together anyway);
- an operation starts when the stage's previous one has ended and its input has landed, each with the
  idle time it had alone as slack;
- the activations of forward ``m`` (the gradients of backward ``m``) leave when that operation ends, as
  one set of transfers of every TP rank of every replica;
- every DP bucket starts at its point of the stage's last backward and runs as a chain of one call.

Which calls become flows: a call of one chain whose window overlaps a call of another chain on a
common resource (link, PCIe read side, in-stream NIC engine); the others are markers that pass their
delay on. A replay moves windows, so the search repeats on the moved windows until no new call is
found, as serve does (workloads/serve_fabric.py). A search that has not settled after ``MAX_ROUNDS``
rounds replays every call once more, which costs less than going on (each round replays all it found).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nicemu.collectives.model.chains import Chains, overlapping_calls
from nicemu.collectives.model.concurrent import MAX_FLOWS, Call
from nicemu.collectives.schedules.steps import Schedule
from nicemu.errors import CollectiveError
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus
from nicemu.workloads.train_layout import Layout
from nicemu.workloads.train_pipeline import PipelineTimes, StageWork, op_order

#: rounds of looking for new overlaps after a replay has moved the windows; then every call is replayed
MAX_ROUNDS = 2
#: relative difference allowed between a call's alone time in the accounting and its flows' span
_SPAN_RTOL = 1e-9


@dataclass(frozen=True)
class TrainTraffic:
    """What an iteration puts on the fabric, with the alone times the accounting used."""

    tp_schedules: Sequence[Schedule | None]    # per stage: a TP group's AllReduce (None without TP)
    tp_itemsize: int
    tp_us: Sequence[float]                     # per stage, alone
    p2p_bytes: int
    p2p_path: str
    to_next_us: Sequence[float]                # per boundary, alone
    to_prev_us: Sequence[float]
    buckets: Sequence[Call]                    # DP buckets, start_us their alone start
    bucket_stage: Sequence[int]
    bucket_alone_us: Sequence[float]


@dataclass(frozen=True)
class SharedIteration:
    """The iteration on the shared fabric (µs from its start) and the replay's size."""

    pipeline_us: float              # every stage's last backward done
    iteration_us: float             # ... and every bucket done
    bucket_end_us: np.ndarray       # per bucket
    bucket_start_delay: np.ndarray  # per bucket: how late it started (its backward was late)
    bucket_slowdown: float          # the slowest bucket's duration against alone
    rounds: int
    replayed_calls: int
    calls: int
    flows: int
    slowed_flows: int


@dataclass
class _Item:
    """A call of the layout: its chain, alone window and what it places."""

    chain: int
    start: float
    end: float
    kind: str                       # "tp", "fwd", "bwd", "dp"
    ref: tuple


def shared_iteration(topology: Torus, profile: Profile, layout: Layout, work: Sequence[StageWork],
                     pipe: PipelineTimes, traffic: TrainTraffic, replay_all: bool = False) -> SharedIteration:
    """Replay the iteration ``pipe`` (the 1F1B schedule with TP and transfers alone) on one fabric.
    ``replay_all``: every call as flows, without looking for overlaps (what the search must agree with)."""
    chains = Chains(topology, profile)
    alone = _Alone(chains, layout, traffic)
    items = _items(layout, work, pipe, traffic)
    start = np.array([x.start for x in items])
    end = np.array([x.end for x in items])
    chain = np.array([x.chain for x in items], dtype=np.int64)
    # calls that load the same resources form a class; whether two classes share one is computed once
    classes: dict[frozenset[int], int] = {}
    cls = np.array([classes.setdefault(alone.uses(x), len(classes)) for x in items], dtype=np.int64)
    sets = list(classes)
    share = np.array([[bool(u & v) for v in sets] for u in sets], dtype=bool).reshape(len(sets), len(sets))
    replayed = np.zeros(len(items), dtype=bool)
    zero = np.zeros(len(items))
    delays = _Delays(zero, zero, float(pipe.end_us), 0, 0)     # nothing replayed: every call at its alone time
    rounds = 0
    moved_start, moved_end = start, end
    while len(items):
        if replay_all:
            new = ~replayed
        else:
            a, b = overlapping_calls(moved_start, moved_end, chain)
            hit = share[cls[a], cls[b]]
            new = np.zeros(len(items), dtype=bool)
            new[a[hit]] = True
            new[b[hit]] = True
            new &= ~replayed
            if new.any() and rounds == MAX_ROUNDS:
                new = ~replayed         # the search has not settled: one replay of everything costs less
        if not new.any():
            break
        replayed |= new
        rounds += 1
        delays = _Layout(chains, layout, work, pipe, traffic, alone, items, replayed).run()
        if replayed.all():
            break
        moved_start, moved_end = start + delays.item_start, end + delays.item_end
    n = len(traffic.buckets)
    first = len(items) - n                     # the buckets are the last items
    alone_us = np.array(traffic.bucket_alone_us, dtype=np.float64)
    bucket_end = np.array([c.start_us for c in traffic.buckets], dtype=np.float64) + alone_us + \
        delays.item_end[first:]
    took = alone_us + delays.item_end[first:] - delays.item_start[first:]
    slow = float(np.max(np.divide(took, alone_us, out=np.ones(n), where=alone_us > 0))) if n else 1.0
    pipeline = delays.pipeline_us
    return SharedIteration(pipeline, max([pipeline, *bucket_end.tolist()]), bucket_end, delays.item_start[first:],
                           max(slow, 1.0), rounds,
                           int(replayed.sum()), len(items), delays.flows, delays.slowed_flows)


class _Alone:
    """Every distinct call of the layout alone on the fabric (cached in the chains), checked against the
    alone time the accounting used."""

    def __init__(self, chains: Chains, layout: Layout, traffic: TrainTraffic) -> None:
        self.chains, self.layout, self.traffic = chains, layout, traffic
        self._uses: dict[tuple, frozenset[int]] = {}

    def call(self, item: _Item):
        tr, lay = self.traffic, self.layout
        if item.kind == "tp":
            s, d = item.ref
            nodes = lay.tp_group(s, d)
            a = self.chains.collective(("tp", nodes), tr.tp_schedules[s], nodes, tr.tp_itemsize)
            want = tr.tp_us[s]
        elif item.kind in ("fwd", "bwd"):
            s = item.ref[0]
            pairs = lay.stage_pairs(s)
            if item.kind == "bwd":
                pairs = [(b, a) for a, b in pairs]
            a = self.chains.transfers((item.kind, s), pairs, tr.p2p_bytes, tr.p2p_path)
            want = (tr.to_next_us if item.kind == "fwd" else tr.to_prev_us)[s]
        else:
            c = tr.buckets[item.ref[0]]
            a = self.chains.collective(("dp", tuple(c.nodes.tolist()), id(c.schedule)), c.schedule, c.nodes,
                                       c.itemsize)
            want = tr.bucket_alone_us[item.ref[0]]
        if abs(a.span_us - want) > _SPAN_RTOL * max(abs(want), 1.0):
            raise CollectiveError(f"internal: a train {item.kind} call takes {a.span_us} us as flows but {want} us "
                                  "alone")
        return a

    def uses(self, item: _Item) -> frozenset[int]:
        key = (item.kind, item.ref[0]) if item.kind != "tp" else ("tp",) + item.ref
        hit = self._uses.get(key)
        if hit is None:
            hit = self._uses[key] = self.call(item).uses
        return hit


def _items(layout: Layout, work: Sequence[StageWork], pipe: PipelineTimes, traffic: TrainTraffic) -> list[_Item]:
    """Every call of the iteration with its alone window: stage ``s`` is chain ``s``, a transfer set its own
    chain, a bucket its own chain. TP calls and transfers in layout order (``_Layout`` walks the same)."""
    out: list[_Item] = []
    p = layout.pp
    nxt = p
    for start, s, kind, mb in _ops(layout, pipe):
        for off in work[s].tp_offsets(kind, traffic.tp_us[s]):
            for d in range(layout.dp):
                out.append(_Item(s, start + off, start + off + traffic.tp_us[s], "tp", (s, d)))
        done = float((pipe.f_end if kind == "F" else pipe.b_end)[s, mb])
        if kind == "F" and s < p - 1:
            out.append(_Item(nxt, done, done + traffic.to_next_us[s], "fwd", (s, mb)))
            nxt += 1
        if kind == "B" and s > 0:
            out.append(_Item(nxt, done, done + traffic.to_prev_us[s - 1], "bwd", (s - 1, mb)))
            nxt += 1
    for i, (c, a) in enumerate(zip(traffic.buckets, traffic.bucket_alone_us)):
        out.append(_Item(nxt + i, c.start_us, c.start_us + a, "dp", (i,)))
    return out


def _ops(layout: Layout, pipe: PipelineTimes) -> list[tuple[float, int, str, int]]:
    """Every operation (alone start, stage, kind, micro-batch) in order of its start: what an operation
    waits for (its stage's previous one, its input's sender) starts earlier."""
    m = pipe.f_start.shape[1]
    ops = [(float((pipe.f_start if k == "F" else pipe.b_start)[s, mb]), s, k, mb)
           for s in range(layout.pp) for k, mb in op_order(s, layout.pp, m)]
    return sorted(ops, key=lambda o: (o[0], o[1]))


@dataclass
class _Delays:
    item_start: np.ndarray
    item_end: np.ndarray
    pipeline_us: float
    flows: int
    slowed_flows: int


class _Layout:
    """One replay: the calls marked in ``replayed`` as flows, the others as markers passing delay on."""

    def __init__(self, chains: Chains, layout: Layout, work, pipe: PipelineTimes, traffic: TrainTraffic,
                 alone: _Alone, items: list[_Item], replayed: np.ndarray) -> None:
        self.ch, self.layout, self.work, self.pipe, self.traffic = chains, layout, work, pipe, traffic
        self.alone, self.items, self.replayed = alone, items, replayed
        self.item_start = np.zeros(len(items), dtype=np.int64)   # marker ids, filled as calls are laid
        self.item_end = np.zeros(len(items), dtype=np.int64)

    def _call(self, i: int, after: int) -> int:
        """Item ``i`` from marker ``after``: its flows if replayed (returns its end marker), else ``after``."""
        x = self.items[i]
        self.item_start[i] = after
        # a call that is not replayed ends as late as it started: no marker of its own
        end = self.ch.place(self.alone.call(x), x.start, after, chain=x.chain) if self.replayed[i] else after
        if self.ch.flows > MAX_FLOWS:
            raise CollectiveError(f"the shared fabric of this iteration needs over {MAX_FLOWS:,} flows, more than the "
                                  "replay holds in memory (about 300 B each); use fewer --micro-batches, a smaller "
                                  "model or topology, or an unsegmented --algo")
        self.item_end[i] = end
        return end

    def run(self) -> _Delays:
        ch, lay, pipe, tr = self.ch, self.layout, self.pipe, self.traffic
        ch.clear()
        p, m = lay.pp, pipe.f_start.shape[1]
        prev: list[tuple[int, float] | None] = [None] * p
        arrive: dict[tuple[int, str, int], tuple[int, float]] = {}
        points: dict[int, list[tuple[float, int]]] = {}
        i = 0
        for start, s, kind, mb in _ops(lay, pipe):
            deps = []
            if prev[s] is not None:
                deps.append((prev[s][0], start - prev[s][1]))
            if (s, kind, mb) in arrive:
                marker, landed = arrive[(s, kind, mb)]
                deps.append((marker, start - landed))
            at = ch.marker(start, deps)
            pts = [(start, at)]
            for off in self.work[s].tp_offsets(kind, tr.tp_us[s]):
                ends = []
                for _ in range(lay.dp):
                    ends.append(self._call(i, at))
                    i += 1
                t = start + off + tr.tp_us[s]
                ends = sorted(set(ends))
                at = ends[0] if len(ends) == 1 else ch.marker(t, [(e, 0.0) for e in ends])
                pts.append((t, at))
            # the operation ends as late as its last call (compute fills the rest): ``at`` is its end
            done = float((pipe.f_end if kind == "F" else pipe.b_end)[s, mb])
            end = at
            prev[s] = (end, done)
            if kind == "F" and s < p - 1:
                arrive[(s + 1, "F", mb)] = (self._call(i, end), done + tr.to_next_us[s])
                i += 1
            if kind == "B" and s > 0:
                arrive[(s - 1, "B", mb)] = (self._call(i, end), done + tr.to_prev_us[s - 1])
                i += 1
            if kind == "B" and mb == m - 1:
                points[s] = pts
        for j, (c, s) in enumerate(zip(tr.buckets, tr.bucket_stage)):
            pts = points[s]
            k = int(np.searchsorted([t for t, _ in pts], c.start_us * (1 + 1e-12) + 1e-9, side="right")) - 1
            self._call(i + j, pts[max(k, 0)][1])
        res = ch.run()
        d = res.delay
        pipeline = max(done + float(d[marker]) for marker, done in prev)
        return _Delays(d[self.item_start], d[self.item_end], pipeline, res.flows, res.slowed_flows)
