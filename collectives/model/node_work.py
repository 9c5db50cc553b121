"""The work a node does after a stream has reached it, as flows of the shared fabric.

In the replay of concurrent calls (docs/model.md §21.6) a transfer is a flow over
its links and the sender's PCIe read. What a receiver does with the chunk then
(the DMA write into host memory, the NIC engine's reduction, the host core's
pass, the host DRAM traffic of both) used to sit in the gaps between flows: it
took its alone time however many calls wanted the same core or engine. Here
each such service becomes a *work flow* on the node's resource, with its alone
window, so that two calls on one node share its PCIe write side, NIC engine,
host cores and DRAM the way two calls on one link share the link.

The windows come from the step model itself: while a call is timed alone, a
:class:`WorkRecorder` stands where the telemetry would (nic/telemetry.py) and
keeps every service the receiving halves report. Each resource serves one
stream at a time within a call (its busy-until clock), so a call's work flows
on one resource never overlap, and a call alone keeps its time.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.fabric_replay import matches
from nicemu.nic.profile import Profile
from nicemu.nic.telemetry import DRAM, HOST, NIC, WRITE

#: resources of every node after the links, in resource_capacity's order
NODE_RESOURCES = ("pcie_read", "pcie_write", "nic_reduce", "host", "dram")
PCIE_READ, PCIE_WRITE = 0, 1
#: telemetry kind -> node resource slot, for the services that become work flows. The DMA reads a
#: receiver issues (operand prefetches, read-backs) are left out: a stream's own read rides on its
#: flow, and the replay's window of that read (shifted by the link latency) would overlap them.
_SLOT = {WRITE: PCIE_WRITE, NIC: 2, HOST: 3, DRAM: 4}


def node_capacity(profile: Profile) -> np.ndarray:
    """Bytes/µs of each node resource (an infinite rate stays infinite: it never binds)."""
    return np.array([profile.pcie.bandwidth_GBps, profile.pcie.bandwidth_GBps, profile.nic.reduce_GBps,
                     profile.host.reduce_GBps, profile.host.memory_GBps], dtype=np.float64) * 1e3


class WorkRecorder:
    """Takes the place of the agents' telemetry while a call is timed alone and keeps, while ``group`` is
    set, the services on resources that can bind (finite capacity): node, slot, bytes, start, end."""

    def __init__(self, profile: Profile) -> None:
        self._keep = {k: s for k, s in _SLOT.items() if np.isfinite(node_capacity(profile)[s])}
        self.group = -1
        self._parts: list[tuple] = []

    def serve(self, kind: int, ix, nbytes, start, end) -> None:
        slot = self._keep.get(kind)
        if slot is None or self.group < 0:
            return
        ix = np.atleast_1d(ix)
        vals = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (nbytes, start, end))
        parts = np.broadcast_arrays(ix, *vals)
        self._parts.append((slot, self.group, *(np.array(p) for p in parts)))

    def link(self, *args) -> None:
        """Links are the transfers' own flows."""

    def routed(self, *args) -> None:
        """Links are the transfers' own flows."""

    def reset(self) -> None:
        self._parts.clear()

    def flows(self) -> dict[str, np.ndarray]:
        """Every kept service that takes time and moves bytes, in the order it was reported."""
        if not self._parts:
            z = np.zeros(0)
            zi = np.zeros(0, dtype=np.int64)
            return {"node": zi, "slot": zi, "group": zi, "nbytes": z, "first": z, "last": z}
        cols = list(zip(*self._parts))
        lengths = [len(ix) for ix in cols[2]]
        out = {"slot": np.repeat(np.array(cols[0], dtype=np.int64), lengths),
               "group": np.repeat(np.array(cols[1], dtype=np.int64), lengths),
               "node": np.concatenate(cols[2]).astype(np.int64),
               "nbytes": np.concatenate(cols[3]), "first": np.concatenate(cols[4]),
               "last": np.concatenate(cols[5])}
        keep = (out["last"] > out["first"]) & (out["nbytes"] > 0)
        return {k: v[keep] for k, v in out.items()}


def work_dependencies(work: dict[str, np.ndarray], nodes: int, recv_key: np.ndarray,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (dependency, dependent) among a call's flows, with work flows numbered after its ``len(recv_key)``
    transfers (``recv_key``: ``group * nodes + receiver`` of each transfer). Returns the pairs ending at work
    flows and the keys (``group * nodes + node``) by which transfers find the work of their sender.

    A work flow waits for the transfers its node received in its step group, for the node's latest earlier
    work on each resource in that group (a DMA write, then the host's pass over it) and for the node's
    previous work on the same resource (the resource's queue)."""
    k, w = len(recv_key), len(work["node"])
    key = work["group"] * nodes + work["node"]
    d, t = matches(recv_key, key, np.ones(w, dtype=bool))
    dep, tgt = [d], [k + t]
    # within (group, node), in reported order: the latest earlier service on each resource
    order = np.argsort(key, kind="stable")
    pos = np.arange(w)
    first_of = np.maximum.accumulate(np.where(np.r_[True, key[order][1:] != key[order][:-1]], pos, 0)) if w else pos
    for slot in np.unique(work["slot"]):
        latest = np.maximum.accumulate(np.where(work["slot"][order] == slot, pos, -1)) if w else pos
        prev = np.r_[-1, latest[:-1]]
        ok = prev >= first_of
        dep.append(k + order[prev[ok]])
        tgt.append(k + order[pos[ok]])
    queue = np.lexsort((np.arange(w), work["first"], work["slot"], work["node"]))
    node, slot = work["node"][queue], work["slot"][queue]
    on = (node[1:] == node[:-1]) & (slot[1:] == slot[:-1])
    dep.append(k + queue[:-1][on])
    tgt.append(k + queue[1:][on])
    return np.concatenate(dep), np.concatenate(tgt), key


def quiet(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], links: int,
          chains: list[int] | None = None) -> list[np.ndarray]:
    """The rates of several calls' flows to replay together, ``(offsets, resources, rate)`` per call, with
    the work flows that cannot be slowed made instant (infinite rate).

    ``chains`` (one id per call; default: each call its own) says which calls run one after another, each
    waiting for the previous one's end. A node resource that only one chain crosses serves its work one
    flow at a time (within a call each work flow waits for the previous one on that resource), so none is
    ever slowed and its delays are those of an instant flow with the same dependencies: the replay gives
    the same delays without sharing rates among them (docs/model.md §21.6, step 2). A call's flows that
    its own overlaps slowed past its end would meet the next call's there; instant, they do not, which
    keeps the self-overlap of §21.6, step 5 out of what follows."""
    ids = np.arange(len(parts)) if chains is None else np.asarray(chains, dtype=np.int64)
    pairs = [np.unique(res[res >= links]) for _, res, _ in parts]
    res_all = np.concatenate(pairs) if pairs else np.zeros(0, dtype=np.int64)
    chain_all = np.repeat(ids, [len(x) for x in pairs])
    key = np.unique(np.stack([res_all, chain_all]), axis=1) if len(res_all) else np.zeros((2, 0), dtype=np.int64)
    users = np.bincount(key[0], minlength=links)
    out = []
    for offsets, res, rate in parts:
        single = np.diff(offsets) == 1
        if not single.any():
            out.append(rate)
            continue
        r = np.where(single, res[np.minimum(offsets[:-1], len(res) - 1)], -1)
        solo = single & (r >= links) & (users[np.maximum(r, 0)] == 1)
        out.append(np.where(solo, np.inf, rate) if solo.any() else rate)
    return out
