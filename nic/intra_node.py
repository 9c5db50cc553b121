"""An NVLink-class fabric between the ranks of one node (``intra_node.nvlink`` in the profile).

With ``--ranks-per-node P`` the ranks of a node talk without a NIC. By default they
share host memory (nic/host_memory.py, docs/model.md §19.3). When the profile says
``intra_node: {nvlink: true}`` they are accelerators on an NVLink-class fabric
(docs/model.md §19.5): each rank has its own port, serving ``bandwidth_GBps`` per
direction after ``latency_us``, and the receiver reduces the incoming stream in its
own memory at ``reduce_GBps`` as the packets land, as a GPU kernel does. Host DRAM,
PCIe, the NIC and the host CPU take no part.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.profile import Profile
from nicemu.nic.streams import stage, us_per_byte, vmax
from nicemu.nic.telemetry import NVLINK


class IntraNode:
    """Busy-until of each rank's NVLink port and of its reduction in its own memory."""

    def __init__(self, profile: Profile, nodes: int) -> None:
        spec = profile.intra_node
        self.us_per_B = us_per_byte(spec.bandwidth_GBps)
        self.latency_us = spec.latency_us
        self.reduce_us_per_B = us_per_byte(spec.reduce_GBps)
        self.packet_bytes = profile.nic.packet_bytes
        self.port_free = np.zeros(nodes)
        self.reduce_free = np.zeros(nodes)
        self.telemetry = None    # nic/telemetry.py, when the call reports its resources

    def reset(self) -> None:
        self.port_free.fill(0.0)
        self.reduce_free.fill(0.0)

    def send(self, ix, ready, nbytes) -> tuple:
        """The chunk leaves the sender's port from ``ready``: (first, last) packet in the peer's memory."""
        free = self.port_free[ix]
        first, last, busy = stage(ready, ready, nbytes, free, self.us_per_B, self.latency_us, self.packet_bytes)
        self.port_free[ix] = busy
        if self.telemetry is not None:
            self.telemetry.serve(NVLINK, ix, nbytes, vmax(ready, free), busy)
        return first, last

    def receive(self, ix, first, last, nbytes, reduce: bool):
        """When the receiver is done: a reduction streams at ``reduce_GBps`` behind the packets; a placed
        chunk is done when its last packet has landed."""
        if not reduce:
            return last
        _, done, busy = stage(first, last, nbytes, self.reduce_free[ix], self.reduce_us_per_B, 0.0,
                              self.packet_bytes)
        self.reduce_free[ix] = busy
        return vmax(done, last)
