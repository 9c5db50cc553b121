"""Host DRAM bandwidth and DDIO: the resource every host-side byte passes through.

A node's DRAM serves NIC DMA reads and writes and its reducing cores (two
reads and one write per reduced byte). When a node runs P ranks, each with
its own NIC (``--ranks-per-node``), the P ranks do the same work at the same
time, so each gets ``host.memory_GBps / P`` of it; that share is what this
class charges, per rank. DMA writes land in the LLC (Intel DDIO) up to each
rank's share of ``host.ddio_KiB`` and spill to DRAM beyond it; a host pass over
a chunk that landed in the LLC reads it from there (docs/model.md §19).

The memory is a work-conserving server: an activity is charged its DRAM bytes
at the rank's share from the moment it can start, and the server is free again
when that work is done, not when the (possibly slower) stream using it ends.
So a slow DMA stream uses memory at its own pace without blocking a reduction
that overlaps it, and the total DRAM traffic of a rank can never exceed its
share. With ``memory_GBps`` infinite (every shipped profile but those that set
it) nothing is charged and every time is what it was without this class.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.profile import Profile
from nicemu.nic.streams import ArrayLike, as_float, memory_stage, overflow, us_per_byte, vmax
from nicemu.nic.telemetry import DRAM


class HostMemory:
    """DRAM busy-until of a set of ranks, each with a 1/P share of its node's bandwidth and DDIO space."""

    def __init__(self, profile: Profile, nodes: int, ranks_per_node: int = 1) -> None:
        host = profile.host
        self.us_per_B = us_per_byte(host.memory_GBps / ranks_per_node)
        self.active = self.us_per_B > 0.0
        self.ddio_bytes = host.ddio_KiB * 1024.0 / ranks_per_node
        self.packet_bytes = profile.nic.packet_bytes
        self.free = np.zeros(nodes)
        self.telemetry = None    # nic/telemetry.py, when the call reports its resources

    def spill(self, nbytes: ArrayLike) -> ArrayLike:
        """DRAM bytes of a DMA write of ``nbytes``: what does not fit in the rank's DDIO share."""
        return overflow(nbytes, self.ddio_bytes)

    def stream(self, ix, first: ArrayLike, last: ArrayLike, nbytes: ArrayLike, dram: ArrayLike
               ) -> tuple[ArrayLike, ArrayLike]:
        """A packet stream of ``nbytes`` that moves ``dram`` bytes to or from DRAM on its way."""
        free = self.free[ix]
        first_in = first
        first, last, self.free[ix] = memory_stage(first, last, nbytes, dram, free, self.us_per_B,
                                                  self.packet_bytes)
        if self.telemetry is not None:
            self._report(ix, dram, vmax(first_in, free), self.free[ix])
        return first, last

    def work(self, ix, start: ArrayLike, dram: ArrayLike) -> ArrayLike:
        """A host pass that moves ``dram`` bytes, able to begin at ``start``: when its memory work is done.

        A pass with no DRAM bytes does not wait for DRAM and leaves it as it was."""
        d = as_float(dram)
        free = self.free[ix]
        done = vmax(start, free) + d * self.us_per_B
        if self.telemetry is not None:
            self._report(ix, d, vmax(start, free), done)
        if isinstance(done, np.ndarray):
            some = d > 0.0
            self.free[ix] = np.where(some, done, free)
            return np.where(some, done, start)
        if d <= 0.0:
            return start
        self.free[ix] = done
        return done

    def _report(self, ix, dram, start, end) -> None:
        """Telemetry of DRAM work (streams that move no DRAM bytes leave no event)."""
        self.telemetry.serve(DRAM, ix, dram, start, end)
