"""The host CPU as the baseline ring uses it.

The host learns that a chunk has arrived only once the NIC has written all of
it (a completion or an interrupt), pays a fixed overhead, then reduces the
chunk in one pass at ``host.reduce_GBps``. Nothing is pipelined with the link.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.ops import reduce_into
from nicemu.nic.profile import Profile
from nicemu.nic.stragglers import per_node
from nicemu.nic.streams import as_float, us_per_byte, whole_message


class HostCpu:
    def __init__(self, profile: Profile, nodes: int) -> None:
        self.us_per_B = us_per_byte(profile.host.reduce_GBps)
        self.overhead_us = profile.host.overhead_us
        self.free = np.zeros(nodes)
        self.busy_us = np.zeros(nodes)

    def timing(self, ix: np.ndarray, last_in_host: np.ndarray, nbytes: np.ndarray,
               reduce: bool) -> np.ndarray:
        """When the host is done with a chunk that finished landing at ``last_in_host``."""
        rate = per_node(self.us_per_B, ix) if reduce else 0.0
        overhead_us = per_node(self.overhead_us, ix)
        done, busy = whole_message(last_in_host, nbytes, self.free[ix], rate, overhead_us)
        self.free[ix] = busy
        self.busy_us[ix] += overhead_us + as_float(nbytes) * rate
        return done

    @staticmethod
    def reduce(op: str, acc: np.ndarray, incoming: np.ndarray) -> None:
        reduce_into(op, acc, incoming)
