"""``switch:N``: N nodes on one non-blocking switch, one full-duplex port each.

Every pair of nodes is one hop apart: a message leaves its sender's port,
crosses the switch (``switch.latency_us``, cut-through) and enters the
receiver's port, so it pays α = ``link.latency_us`` + ``switch.latency_us``
once and β = 1/``link.bandwidth_GBps`` per byte. The switch never blocks;
what two messages can share is a port: a node's one transmit side and its one
receive side.

The object is a one-dimensional :class:`~nicemu.topologies.torus.Torus` with
``switched=True``: ring algorithms use the node order 0, 1, ..., N-1, 0 as
their ring, and both ring directions leave through the node's one port.
"""

from __future__ import annotations

import operator

from nicemu.errors import TopologyError

from .torus import Torus


def switch(n: int) -> Torus:
    """``n`` nodes on one non-blocking switch, one full-duplex port each (``switch:N``).

    Raises :class:`TopologyError` unless ``n`` is a whole number from 2 to 2**24."""
    try:
        n = operator.index(n)
    except TypeError:
        raise TopologyError(f"switch:{n}: the node count must be a whole number; e.g. switch:8") from None
    if n < 2:
        raise TopologyError(f"switch:{n}: a switch needs at least 2 nodes; use switch:N with N >= 2")
    return Torus((n,), name=f"switch:{n}", switched=True)
