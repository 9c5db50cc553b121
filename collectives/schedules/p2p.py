"""Point-to-point transfers (pipeline activations, KV cache) routed over the torus links.

A transfer moves ``nbytes`` from node ``a`` to node ``b``. It follows
dimension-order routing (dimension 0 first), the shorter way round each ring
(ties go the positive way), so it crosses ``h`` links. Its packets are one
stream (nic/streams.py) through, in order:

1. the sender's PCIe DMA read engine (host memory to NIC);
2. every link of the route; intermediate NICs forward packet by packet
   (cut-through), so a link is just one more FIFO stage;
3. the receiver's PCIe DMA write engine (NIC to host memory).

Two paths, chosen by the algorithm that owns the transfer:

* ``host`` (``ring``, ``omniccl-cpu``, ``omnireduce``): the host posts the
  send (``host.overhead_us`` before the DMA read starts) and handles the
  completion once the whole message has landed (``host.overhead_us`` after
  the last byte). Each end's host is busy ``host.overhead_us``.
* ``nic`` (``directreduce``, ``omniccl``): the NIC starts the transfer
  itself and the data lands without the host (as with GPUDirect RDMA): no host
  overhead, no host time.

Several transfers issued together (the TP ranks of a pipeline stage each send
their copy) share the links: they are pushed through the stages in the
order given, each stage remembering when it is next free, so two transfers
over one link serialise there.

Under ``ideal`` (free PCIe, no host overhead) a single transfer takes
``h α + n β + (h - 1) min(n, P) β`` with α = link latency, β = 1/link
bandwidth and P the packet size (docs/model.md §14; timed in collectives/model/p2p_timing.py).

The MPI version (collectives/mpi/p2p.py) moves the bytes for real (``Isend``/``Irecv`` of a uint8 view
between the ranks hosting the two nodes) and carries the stream's arrival
times with them, as the collective executor does; its emulated time equals
the model's exactly.
"""

from __future__ import annotations

from nicemu.errors import CollectiveError
from nicemu.topologies import Torus

PATHS = ("host", "nic")


def route(topology: Torus, src: int, dst: int) -> list[tuple[int, int, int]]:
    """Links from ``src`` to ``dst``: (sending node, dimension, direction ±1), dimension 0 first."""
    hops = []
    node = src
    here, there = topology.coords(src), topology.coords(dst)
    for dim, k in enumerate(topology.shape):
        delta = int(there[dim] - here[dim]) % k
        direction, count = (1, delta) if delta <= k - delta else (-1, k - delta)
        for _ in range(count):
            hops.append((node, dim, direction))
            node = int(topology.neighbor(node, dim, direction))
    return hops



def check_pairs(topology: Torus, pairs: list[tuple[int, int]], nbytes: int, path: str) -> None:
    if path not in PATHS:
        raise CollectiveError(f"unknown p2p path '{path}'; use host or nic")
    if nbytes < 0:
        raise CollectiveError(f"p2p size must be >= 0 bytes, got {nbytes}")
    for a, b in pairs:
        if not (0 <= a < topology.nodes and 0 <= b < topology.nodes) or a == b:
            raise CollectiveError(f"p2p transfer {a} -> {b} is not between two nodes of {topology.name}")
