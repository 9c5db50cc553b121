"""The host CPU as the baseline ring uses it.

The host learns that a chunk has arrived only once the NIC has written all of
it (a completion or an interrupt), pays a fixed overhead, then reduces the
chunk in one pass at ``host.reduce_GBps``. Nothing is pipelined with the link.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.host_memory import HostMemory
from nicemu.nic.ops import reduce_into
from nicemu.nic.profile import Profile
from nicemu.nic.stragglers import per_node
from nicemu.nic.streams import as_float, us_per_byte, vmax, whole_message
from nicemu.nic.telemetry import HOST


class HostCpu:
    def __init__(self, profile: Profile, nodes: int, memory: HostMemory | None = None) -> None:
        self.memory = memory if memory is not None and memory.active else None
        self.us_per_B = us_per_byte(profile.host.reduce_GBps)
        self.overhead_us = profile.host.overhead_us
        self.free = np.zeros(nodes)
        self.busy_us = np.zeros(nodes)
        self.telemetry = None    # nic/telemetry.py, when the call reports its resources

    def timing(self, ix: np.ndarray, last_in_host: np.ndarray, nbytes: np.ndarray,
               reduce: bool, local: bool = False, dram_per_byte: float | None = None) -> np.ndarray:
        """When the host is done with a chunk that finished landing at ``last_in_host``.

        ``local``: the chunk is in another rank's memory on the same node (an intra-node step), so the
        host reads it from DRAM, and a place is a copy; otherwise the NIC wrote it (DDIO, nic/host_memory.py).
        ``dram_per_byte`` (local steps): the pass's DRAM bytes per byte, when its schedule knows better.
        """
        rate = per_node(self.us_per_B, ix) if reduce else 0.0
        overhead_us = per_node(self.overhead_us, ix)
        free = self.free[ix]
        if self.memory is None:
            done, busy = whole_message(last_in_host, nbytes, free, rate, overhead_us)
            self.free[ix] = busy
            work = overhead_us + as_float(nbytes) * rate
        else:
            # roofline: the pass ends when both the core's work and its DRAM traffic are done
            start = vmax(last_in_host, free) + overhead_us
            mem_done = self.memory.work(ix, start, pass_dram(self.memory, nbytes, reduce, local, dram_per_byte))
            done = vmax(start + as_float(nbytes) * rate, mem_done)
            self.free[ix] = done
            work = overhead_us + (done - start)
        self.busy_us[ix] += work
        if self.telemetry is not None:
            self.telemetry.serve(HOST, ix, nbytes, vmax(last_in_host, free), done)
        return done

    @staticmethod
    def reduce(op: str, acc: np.ndarray, incoming: np.ndarray) -> None:
        reduce_into(op, acc, incoming)


def pass_dram(memory: HostMemory, nbytes, reduce: bool, local: bool, per_byte: float | None = None):
    """DRAM bytes of one host pass over a chunk (docs/model.md §19).

    A reduction reads the incoming chunk and the rank's own and writes the result: 3 bytes per byte,
    less what of the incoming chunk DDIO kept in the LLC. A place after a DMA costs nothing more; a
    local place is a copy (read and write).
    """
    n = as_float(nbytes)
    if per_byte is not None:
        return per_byte * n
    if local:
        return (3.0 if reduce else 2.0) * n
    if not reduce:
        return 0.0 * n
    return 2.0 * n + memory.spill(nbytes)
