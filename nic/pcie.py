"""PCIe DMA between host memory and the NIC, one engine per direction.

Both algorithms use it: the host ring crosses it twice per step (write the
received chunk, read the chunk to send); DirectReduce crosses it only to fetch
the local operand and to deliver final data. Every DMA also moves host DRAM
bytes (nic/host_memory.py): a read all of its bytes, a write what spills past DDIO.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.host_memory import HostMemory
from nicemu.nic.profile import Profile
from nicemu.nic.stragglers import per_node
from nicemu.nic.streams import stage, us_per_byte, vmax
from nicemu.nic.telemetry import READ, WRITE


class Pcie:
    """Timing of DMA reads (host to NIC) and writes (NIC to host) for a set of nodes."""

    def __init__(self, profile: Profile, nodes: int, memory: HostMemory | None = None) -> None:
        self.memory = memory if memory is not None and memory.active else None
        self.us_per_B = us_per_byte(profile.pcie.bandwidth_GBps)
        self.latency_us = profile.pcie.latency_us
        self.packet_bytes = profile.nic.packet_bytes
        self.read_free = np.zeros(nodes)   # host -> NIC engine busy-until
        self.write_free = np.zeros(nodes)  # NIC -> host engine busy-until
        self.telemetry = None              # nic/telemetry.py, when the call reports its resources

    def read(self, ix: np.ndarray, ready: np.ndarray, nbytes: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """Stream ``nbytes`` that are in host memory from time ``ready`` into the NIC."""
        first = last = ready
        if self.memory is not None:
            first, last = self.memory.stream(ix, ready, ready, nbytes, nbytes)
        free = self.read_free[ix]
        rate = per_node(self.us_per_B, ix)
        if self.telemetry is not None:
            start = vmax(first, free)
        first, last, busy = stage(first, last, nbytes, free, rate, per_node(self.latency_us, ix),
                                  self.packet_bytes)
        self.read_free[ix] = busy
        if self.telemetry is not None:
            self.telemetry.serve(READ, ix, nbytes, start, busy)
        return first, last

    def write(self, ix: np.ndarray, first: np.ndarray, last: np.ndarray,
              nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stream an incoming packet stream from the NIC into host memory."""
        free = self.write_free[ix]
        rate = per_node(self.us_per_B, ix)
        if self.telemetry is not None:
            start = vmax(first, free)
        first, last, busy = stage(first, last, nbytes, free, rate, per_node(self.latency_us, ix),
                                  self.packet_bytes)
        self.write_free[ix] = busy
        if self.telemetry is not None:
            self.telemetry.serve(WRITE, ix, nbytes, start, busy)
        if self.memory is not None:
            first, last = self.memory.stream(ix, first, last, nbytes, self.memory.spill(nbytes))
        return first, last
