"""Non-blocking calls and sub-communicators: calls in flight together share the fabric.

``emu.iallreduce(x)`` (and ``ireduce_scatter``, ``iallgather``, ``ialltoall``) moves the data at once, as
the blocking call does, and returns a :class:`Request` whose timing is not settled yet. ``emu.waitall(reqs)``
settles the requests together: they start at the same emulated time and share links, PCIe reads and NIC
engines (collectives/model/concurrent.py, docs/model.md §21.6); ``emu.wait(req)`` settles one, alone.

``emu.split(groups)`` gives each rank an emulator on its group of nodes, with the group's own topology
(default a ring) embedded on those nodes of the parent's fabric. Requests of several groups settle
together in ``parent.waitall``, which every rank of the parent calls with the requests it holds: each rank
describes its requests in a few integers, the ranks exchange them, and every rank replays the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from mpi4py import MPI

from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.concurrent import Call, run_concurrent
from nicemu.collectives.registry import ALGORITHMS, COLLECTIVES, get
from nicemu.errors import CollectiveError
from nicemu.topologies import Torus, parse_topology, ring

#: collectives that have a non-blocking form
NONBLOCKING = ("allreduce", "reducescatter", "allgather", "alltoall")


@dataclass
class Request:
    """A call whose data has moved and whose time is settled by ``wait``/``waitall``.

    ``result`` is the call's :class:`Result`; until settled its times are those of the call alone. After
    ``waitall`` they are the times sharing the fabric with the other requests, and ``alone_us`` and
    ``slowdown_vs_alone`` say what the sharing cost."""

    result: object                   # Result
    owner: object = field(repr=False)   # the Emulator that ran it
    collective: str = ""
    algo: str = ""                   # the algorithm that ran (host-best: the one it chose)
    count: int = 0
    itemsize: int = 0
    done: bool = False
    alone_us: float | None = None
    slowdown_vs_alone: float | None = None

    def wait(self):
        """Settle this request alone (not collective across other requests); returns its Result."""
        return self.owner.waitall([self])[0]


def start(emu, collective: str, x: np.ndarray, op: str, algo: str, out, options: dict) -> Request:
    """Run ``collective`` with real data now; return the request that ``waitall`` settles."""
    if collective not in NONBLOCKING:
        raise CollectiveError(f"{collective} has no non-blocking form; use one of {', '.join(NONBLOCKING)}")
    spec = get(algo) if algo in ALGORITHMS else None
    if spec is not None and (spec.sparse is not None or not spec.emulated):
        raise CollectiveError(f"non-blocking calls cover the dense emulated algorithms; {algo} is not one")
    if emu.topology.ranks_per_node > 1:
        raise CollectiveError("non-blocking calls run with one rank per node; drop ranks_per_node")
    res = emu.run(collective, x, op, algo, out=out, **options)
    ran = res.chosen_algo or algo
    itemsize = np.asarray(x).dtype.itemsize
    count = np.asarray(x).shape[-1]
    return Request(res, emu, collective, ran, count, itemsize)


def split(emu, groups, topologies=None):
    """Sub-emulators on disjoint groups of ``emu``'s nodes (collective over ``emu``'s ranks, which all pass
    the same ``groups``): returns this rank's, or None when its node is in no group."""
    from nicemu.collectives.api.emulator import Emulator
    if getattr(emu, "_fabric", None) is not None:
        raise CollectiveError("split a top-level emulator only; a group of a group is not supported")
    if emu.local_nodes != 1 or emu.comm.size != emu.topology.nodes or emu.topology.ranks_per_node > 1:
        raise CollectiveError(f"split needs one rank per node: {emu.topology.name} has {emu.topology.nodes} "
                              f"nodes and the emulator {emu.comm.size} ranks")
    try:
        groups = [np.asarray([int(v) for v in g], dtype=np.int64) for g in groups]
    except (TypeError, ValueError):
        raise CollectiveError("groups must be lists of node ids, e.g. [[0, 1, 2, 3], [4, 5, 6, 7]]") from None
    flat = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    n = emu.topology.nodes
    if not groups or any(len(g) < 2 for g in groups):
        raise CollectiveError("every group needs at least 2 nodes")
    if np.any((flat < 0) | (flat >= n)):
        raise CollectiveError(f"a group names a node outside 0..{n - 1} of {emu.topology.name}")
    if len(np.unique(flat)) != len(flat):
        raise CollectiveError("the groups overlap; give each node to at most one group")
    if topologies is None:
        topologies = [ring(len(g)) for g in groups]
    if len(topologies) != len(groups):
        raise CollectiveError(f"give one topology per group ({len(groups)}), or none for rings")
    topos = [parse_topology(t) if isinstance(t, str) else t for t in topologies]
    for g, t in zip(groups, topos):
        if not isinstance(t, Torus) or t.nodes != len(g):
            raise CollectiveError(f"a group of {len(g)} nodes needs a topology of {len(g)} nodes, "
                                  f"got {getattr(t, 'name', t)}")
    mine = next((j for j, g in enumerate(groups) if emu.comm.rank in g.tolist()), None)
    color = MPI.UNDEFINED if mine is None else mine
    key = 0 if mine is None else int(np.flatnonzero(groups[mine] == emu.comm.rank)[0])
    comm = emu.comm.Split(color, key)
    if mine is None:
        return None
    try:
        sub = Emulator(comm, topos[mine], emu.profile)
    finally:
        comm.Free()
    sub._fabric = _Fabric(emu, groups, topos, mine)
    return sub


@dataclass(frozen=True, eq=False)
class _Fabric:
    """Where a sub-emulator sits: the parent, every group's nodes and topology, and its own group."""

    parent: object
    groups: list
    topologies: list
    group: int


def waitall(emu, requests: list[Request]) -> list:
    """Settle ``requests`` together on ``emu``'s fabric; returns their Results (collective over ``emu``)."""
    requests = list(requests)
    for r in requests:
        if not isinstance(r, Request):
            raise CollectiveError(f"waitall takes Requests (from iallreduce and friends), got {type(r).__name__}")
        if r.done:
            raise CollectiveError("a request was already waited for; each request is settled once")
    if getattr(emu, "_fabric", None) is not None:        # a group's own requests, among themselves
        fab = emu._fabric
        top, groups, topos, mine = fab.parent, fab.groups, fab.topologies, fab.group
        rows = _rows(requests, emu, {emu: mine})
        calls = rows
        mapping = list(range(len(rows)))
    else:
        top = emu
        subs = {r.owner for r in requests if r.owner is not emu}
        fabrics = {s._fabric for s in subs}
        if any(f.parent is not emu for f in fabrics) or len({id(f.groups) for f in fabrics}) > 1:
            raise CollectiveError("waitall on an emulator settles its own requests and those of one split of it")
        split_of = next(iter(fabrics), None)
        groups = [] if split_of is None else split_of.groups
        topos = [] if split_of is None else split_of.topologies
        owner_group = {emu: -1, **{s: s._fabric.group for s in subs}}
        rows = _rows(requests, emu, owner_group)
        calls, mapping = _exchange(emu.comm, rows, groups)
    timings = run_concurrent([_call(row, top, groups, topos) for row in calls], top.topology, top.profile)
    out = []
    for req, i in zip(requests, mapping):
        t = timings[i]
        res = req.result
        lo = req.owner.node_range
        req.result = replace(res, emulated_us=t.emulated_us, node_done_us=t.node_done_us[lo.start:lo.stop].copy())
        req.done, req.alone_us, req.slowdown_vs_alone = True, t.alone_us, t.slowdown_vs_alone
        out.append(req.result)
    return out


def _rows(requests: list[Request], emu, owner_group: dict) -> list[tuple]:
    rows = []
    for r in requests:
        if r.owner not in owner_group:
            raise CollectiveError("a request belongs to another emulator; wait for it there")
        rows.append((owner_group[r.owner], COLLECTIVES.index(r.collective), ALGORITHMS.index(r.algo), r.count,
                     r.itemsize))
    return rows


def _exchange(comm, rows: list[tuple], groups: list) -> tuple[list[tuple], list[int]]:
    """Every rank's view of the calls in flight: each group's calls as its first rank lists them, the
    parent's own as rank 0 does; and where this rank's requests sit in that list."""
    rank = comm.rank
    leader = {-1: 0, **{j: int(g.min()) for j, g in enumerate(groups)}}
    mine = np.array([r for r in rows if leader[r[0]] == rank], dtype=np.int64).reshape(-1, 5)
    counts = np.zeros(comm.size, dtype=np.int64)
    comm.Allgather(np.array([len(mine)], dtype=np.int64), counts)
    every = np.empty((int(counts.sum()), 5), dtype=np.int64)
    comm.Allgatherv(mine.ravel(), [every, counts * 5])
    # per group, the leader's calls in order; this rank's k-th request of group g is the leader's k-th
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(every[:, 0].tolist()):
        by_group.setdefault(g, []).append(i)
    seen: dict[int, int] = {}
    mapping = []
    for r in rows:
        k = seen.get(r[0], 0)
        seen[r[0]] = k + 1
        slots = by_group.get(r[0], [])
        if k >= len(slots) or tuple(every[slots[k]].tolist()) != tuple(r):
            raise CollectiveError("the ranks of a group waited for different requests; every rank of a group "
                                  "passes the same requests in the same order, as with the blocking calls")
        mapping.append(slots[k])
    return [tuple(row) for row in every.tolist()], mapping


def _call(row: tuple, top, groups: list, topos: list) -> Call:
    group, coll, algo, count, itemsize = row
    if group < 0:
        topo, nodes = top.topology, np.arange(top.topology.nodes, dtype=np.int64)
    else:
        topo, nodes = topos[group], groups[group]
    sched, _ = call_schedule(COLLECTIVES[coll], ALGORITHMS[algo], topo, top.profile, count, itemsize)
    return Call(sched, nodes, itemsize)
