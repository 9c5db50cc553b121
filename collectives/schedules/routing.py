"""Routes of transfers between nodes that are not neighbours, and how much they share links.

Recursive doubling, Rabenseifner and trees talk to partners that may be
several links away. A transfer follows dimension-ordered routing (dimension 0
first, then 1, ...), the shorter way round each ring (ties go the positive
way), as point-to-point transfers do (collectives/schedules/p2p.py). On
``switch:N`` every transfer is one hop through the switch.

The transfers of one step run at the same time, so a link that several of them
cross is shared: the step's ``load`` is the number of its transfers that cross
its most loaded directed link (on a switch: the most transfers that leave
one port or enter one port). Every transfer of the step then gets 1/``load``
of each link's rate (nic/link.py ``transmit_routed``), so the step is limited
by its most loaded link. The patterns these algorithms use load their links
evenly or nearly so, which is why one factor per step is kept rather than one
per transfer (docs/model.md).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from nicemu.topologies import Torus


@dataclass(frozen=True)
class Route:
    """The routes of a step's transfers (arrays aligned with the step's ``src``/``dst``)."""

    cum: np.ndarray        # (transfers, ndim) links crossed up to and including each dimension
    first_dim: np.ndarray  # dimension of each transfer's first link
    first_dir: np.ndarray  # its direction (+1 / -1)
    load: int              # transfers of the step crossing its most loaded link (>= 1)
    dirs: np.ndarray       # (transfers, ndim) direction taken in each dimension (+1 / -1)

    @property
    def nbytes(self) -> int:
        return self.cum.nbytes + self.first_dim.nbytes + self.first_dir.nbytes + self.dirs.nbytes

    @property
    def total(self) -> np.ndarray:
        """Links each transfer crosses."""
        return self.cum[:, -1]

    def dim_of_hop(self, j: int, mask: np.ndarray) -> np.ndarray:
        """Dimension of hop ``j`` (0-based) of the transfers selected by ``mask``."""
        return np.argmax(self.cum[mask] > j, axis=1)

    def take(self, idx: np.ndarray) -> Route:
        """The routes of transfers ``idx`` (the step's load stays the whole step's)."""
        return Route(self.cum[idx], self.first_dim[idx], self.first_dir[idx], self.load, self.dirs[idx])


#: routes kept for reuse (least recently used out first): Rabenseifner's halving and doubling, and
#: every size of a bench, repeat the same partner patterns; ~7 MB each at 262,144 nodes
_CACHE: OrderedDict = OrderedDict()
CACHE_BYTES = 256 << 20


def route(topology: Torus, src: np.ndarray, dst: np.ndarray) -> Route:
    """Routes and link sharing of transfers ``src[i] -> dst[i]`` that run at the same time."""
    src = np.ascontiguousarray(src, dtype=np.int64)
    dst = np.ascontiguousarray(dst, dtype=np.int64)
    digest = hashlib.blake2b(src.view(np.uint8), digest_size=16)
    digest.update(dst.view(np.uint8))
    key = (topology, len(src), digest.digest())
    found = _CACHE.get(key)
    if found is not None:
        _CACHE.move_to_end(key)
        return found
    found = _CACHE[key] = _route(topology, src, dst)
    while len(_CACHE) > 1 and sum(r.nbytes for r in _CACHE.values()) > CACHE_BYTES:
        _CACHE.popitem(last=False)
    return found


def _route(topology: Torus, src: np.ndarray, dst: np.ndarray) -> Route:
    n = len(src)
    if n and np.any(src == dst):
        raise ValueError("a routed transfer needs two different nodes")
    if topology.switched:
        ones = np.ones((n, 1), dtype=np.int64)
        zeros = np.zeros(n, dtype=np.int64)
        load = max(int(np.bincount(src).max(initial=0)), int(np.bincount(dst).max(initial=0)), 1)
        return Route(ones, zeros.astype(np.int8), (zeros + 1).astype(np.int8), load, ones.astype(np.int8))
    here, there = topology.coords(src), topology.coords(dst)
    shape = np.asarray(topology.shape, dtype=np.int64)
    delta = (there - here) % shape
    positive = delta <= shape - delta
    hops = np.where(positive, delta, shape - delta)
    first_dim = np.argmax(hops > 0, axis=1) if n else np.zeros(0, dtype=np.int64)
    rows = np.arange(n)
    first_dir = np.where(positive[rows, first_dim], 1, -1)
    return Route(np.cumsum(hops, axis=1).astype(np.int32), first_dim.astype(np.int8), first_dir.astype(np.int8),
                 _torus_load(topology, here, there, hops, positive), np.where(positive, 1, -1).astype(np.int8))


def _torus_load(topology: Torus, here: np.ndarray, there: np.ndarray, hops: np.ndarray,
                positive: np.ndarray) -> int:
    """Most transfers crossing one directed link, by difference arrays along every ring."""
    best = 1
    for d, k in enumerate(topology.shape):
        moving = hops[:, d] > 0
        if not moving.any():
            continue
        # where the transfer is while it moves along d: dims before d already at the destination
        at = np.concatenate([there[moving, :d], here[moving, d:]], axis=1)
        at[:, d] = 0
        line = at @ np.asarray(topology.strides, dtype=np.int64)
        stride = topology.strides[d]
        line = (line // (stride * k)) * stride + line % stride        # index of the ring (line)
        h = hops[moving, d]
        pos = here[moving, d]
        fwd = positive[moving, d]
        # link c of direction +1 is c -> c+1; of direction -1 it is c -> c-1: a transfer from
        # position a crossing h links uses +links a..a+h-1 or -links a-h+1..a (mod k)
        start = np.where(fwd, pos, (pos - h + 1) % k)
        nlines = topology.nodes // k
        for sel in (fwd, ~fwd):
            if not sel.any():
                continue
            s, hh, ln = start[sel], h[sel], line[sel]
            end = s + hh
            width = k + 1
            idx = [ln * width + s, ln * width + np.minimum(end, k)]
            wrap = end > k
            idx += [ln[wrap] * width, ln[wrap] * width + (end[wrap] - k)]
            weights = [np.ones(len(s)), -np.ones(len(s)), np.ones(int(wrap.sum())), -np.ones(int(wrap.sum()))]
            diff = np.bincount(np.concatenate(idx), np.concatenate(weights), minlength=nlines * width)
            loads = np.cumsum(diff.reshape(nlines, width), axis=1)[:, :k]
            best = max(best, int(round(loads.max())))
    return best
