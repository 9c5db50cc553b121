"""GateKeeper: prefetching and buffer management for the ring's transfers.

On the send side it decides where outgoing data comes from: straight from the
NIC's buffer (a chunk the ComputeEnhancer just produced, or final data the
DataDirector kept for forwarding) or fetched from host memory over PCIe. On the
receive side it prefetches the local operand of the next reduction from host
memory as soon as the node starts the step, so that its PCIe round trip
overlaps the link latency instead of adding to it.

It also keeps the NIC buffer within ``nic.memory_KiB`` (docs/model.md §4.3):
of a chunk the NIC must forward it keeps at most its share of that memory;
the rest sits in host memory (DMA-written beside the reduction, or already
there as final data) and is read back over PCIe when the chunk is sent.
"""

from __future__ import annotations

import math

import numpy as np

from nicemu.nic.pcie import Pcie
from nicemu.nic.streams import ArrayLike, as_float, join, overflow


def budget_bytes(memory_KiB: float, share: float) -> float:
    """Whole bytes of NIC memory one transfer's chunk may hold (``share``: its part of the memory)."""
    return float(math.floor(memory_KiB * 1024.0 * share))


def host_share(nbytes: ArrayLike, budget: float) -> ArrayLike:
    """The share of a chunk of ``nbytes`` that does not fit in ``budget`` (0 for an empty chunk)."""
    over = overflow(nbytes, budget)
    if isinstance(over, np.ndarray):
        n = as_float(nbytes)
        return np.divide(over, n, out=np.zeros(over.shape), where=n > 0)
    return over / float(nbytes) if nbytes else 0.0


def host_part(nbytes: ArrayLike, share: ArrayLike) -> ArrayLike:
    """Whole bytes of a chunk of ``nbytes`` that lie in host memory, when ``share`` of its data does."""
    if isinstance(nbytes, np.ndarray) or isinstance(share, np.ndarray):
        return np.floor(as_float(nbytes) * share + 0.5)
    return float(math.floor(float(nbytes) * share + 0.5))


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

    def read_back(self, ix, ready: ArrayLike, host_nbytes: ArrayLike, first: ArrayLike, last: ArrayLike,
                  counted: np.ndarray) -> tuple[ArrayLike, ArrayLike]:
        """Join a NIC-resident stream with the PCIe read of its ``host_nbytes`` that did not fit in the NIC.

        The read is issued at ``ready`` (the data is in host memory by then). Only nodes with bytes to read
        use the read engine; ``counted`` (per node) adds the bytes read.
        """
        if not isinstance(host_nbytes, np.ndarray):
            if host_nbytes <= 0.0:
                return first, last
            counted[ix] += host_nbytes
            f_host, l_host = self.pcie.read(ix, ready, host_nbytes)
            return join(first, last, f_host, l_host)
        sel = host_nbytes > 0.0
        if not sel.any():
            return first, last
        some = np.asarray(ix)[sel]
        counted[some] += host_nbytes[sel]
        f_host, l_host = self.pcie.read(some, np.asarray(ready)[sel], host_nbytes[sel])
        first = np.array(first, dtype=np.float64)
        last = np.array(last, dtype=np.float64)
        first[sel], last[sel] = join(first[sel], last[sel], f_host, l_host)
        return first, last

    def prefetch_operand(self, ix: np.ndarray, issue_at: np.ndarray, nbytes: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Fetch the node's own chunk (operand B) from host memory for the ComputeEnhancer."""
        return self.pcie.read(ix, issue_at, nbytes)
