"""GateKeeper: prefetching and buffer management for the ring's transfers.

On the send side it decides where outgoing data comes from: straight from the
NIC's buffer (a chunk the ComputeEnhancer just produced, or final data the
DataDirector kept for forwarding) or fetched from host memory over PCIe. On the
receive side it prefetches the local operand of the next reduction from host
memory as soon as the node starts the step, so that its PCIe round trip
overlaps the link latency instead of adding to it.
"""

from __future__ import annotations

import numpy as np

from nicemu.nic.pcie import Pcie
from nicemu.nic.streams import join


class GateKeeper:
    def __init__(self, pcie: Pcie) -> None:
        self.pcie = pcie

    def outgoing(self, ix: np.ndarray, in_host: bool, host_ready: np.ndarray,
                 nic_ready: np.ndarray, nbytes: np.ndarray, nic_first: np.ndarray | None = None,
                 host_nbytes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The packet stream handed to packetisation: (first, last) ready to enter the link.

        ``nic_first`` (cut-through forwarding): the first packet is ready before the
        last one, as it arrived. ``host_nbytes``: part of a NIC-resident chunk is
        the node's own data, still in host memory; it has been in host memory since
        the call began, so it is prefetched as early as the read engine allows
        (issued at time 0, served after the reads before it) and joined with the
        NIC part.
        """
        if in_host:
            return self.pcie.read(ix, host_ready, nbytes)
        first = nic_ready if nic_first is None else nic_first
        if host_nbytes is None:
            return first, nic_ready
        f_host, l_host = self.pcie.read(ix, host_ready * 0.0, host_nbytes)
        return join(first, nic_ready, f_host, l_host)

    def prefetch_operand(self, ix: np.ndarray, issue_at: np.ndarray, nbytes: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Fetch the node's own chunk (operand B) from host memory for the ComputeEnhancer."""
        return self.pcie.read(ix, issue_at, nbytes)
