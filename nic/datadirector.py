"""DataDirector: steers incoming packets inside the NIC.

Intermediate data (a partial sum that still has to travel) goes to the
ComputeEnhancer. Final data (a fully reduced chunk, or an allgather chunk) is
DMA-written to host memory and, at the same time, kept in the NIC buffer so the
next step can forward it without reading it back over PCIe.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.pcie import Pcie
from nicemu.nic.profile import Profile
from nicemu.nic.stragglers import per_node
from nicemu.nic.streams import stage


class DataDirector:
    def __init__(self, profile: Profile, pcie: Pcie) -> None:
        self.pcie = pcie
        self.latency_us = profile.nic.latency_us
        self.packet_bytes = profile.nic.packet_bytes

    def steer(self, first: np.ndarray, last: np.ndarray, nbytes: np.ndarray,
              ix: np.ndarray | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Final data passes the NIC pipeline without being reduced (latency only)."""
        first, last, _ = stage(first, last, nbytes, first, 0.0, per_node(self.latency_us, ix),
                               self.packet_bytes)
        return first, last

    def deliver(self, ix: np.ndarray, first: np.ndarray, last: np.ndarray,
                nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """DMA-write final data into host memory."""
        return self.pcie.write(ix, first, last, nbytes)

    @staticmethod
    def place(dest: np.ndarray, incoming: np.ndarray) -> None:
        np.copyto(dest, incoming)
