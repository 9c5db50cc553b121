"""Resources and routes of a shared fabric built from a nicemu topology and profile.

The flow model itself (nic/fabric.py) knows only resources and routes. This
builder lives in ``collectives/model`` rather than beside it because the
routing it reuses (dimension-ordered, the shorter way round each ring, ties
the positive way: collectives/schedules/routing.py) lives in ``collectives``,
and ``nic`` must not import ``collectives``.

Resources:

* torus and ring: one per directed link, id ``(node * ndim + dim) * 2 + slot``
  (slot 0: direction +1, slot 1: direction -1; in a dimension of size 2 only
  slot 0 is used, as the two neighbours are one node), capacity the link's
  bandwidth (per-dimension overrides included);
* ``switch:N``: the transmit side of each node's port (id ``node``) and its
  receive side (id ``N + node``); the switch itself never blocks.

A flow from ``a`` to ``b`` crosses the links of its route and pays the sum of
their latencies once (on a switch: ``link.latency_us + switch.latency_us``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nicemu.collectives.schedules.routing import route as _torus_route
from nicemu.nic.fabric import FabricError, Routes, simulate
from nicemu.nic.profile import Profile
from nicemu.topologies import LinkParams, Torus


def _num(x: float) -> str:
    """A double written so that it reads back exactly."""
    return repr(float(x))


@dataclass(frozen=True)
class FlowSet:
    """Flows between nodes with their routes and route latencies, ready for :func:`simulate`."""

    src: np.ndarray
    dst: np.ndarray
    routes: Routes
    latency_us: np.ndarray


def _node_ids(values, what: str) -> np.ndarray:
    """Node ids as int64; a non-integer id is an error, not a truncation."""
    raw = np.atleast_1d(np.asarray(values))
    if raw.dtype.kind not in "iu":
        as_float = raw.astype(np.float64) if raw.dtype.kind in "fb" else None
        if as_float is None or not np.all(np.isfinite(as_float)) or np.any(as_float != np.floor(as_float)):
            raise FabricError(f"{what} node ids must be whole numbers, got {raw.tolist()[:4]}")
    return raw.astype(np.int64)


class Fabric:
    """The directed resources of ``topology`` under ``profile`` and the routes between its nodes."""

    def __init__(self, topology: Torus, profile: Profile) -> None:
        if topology.ranks_per_node > 1:
            raise FabricError(f"{topology.name}: the fabric model covers the network only; "
                              "use a topology without ranks per node")
        self.topology = topology
        self.profile = profile
        default = LinkParams(profile.link.bandwidth_GBps, profile.link.latency_us)
        links = [topology.link_params(d, default) for d in range(topology.ndim)]
        for d, link in enumerate(links):
            if not np.isfinite(link.bandwidth_GBps):
                raise FabricError(f"{topology.name}: dimension {d} has an infinite link bandwidth; "
                                  "give the fabric a finite link.bandwidth_GBps")
        #: bytes/µs and µs per hop of each dimension (1 GB/s = 1e3 bytes/µs)
        self.dim_capacity = np.array([link.bandwidth_GBps * 1e3 for link in links])
        self.dim_latency_us = np.array([link.latency_us for link in links])
        n = topology.nodes
        if topology.switched:
            self.capacity = np.full(2 * n, self.dim_capacity[0])
        else:
            per_node = np.repeat(self.dim_capacity, 2)
            self.capacity = np.tile(per_node, n)

    @property
    def resources(self) -> int:
        return len(self.capacity)

    def resource_name(self, rid: int) -> str:
        """A readable name: ``tx3``/``rx3`` for switch ports, ``5->6/d0+`` for torus links."""
        topo = self.topology
        if topo.switched:
            n = topo.nodes
            return f"tx{rid}" if rid < n else f"rx{rid - n}"
        node, rest = divmod(rid, 2 * topo.ndim)
        dim, slot = divmod(rest, 2)
        step = 1 if slot == 0 else -1
        return f"{node}->{topo.neighbor(node, dim, step)}/d{dim}{'+' if step > 0 else '-'}"

    def used_resources(self) -> np.ndarray:
        """Ids of the resources that exist (torus dimensions of size 2 have one link per node pair)."""
        topo = self.topology
        if topo.switched:
            return np.arange(self.resources)
        rid = np.arange(self.resources)
        dim = (rid % (2 * topo.ndim)) // 2
        slot = rid % 2
        size2 = np.asarray(topo.shape)[dim] == 2
        return rid[~(size2 & (slot == 1))]

    def flows(self, src, dst) -> FlowSet:
        """Routes (resource ids in hop order) and route latencies of flows ``src[i] -> dst[i]``."""
        topo = self.topology
        src, dst = _node_ids(src, "source"), _node_ids(dst, "destination")
        if src.shape != dst.shape:
            raise FabricError(f"give as many destinations as sources ({len(src)} and {len(dst)})")
        bad = np.flatnonzero((src < 0) | (src >= topo.nodes) | (dst < 0) | (dst >= topo.nodes) | (src == dst))
        if bad.size:
            i = bad[0]
            raise FabricError(f"flow {i}: {src[i]} -> {dst[i]} is not between two different nodes of {topo.name}")
        if topo.switched:
            offsets = np.arange(0, 2 * len(src) + 1, 2, dtype=np.int64)
            res = np.stack([src, topo.nodes + dst], axis=1).ravel()
            lat = np.full(len(src), self.dim_latency_us[0] + self.profile.switch.latency_us)
            return FlowSet(src, dst, Routes(offsets, res), lat)
        r = _torus_route(topo, src, dst)
        hops = np.diff(np.concatenate([np.zeros((len(src), 1), dtype=np.int64), r.cum.astype(np.int64)], axis=1),
                       axis=1)                                               # (flows, ndim)
        here, there = topo.coords(src), topo.coords(dst)
        shape = np.asarray(topo.shape, dtype=np.int64)
        strides = np.asarray(topo.strides, dtype=np.int64)
        flow_ix, order_ix, res_ix = [], [], []
        for d in range(topo.ndim):
            h = hops[:, d]
            f = np.repeat(np.arange(len(src)), h)
            i = np.arange(h.sum()) - np.repeat(np.cumsum(h) - h, h)          # hop number within dimension d
            step = r.dirs[f, d].astype(np.int64)
            # while moving along d: dimensions before d are at the destination, after d at the source
            at = np.concatenate([there[f, :d], here[f, d:]], axis=1)
            at[:, d] = (here[f, d] + i * step) % shape[d]
            node = at @ strides
            slot = np.where(step > 0, 0, 1)
            flow_ix.append(f)
            order_ix.append(r.cum[f, d].astype(np.int64) - h[f] + i)           # hop number along the route
            res_ix.append((node * topo.ndim + d) * 2 + slot)
        f, o, res = (np.concatenate(x) for x in (flow_ix, order_ix, res_ix))
        perm = np.lexsort((o, f))
        offsets = np.concatenate([[0], np.cumsum(hops.sum(axis=1))]).astype(np.int64)
        lat = hops @ self.dim_latency_us
        return FlowSet(src, dst, Routes(offsets, res[perm]), lat)

    def simgrid_platform(self, fs: FlowSet, latency: bool = True) -> str:
        """SimGrid platform XML of this fabric for an external check (tests/simgrid/flows.cpp): a host per
        node, a link per resource (bandwidth in bytes/µs, latency in µs, so SimGrid's seconds read as
        microseconds), and the route of every (src, dst) pair in ``fs``. ``latency=False``: links of 0 µs."""
        topo = self.topology
        lines = ["<?xml version='1.0'?>", '<!DOCTYPE platform SYSTEM "https://simgrid.org/simgrid.dtd">',
                 '<platform version="4.1">', '<zone id="fabric" routing="Full">']
        lines += [f'<host id="n{v}" speed="1f"/>' for v in range(topo.nodes)]
        if topo.switched:   # the whole route latency on the sender's port, none on the receiver's
            alpha = self.dim_latency_us[0] + self.profile.switch.latency_us
            lat = {r: (alpha if latency and r < topo.nodes else 0.0) for r in range(self.resources)}
        else:
            rid = self.used_resources()
            per = self.dim_latency_us[(rid % (2 * topo.ndim)) // 2] if latency else np.zeros(len(rid))
            lat = dict(zip(rid.tolist(), per.tolist()))
        for r, lat_us in lat.items():
            lines.append(f'<link id="r{r}" bandwidth="{_num(self.capacity[r])}Bps" latency="{_num(lat_us)}s"/>')
        seen = set()
        for i, (a, b) in enumerate(zip(fs.src.tolist(), fs.dst.tolist())):
            if (a, b) not in seen:
                seen.add((a, b))
                links = "".join(f'<link_ctn id="r{r}"/>' for r in fs.routes.route(i))
                lines.append(f'<route src="n{a}" dst="n{b}" symmetrical="NO">{links}</route>')
        lines += ["</zone>", "</platform>"]
        return "\n".join(lines) + "\n"

    def simulate(self, src, dst, nbytes, start_us=0.0, latency: bool = True) -> np.ndarray:
        """Finish times (µs) of flows ``src[i] -> dst[i]`` of ``nbytes[i]`` starting at ``start_us[i]``
        (``latency=False``: without route latencies)."""
        fs = self.flows(src, dst)
        return simulate(self.capacity, start_us, nbytes, fs.routes, fs.latency_us if latency else 0.0)
