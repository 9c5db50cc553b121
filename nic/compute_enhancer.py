"""ComputeEnhancer: the reduction engine inside the NIC.

It consumes two packet streams at once, the incoming partial result and the
local operand from the GateKeeper, and reduces them packet by packet at
``nic.reduce_GBps``. Its output leaves one pipeline latency after each input
packet, so a chunk is reduced as it streams in ("stream aggregation"): the
whole chunk is done one packet-time after its last packet arrived.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.ops import reduce_into
from nicemu.nic.profile import Profile
from nicemu.nic.stragglers import per_node
from nicemu.nic.streams import as_float, join, stage, us_per_byte, vmax
from nicemu.nic.telemetry import NIC


class ComputeEnhancer:
    def __init__(self, profile: Profile, nodes: int) -> None:
        self.us_per_B = us_per_byte(profile.nic.reduce_GBps)
        self.latency_us = profile.nic.latency_us
        self.packet_bytes = profile.nic.packet_bytes
        self.free = np.zeros(nodes)
        self.busy_us = np.zeros(nodes)
        self.telemetry = None    # nic/telemetry.py, when the call reports its resources

    def timing(self, ix: np.ndarray, incoming: tuple[np.ndarray, np.ndarray],
               operand: tuple[np.ndarray, np.ndarray], nbytes: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        first, last = join(incoming[0], incoming[1], operand[0], operand[1])
        us_per_B = per_node(self.us_per_B, ix)
        free = self.free[ix]
        first_in = first
        first, last, busy = stage(first, last, nbytes, free, us_per_B,
                                  per_node(self.latency_us, ix), self.packet_bytes)
        self.free[ix] = busy
        work = as_float(nbytes) * us_per_B
        self.busy_us[ix] += work
        if self.telemetry is not None:
            self.telemetry.serve(NIC, ix, nbytes, vmax(first_in, free), busy)
        return first, last

    @staticmethod
    def reduce(op: str, acc: np.ndarray, incoming: np.ndarray) -> None:
        reduce_into(op, acc, incoming)
