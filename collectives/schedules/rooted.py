"""Rooted collectives (Broadcast, Reduce): the root, and the scatter and gather their schedules share.

Every rooted schedule is written for root 0 and then moved to the real root
by a translation of the topology (:func:`at_root`): virtual node ``v`` is
played by the node whose coordinates are ``coords(v) + coords(root)``, modulo
the shape, dimension by dimension. On ``ring:N`` and ``switch:N`` this is
MPICH's relative rank (``v = (node - root) mod p``); on a torus a translation
maps every link onto a link of the same dimension and direction, so a rooted
schedule takes the same time from every root.

The pieces, all for root 0 and the node segments of ``final_segments``
(virtual node ``v`` owns the ``v``-th contiguous range; the ranges of nodes
``a..b`` are contiguous):

* :func:`binomial_scatter` (MPICH's scatter inside its long-message
  broadcast): in round ``i`` (``k = ⌈lg p⌉ - 1 - i``) every node ``v`` with
  ``v mod 2^(k+1) = 0`` and ``v + 2^k < p`` sends node ``v + 2^k`` the segments
  of nodes ``v + 2^k .. min(v + 2^(k+1), p) - 1``: ⌈lg p⌉ rounds, each node
  ends with its own segment;
* :func:`binomial_gather` (the gather of MPICH's long-message reduce): the
  scatter backwards, round ``k`` sends from ``v`` (``v mod 2^(k+1) = 2^k``) to
  ``v - 2^k`` the segments ``v .. min(v + 2^k, p) - 1``;
* :func:`ring_gather`: the segments travel to the root along the rings,
  dimension by dimension from the last (the reverse of the dimension-wise
  allgather, towards the root only): in a ring of ``k`` nodes, step ``s``
  (``0 .. k-2``), the node at position ``u >= s + 1`` sends the piece of
  position ``u - s`` to position ``u + 1`` (``k - 1`` sends to 0, the root's
  position). Only nodes whose later coordinates are the root's take part.
  Neighbour steps only.

Routed steps (scatter, gather) take the flags their algorithm gives them; see
collectives/schedules/scatter_gather.py for the compositions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np

from nicemu.collectives.schedules.routing import route
from nicemu.collectives.schedules.steps import Step, final_segments, split
from nicemu.topologies import Torus

#: the rooted collectives
ROOTED = ("broadcast", "reduce")


def translation(topology: Torus, root: int) -> np.ndarray:
    """Node that plays virtual node ``v`` (index ``v``) when the root is ``root``."""
    nodes = np.arange(topology.nodes, dtype=np.int64)
    shape = np.asarray(topology.shape, dtype=np.int64)
    coords = (topology.coords(nodes) + topology.coords(np.array([root], dtype=np.int64))[0]) % shape
    return coords @ np.asarray(topology.strides, dtype=np.int64)


def at_root(steps: Iterable[Step], topology: Torus, root: int) -> Iterator[Step]:
    """The steps of a root-0 schedule moved to ``root`` (routes recomputed, loads unchanged)."""
    if root == 0:
        yield from steps
        return
    node = translation(topology, root)
    for step in steps:
        src, dst = node[step.src], node[step.dst]
        yield replace(step, src=src, dst=dst, route=None if step.route is None else route(topology, src, dst))


def _ends(topology: Torus, count: int) -> tuple[np.ndarray, np.ndarray]:
    off, cnt = final_segments(topology, count)
    return off, off + cnt


def binomial_scatter(topology: Torus, count: int, flags: dict) -> Iterator[Step]:
    """Root 0 sends every node its segment down a binomial tree (⌈lg p⌉ routed rounds)."""
    p = topology.nodes
    off, ends = _ends(topology, count)
    nodes = np.arange(p, dtype=np.int64)
    levels = (p - 1).bit_length()
    for i, k in enumerate(range(levels - 1, -1, -1)):
        src = nodes[((nodes % (2 << k)) == 0) & (nodes + (1 << k) < p)]
        dst = src + (1 << k)
        last = np.minimum(src + (2 << k), p) - 1
        yield Step("scatter", 0, 1, i, src, dst, off[dst], ends[last] - off[dst], **flags,
                   route=route(topology, src, dst))


def binomial_gather(topology: Torus, count: int, flags: dict) -> Iterator[Step]:
    """Every node's segment reaches root 0 up a binomial tree (⌈lg p⌉ routed rounds)."""
    p = topology.nodes
    off, ends = _ends(topology, count)
    nodes = np.arange(p, dtype=np.int64)
    for k in range((p - 1).bit_length()):
        src = nodes[(nodes % (2 << k)) == (1 << k)]
        last = np.minimum(src + (1 << k), p) - 1
        dst = src - (1 << k)
        yield Step("gather", 0, 1, k, src, dst, off[src], ends[last] - off[src], **flags,
                   route=route(topology, src, dst))


def ring_gather(topology: Torus, count: int, policy) -> Iterator[Step]:
    """The segments of a dimension-wise reduce-scatter travel to root 0 along the rings (neighbour steps).

    ``policy`` is the algorithm's dimension-ring policy (collectives/schedules/dimension_rings.py); the
    gather takes the flags of its allgather steps, as when they follow the reduce-scatter.
    """
    nodes = np.arange(topology.nodes, dtype=np.int64)
    coords = topology.coords(nodes)
    base_off = np.zeros(topology.nodes, dtype=np.int64)
    base_cnt = np.full(topology.nodes, count, dtype=np.int64)
    bases = []
    for d, k in enumerate(topology.shape):
        bases.append((base_off, base_cnt))
        base_off, base_cnt = split(base_off, base_cnt, k, coords[:, d])
    last = topology.ndim - 1
    for d in range(last, -1, -1):
        k = topology.shape[d]
        active = np.all(coords[:, d + 1:] == 0, axis=1)
        pos = coords[:, d]
        for s in range(k - 1):
            flags = policy("ag", s, k, d == last, d == 0, d == last)
            sel = active & (pos >= s + 1)
            src = nodes[sel]
            o, c = split(bases[d][0][sel], bases[d][1][sel], k, pos[sel] - s)
            yield Step("gather", d, 1, s, src, topology.neighbor(src, d, 1), o, c, **flags)
