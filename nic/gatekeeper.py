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

from nic.pcie import Pcie


class GateKeeper:
    def __init__(self, pcie: Pcie) -> None:
        self.pcie = pcie

    def outgoing(self, ix: np.ndarray, in_host: bool, host_ready: np.ndarray,
                 nic_ready: np.ndarray, nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The packet stream handed to packetisation: (first, last) ready to enter the link."""
        if in_host:
            return self.pcie.read(ix, host_ready, nbytes)
        return nic_ready, nic_ready

    def prefetch_operand(self, ix: np.ndarray, issue_at: np.ndarray, nbytes: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Fetch the node's own chunk (operand B) from host memory for the ComputeEnhancer."""
        return self.pcie.read(ix, issue_at, nbytes)
