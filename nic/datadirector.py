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
from nicemu.nic.streams import ArrayLike, stage, vmax


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

    def spill(self, ix, first: ArrayLike, last: ArrayLike, host_nbytes: ArrayLike, done: ArrayLike) -> ArrayLike:
        """DMA-write the part of a produced chunk that does not fit in the NIC, beside the reduction.

        Returns ``done`` moved to the end of that write where there is one (nodes with nothing to
        write leave the write engine as it was).
        """
        if not isinstance(host_nbytes, np.ndarray):
            if host_nbytes <= 0.0:
                return done
            _, end = self.pcie.write(ix, first, last, host_nbytes)
            return vmax(done, end)
        sel = host_nbytes > 0.0
        if not sel.any():
            return done
        _, end = self.pcie.write(np.asarray(ix)[sel], np.asarray(first)[sel], np.asarray(last)[sel],
                                 host_nbytes[sel])
        done = np.array(done, dtype=np.float64)
        done[sel] = vmax(done[sel], end)
        return done

    @staticmethod
    def place(dest: np.ndarray, incoming: np.ndarray) -> None:
        np.copyto(dest, incoming)
