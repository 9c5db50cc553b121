"""Directed network links: serialisation at the link rate, then propagation latency.

Each node owns the transmit side of its outgoing links (one per dimension and
direction), so link contention is a busy-until per (node, dimension, direction).
On a switch (``shared_port``) a node has one port, which both ring directions
share.

A *routed* transfer (recursive doubling, Rabenseifner, trees: partners that
are not neighbours) crosses ``h`` links in dimension order (collectives/schedules/routing.py).
Its packets pass each link in turn, cut-through, as in a point-to-point
transfer; every link of the step is shared by the ``load`` messages of the
step that cross the step's most loaded link, so each runs at 1/``load`` of the
link rate. Only the first link's busy-until is kept across steps (the sender's
own port); the step's sharing factor accounts for the links further on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nicemu.nic.streams import framed, stage, us_per_byte, vmax


class Links:
    def __init__(self, nodes: int, per_dim: Sequence[tuple[float, float]],
                 packet_bytes: int, shared_port: bool = False, header_bytes: float = 0.0) -> None:
        """``per_dim`` holds (bandwidth_GBps, latency_us) for every dimension; every packet carries
        ``header_bytes`` of framing on the wire (``framed_sent`` counts them, ``bytes_sent`` does not)."""
        self.header_bytes = header_bytes
        self.framed_sent = 0
        self.us_per_B = [us_per_byte(bw) for bw, _ in per_dim]
        self.latency_us = [lat for _, lat in per_dim]
        self.packet_bytes = packet_bytes
        self.shared_port = shared_port
        self.free = np.zeros((nodes, len(per_dim), 2))
        self.bytes_sent = 0
        self.telemetry = None   # nic/telemetry.py, when the call reports per link

    def transmit(self, ix: np.ndarray, dim: int, direction: int, first: np.ndarray,
                 last: np.ndarray, nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first, last) packet arrival at the far NIC."""
        d = 0 if direction > 0 or self.shared_port else 1
        free = self.free[ix, dim, d]
        first_in = first
        first, last, busy = stage(first, last, nbytes, free,
                                  self.us_per_B[dim], self.latency_us[dim], self.packet_bytes, self.header_bytes)
        self.free[ix, dim, d] = busy
        self.bytes_sent += int(nbytes.sum()) if isinstance(nbytes, np.ndarray) else int(nbytes)
        on_wire = framed(nbytes, self.packet_bytes, self.header_bytes) if self.header_bytes else nbytes
        if self.header_bytes:
            self.framed_sent += int(np.sum(on_wire))
        if self.telemetry is not None:
            self.telemetry.link(ix, dim, d, nbytes, on_wire, vmax(first_in, free), busy)
        return first, last

    def transmit_routed(self, ix: np.ndarray | int, route, first, last, nbytes) -> tuple:
        """(first, last) packet arrival at the far NIC of transfers routed over several links
        (``route``: a collectives/schedules/routing.py ``Route`` aligned with ``ix``)."""
        scalar = np.ndim(ix) == 0
        ix = np.atleast_1d(ix)
        first, last = np.atleast_1d(first).astype(float), np.atleast_1d(last).astype(float)
        nbytes = np.broadcast_to(np.atleast_1d(nbytes), ix.shape)
        rate = np.asarray(self.us_per_B) * route.load
        lat = np.asarray(self.latency_us)
        d0 = route.first_dim
        slot = np.where((route.first_dir > 0) | self.shared_port, 0, 1)
        free = self.free[ix, d0, slot]
        start = vmax(first, free)
        first, last, busy = stage(first, last, nbytes, free, rate[d0], lat[d0],
                                  self.packet_bytes, self.header_bytes)
        self.free[ix, d0, slot] = busy
        total = route.total
        for j in range(1, int(total.max(initial=0))):
            m = total > j
            dj = route.dim_of_hop(j, m)
            f, l_, _ = stage(first[m], last[m], nbytes[m], 0.0, rate[dj], lat[dj], self.packet_bytes,
                             self.header_bytes)
            first[m], last[m] = f, l_
        self.bytes_sent += int((nbytes * total).sum())
        on_wire = framed(nbytes, self.packet_bytes, self.header_bytes) if self.header_bytes else nbytes
        if self.header_bytes:
            self.framed_sent += int((on_wire * total).sum())
        if self.telemetry is not None:
            self.telemetry.routed(ix, route, nbytes, on_wire, start, busy)
        if scalar:
            return float(first[0]), float(last[0])
        return first, last
