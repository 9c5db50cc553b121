"""Directed network links: serialisation at the link rate, then propagation latency.

Each node owns the transmit side of its outgoing links (one per dimension and
direction), so link contention is a busy-until per (node, dimension, direction).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nicemu.nic.streams import stage, us_per_byte


class Links:
    def __init__(self, nodes: int, per_dim: Sequence[tuple[float, float]],
                 packet_bytes: int) -> None:
        """``per_dim`` holds (bandwidth_GBps, latency_us) for every dimension."""
        self.us_per_B = [us_per_byte(bw) for bw, _ in per_dim]
        self.latency_us = [lat for _, lat in per_dim]
        self.packet_bytes = packet_bytes
        self.free = np.zeros((nodes, len(per_dim), 2))
        self.bytes_sent = 0

    def transmit(self, ix: np.ndarray, dim: int, direction: int, first: np.ndarray,
                 last: np.ndarray, nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first, last) packet arrival at the far NIC."""
        d = 0 if direction > 0 else 1
        first, last, busy = stage(first, last, nbytes, self.free[ix, dim, d],
                                  self.us_per_B[dim], self.latency_us[dim], self.packet_bytes)
        self.free[ix, dim, d] = busy
        self.bytes_sent += int(nbytes.sum()) if isinstance(nbytes, np.ndarray) else int(nbytes)
        return first, last
