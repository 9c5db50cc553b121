"""A shared fabric: concurrent flows share directed resources by max-min fairness.

Every nicemu call so far runs alone on an idle machine. On a shared fabric
concurrent streams contend for the same directed links. This module is the
flow-level model of that contention, in the family of SimGrid's flow models:

* a *resource* (a directed link, later a PCIe direction or a NIC engine) has
  a capacity in bytes/µs;
* a *flow* has a start time (µs), a size (bytes), a route (the resources it
  crosses, each once) and a latency (µs) paid once, before it starts to
  share: it joins the sharing at ``start + latency``;
* between two events (a flow joining or finishing) every rate is constant:
  the weighted max-min fair allocation of the flows present. A flow's rate
  is ``weight × level``; progressive filling raises every level together and
  freezes the flows of a resource once it saturates.

``simulate`` returns every flow's finish time (µs), exact for that definition
up to floating-point rounding (a flow alone finishes at ``start + latency +
bytes / capacity`` to the last bit). docs/model.md §21 states the model,
its algorithm and what it leaves out.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nicemu.errors import NicemuError

#: flows whose projected finish lies within this relative distance of an event finish at it, so
#: rounding in ``remaining -= rate * dt`` cannot leave a flow a few bytes short and add an event
_FINISH_RTOL = 1e-12


#: flows whose level lies within this relative distance below that of a leaving flow are filled again
#: rather than kept, so rounding cannot keep a flow whose true level equals the leaver's
_KEEP_RTOL = 1e-9


class FabricError(NicemuError, ValueError):
    """Bad input to the fabric model (a size, a route, a capacity)."""


@dataclass(frozen=True)
class Routes:
    """Routes in compressed form: flow ``f`` crosses ``resources[offsets[f]:offsets[f + 1]]``."""

    offsets: np.ndarray    # (flows + 1,) int64, starts at 0, non-decreasing
    resources: np.ndarray  # (entries,) int64 resource ids

    @property
    def flows(self) -> int:
        return len(self.offsets) - 1

    def route(self, flow: int) -> list[int]:
        """The resource ids of one flow, in route order."""
        return self.resources[self.offsets[flow]:self.offsets[flow + 1]].tolist()

    @staticmethod
    def from_lists(routes: Sequence[Sequence[int]]) -> Routes:
        """Pack a list of routes (each a sequence of resource ids)."""
        try:
            lengths = np.fromiter((len(r) for r in routes), dtype=np.int64, count=len(routes))
            flat = [operator.index(x) for r in routes for x in r]
        except TypeError:
            raise FabricError("a route must be a list of whole resource ids, e.g. [[0, 1], [1]]") from None
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return Routes(offsets, np.asarray(flat, dtype=np.int64))


def _as_vector(name: str, value, flows: int) -> np.ndarray:
    try:
        arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (flows,))
    except (TypeError, ValueError):
        raise FabricError(f"{name} must be a number or one number per flow ({flows}); "
                          f"got {np.shape(value)}") from None
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise FabricError(f"{name} of flow {bad[0]} is {arr[bad[0]]}; give a finite number")
    return arr


def _check(capacity, start_us, nbytes, routes, latency_us, weight):
    try:
        cap = np.asarray(capacity, dtype=np.float64)
    except (TypeError, ValueError):
        raise FabricError("capacity must be one number (bytes/us) per resource") from None
    if cap.ndim != 1:
        raise FabricError(f"capacity must be one number per resource, got shape {cap.shape}")
    bad = np.flatnonzero(~(np.isfinite(cap) & (cap > 0)))
    if bad.size:
        raise FabricError(f"resource {bad[0]} has capacity {cap[bad[0]]}; every capacity must be a positive, "
                          "finite number of bytes/us")
    if not isinstance(routes, Routes):
        routes = Routes.from_lists(routes)
    flows = routes.flows
    start = _as_vector("start_us", start_us, flows)
    size = _as_vector("bytes", nbytes, flows)
    lat = _as_vector("latency_us", latency_us, flows)
    w = _as_vector("weight", 1.0 if weight is None else weight, flows)
    for name, arr, strict in (("start_us", start, False), ("bytes", size, False), ("latency_us", lat, False),
                              ("weight", w, True)):
        neg = np.flatnonzero(arr <= 0 if strict else arr < 0)
        if neg.size:
            need = "positive" if strict else "at least 0"
            raise FabricError(f"{name} of flow {neg[0]} is {arr[neg[0]]}; it must be {need}")
    lengths = np.diff(routes.offsets)
    empty = np.flatnonzero(lengths <= 0)
    if empty.size:
        raise FabricError(f"flow {empty[0]} has an empty route; give it at least one resource")
    res = routes.resources
    out = np.flatnonzero((res < 0) | (res >= len(cap)))
    if out.size:
        flow = int(np.searchsorted(routes.offsets, out[0], side="right") - 1)
        raise FabricError(f"flow {flow} crosses unknown resource {res[out[0]]}; resource ids are 0..{len(cap) - 1}")
    flow_of = np.repeat(np.arange(flows, dtype=np.int64), lengths)
    key = flow_of * len(cap) + res
    if len(np.unique(key)) != len(key):
        dup = np.flatnonzero(np.bincount(np.unique(key, return_inverse=True)[1]) > 1)[0]
        flow = int(np.unique(key)[dup] // len(cap))
        raise FabricError(f"flow {flow} crosses a resource twice; a route lists each resource once")
    return cap, start, size, lat, w, flow_of, res


def _fill(rem: np.ndarray, ef: np.ndarray, er: np.ndarray, weight: np.ndarray, rate: np.ndarray) -> None:
    """Progressive filling of the flows of entries (``ef``, ``er``) (grouped by flow) into the remaining
    capacities ``rem`` (changed in place); writes their rates into ``rate``.

    Many bottlenecks at a time: a resource whose fair level (remaining capacity over the weights of its
    unfrozen flows) is no higher than that of every resource its flows cross saturates first whatever
    else happens (the levels of the others can only rise as flows freeze), so all such resources freeze
    together in one pass."""
    if not len(ef):
        return
    # work on the resources these flows cross only (numbered 0..m-1), not on every resource of the fabric
    mark = np.zeros(len(rem), dtype=bool)
    mark[er] = True
    used = np.flatnonzero(mark)
    local = np.zeros(len(rem), dtype=np.int64)
    local[used] = np.arange(len(used))
    er = local[er]
    left = rem[used]
    nres = len(used)
    starts = np.flatnonzero(np.concatenate(([True], ef[1:] != ef[:-1])))
    lengths = np.diff(np.append(starts, len(ef)))
    ids = ef[starts]
    while len(ef):
        wsum = np.bincount(er, weights=weight[ef], minlength=nres)
        level = np.full(nres, np.inf)
        np.divide(np.maximum(left, 0.0), wsum, out=level, where=wsum > 0)
        lev_e = level[er]
        flow_min = np.minimum.reduceat(lev_e, starts)
        # a resource is a bottleneck now unless one of its flows sees a lower level elsewhere
        higher = np.bincount(er, weights=lev_e > np.repeat(flow_min, lengths), minlength=nres)
        frozen_f = np.logical_or.reduceat((higher == 0)[er], starts)
        frozen_e = np.repeat(frozen_f, lengths)
        got = weight[ids[frozen_f]] * flow_min[frozen_f]
        rate[ids[frozen_f]] = got
        left -= np.bincount(er[frozen_e], weights=np.repeat(got, lengths[frozen_f]), minlength=nres)
        keep = ~frozen_e
        ef, er = ef[keep], er[keep]
        ids, lengths = ids[~frozen_f], lengths[~frozen_f]
        starts = np.cumsum(lengths) - lengths
    rem[used] = left


#: progressive filling for other modules (nic/fabric_replay.py)
fill_rates = _fill


def _join_level(cap: np.ndarray, flow_of: np.ndarray, res: np.ndarray, w: np.ndarray, rate: np.ndarray,
                active: np.ndarray, joined: np.ndarray, flows: int) -> float:
    """A level below which no rate changes when ``joined`` join the ``active`` flows (docs/model.md §21.2).

    On a resource ``r`` that joiners cross, the flows already there keep their levels ``l_f`` below the
    first saturation among such resources, so ``r`` cannot saturate below the root ``mu_r`` of
    ``sum_f w_f min(l_f, mu) + J_r mu = C_r`` (``J_r``: the joiners' weights on ``r``). The left side is
    concave and piecewise linear, the minimum of its pieces, so ``mu_r`` is the largest of the pieces'
    roots. The answer is ``min_r mu_r``: with one joiner, exactly its new level."""
    is_new = np.zeros(flows, dtype=bool)
    is_new[joined] = True
    j_e = is_new[flow_of]
    jw = np.bincount(res[j_e], weights=w[flow_of[j_e]], minlength=len(cap))
    on = np.flatnonzero(jw > 0)
    old = (jw > 0)[res] & active[flow_of] & ~j_e
    r, f = res[old], flow_of[old]
    lev = rate[f] / w[f]
    order = np.lexsort((lev, r))
    r, lev, wf = r[order], lev[order], w[f[order]]
    wl = wf * lev
    mu = cap[on] / jw[on]                                      # the last piece: every flow there below mu
    if len(r):
        first = np.flatnonzero(np.concatenate(([True], r[1:] != r[:-1])))
        size = np.diff(np.append(first, len(r)))
        start = np.repeat(first, size)
        cw, cwl = np.cumsum(wf) - wf, np.cumsum(wl) - wl       # exclusive running sums
        below = cwl - cwl[start]                               # sum of w l over the flows of lower level
        above = np.repeat(np.add.reduceat(wf, first), size) - (cw - cw[start])   # weights from here on
        roots = (cap[r] - below) / (jw[r] + above)
        best = np.full(len(cap), -np.inf)
        best[r[first]] = np.maximum.reduceat(roots, first)
        full_wl = np.bincount(r, weights=wl, minlength=len(cap))
        mu = np.maximum((cap[on] - full_wl[on]) / jw[on], best[on])
    return float(mu.min())


def max_min_rates(capacity: np.ndarray, flow_of: np.ndarray, resource_of: np.ndarray, weight: np.ndarray,
                  flows: int) -> np.ndarray:
    """Weighted max-min fair rates (bytes/µs) of flows whose routes are the pairs (``flow_of``, ``resource_of``).

    Entries must be grouped by flow; flows with no entry get rate 0. Progressive filling (see ``_fill``)."""
    rate = np.zeros(flows)
    _fill(np.asarray(capacity, dtype=np.float64).copy(), np.asarray(flow_of), np.asarray(resource_of),
          np.asarray(weight, dtype=np.float64), rate)
    return rate


def simulate(capacity: Sequence[float] | np.ndarray, start_us, nbytes, routes: Routes | Sequence[Sequence[int]],
             latency_us=0.0, weight=None, intervals: list | None = None) -> np.ndarray:
    """Finish time (µs) of every flow sharing the resources by (weighted) max-min fairness.

    ``capacity``: bytes/µs per resource; ``start_us``, ``nbytes``, ``latency_us`` and ``weight``: one
    value per flow or one for all; ``routes``: resource ids per flow (a :class:`Routes` or a list of
    lists). A flow joins the sharing at ``start + latency`` and leaves when its bytes are through; a
    flow of 0 bytes finishes on joining. ``intervals``: a list that receives ``(t0, t1, flows, rates)``
    for every stretch of constant rates (for telemetry and tests). Raises :class:`FabricError` for a
    negative size, start or latency, a non-positive capacity or weight, an empty route or an unknown
    resource.

    At an event, flows whose level (rate / weight) is below the lowest level of the flows leaving, and
    below a lower bound of the level of those joining, keep their rates: progressive filling reaches
    their levels before any resource the leavers or joiners cross saturates, so the change alters
    nothing there (docs/model.md §21). Only the others are filled again, into the capacity the kept
    flows leave."""
    cap, start, size, lat, w, flow_of, res = _check(capacity, start_us, nbytes, routes, latency_us, weight)
    flows = len(start)
    join = start + lat
    finish = np.full(flows, np.nan)
    zero = size == 0
    finish[zero] = join[zero]
    order = np.argsort(join, kind="stable")
    order = order[~zero[order]]
    remaining = size.copy()
    active = np.zeros(flows, dtype=bool)
    rate = np.zeros(flows)
    left_level = None          # lowest level of the flows that left at the last event, if only flows left
    nxt = 0
    t = 0.0
    while nxt < len(order) or active.any():
        if not active.any():
            t = join[order[nxt]]
        joined = order[nxt:nxt + int(np.searchsorted(join[order[nxt:]], t, side="right"))]
        nxt += len(joined)
        active[joined] = True
        if joined.size:
            bound = _join_level(cap, flow_of, res, w, rate, active, joined, flows)
            floor = bound if left_level is None else min(bound, left_level)
        else:
            floor = left_level
        if floor is None:
            kept = np.zeros(flows, dtype=bool)
        else:
            kept = active & (rate / w < floor * (1 - _KEEP_RTOL))
            kept[joined] = False
        redo = active & ~kept
        kept_e = kept[flow_of]
        rem = cap - np.bincount(res[kept_e], weights=rate[flow_of[kept_e]], minlength=len(cap))
        redo_e = redo[flow_of]
        _fill(rem, flow_of[redo_e], res[redo_e], w, rate)
        ids = np.flatnonzero(active)
        if floor is not None and not np.all(rate[ids] > 0):   # rounding starved a flow: fill all again
            act_e = active[flow_of]
            _fill(cap.copy(), flow_of[act_e], res[act_e], w, rate)
        projected = t + remaining[ids] / rate[ids]
        t_next = float(projected.min())
        if nxt < len(order):
            t_next = min(t_next, float(join[order[nxt]]))
        if intervals is not None:
            intervals.append((t, t_next, ids, rate[ids].copy()))
        done = projected <= t_next + _FINISH_RTOL * max(abs(t_next), 1.0)
        finish[ids[done]] = projected[done]
        remaining[ids] -= rate[ids] * (t_next - t)
        gone = ids[done]
        left_level = float((rate[gone] / w[gone]).min()) if gone.size else None
        active[gone] = False
        rate[gone] = 0.0
        t = t_next
    return finish
