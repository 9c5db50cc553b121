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
bandwidth and P the packet size (docs/model.md §14).

The MPI version moves the bytes for real (``Isend``/``Irecv`` of a uint8 view
between the ranks hosting the two nodes) and carries the stream's arrival
times with them, as the collective executor does; its emulated time equals
the model's exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from collectives.errors import CollectiveError
from collectives.executor_model import Timing
from collectives.timing import link_params
from nic.profile import Profile
from nic.streams import stage, us_per_byte
from topologies import Torus

TAG_P2P_TIME = 21
TAG_P2P_DATA = 22
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


@dataclass(frozen=True)
class Arrival:
    """A transfer's packet stream at the receiver's NIC (before its PCIe write)."""

    first_us: float
    last_us: float
    hops: int


def check_pairs(topology: Torus, pairs: list[tuple[int, int]], nbytes: int, path: str) -> None:
    if path not in PATHS:
        raise CollectiveError(f"unknown p2p path '{path}'; use host or nic")
    if nbytes < 0:
        raise CollectiveError(f"p2p size must be >= 0 bytes, got {nbytes}")
    for a, b in pairs:
        if not (0 <= a < topology.nodes and 0 <= b < topology.nodes) or a == b:
            raise CollectiveError(f"p2p transfer {a} -> {b} is not between two nodes of {topology.name}")


def arrivals(topology: Torus, profile: Profile, pairs: list[tuple[int, int]], nbytes: int,
             path: str) -> list[Arrival]:
    """Sender half of every transfer, in order: DMA read, then each link (shared links serialise)."""
    check_pairs(topology, pairs, nbytes, path)
    pkt = profile.nic.packet_bytes
    pcie_rate, pcie_lat = us_per_byte(profile.pcie.bandwidth_GBps), profile.pcie.latency_us
    links = [(us_per_byte(bw), lat) for bw, lat in link_params(topology, profile)]
    post_us = profile.host.overhead_us if path == "host" else 0.0
    read_free: dict[int, float] = {}
    link_free: dict[tuple[int, int, int], float] = {}
    out = []
    for a, b in pairs:
        ready = post_us
        first, last, busy = stage(ready, ready, nbytes, read_free.get(a, 0.0), pcie_rate, pcie_lat, pkt)
        read_free[a] = busy
        hops = route(topology, a, b)
        for hop in hops:
            rate, lat = links[hop[1]]
            first, last, busy = stage(first, last, nbytes, link_free.get(hop, 0.0), rate, lat, pkt)
            link_free[hop] = busy
        out.append(Arrival(first, last, len(hops)))
    return out


def receive_done(profile: Profile, arrived: list[tuple[int, Arrival]], nbytes: int, path: str) -> list[float]:
    """Receiver half, in order: DMA write per receiving node, then the host's completion on the host path."""
    pkt = profile.nic.packet_bytes
    rate, lat = us_per_byte(profile.pcie.bandwidth_GBps), profile.pcie.latency_us
    write_free: dict[int, float] = {}
    done = []
    for node, arr in arrived:
        _, last, busy = stage(arr.first_us, arr.last_us, nbytes, write_free.get(node, 0.0), rate, lat, pkt)
        write_free[node] = busy
        done.append(last + (profile.host.overhead_us if path == "host" else 0.0))
    return done


def _host_busy(profile: Profile, pairs: list[tuple[int, int]], path: str) -> float:
    """Busiest host's time: one overhead per transfer it sends or receives on the host path."""
    if path != "host" or not pairs:
        return 0.0
    per_node: dict[int, int] = {}
    for a, b in pairs:
        per_node[a] = per_node.get(a, 0) + 1
        per_node[b] = per_node.get(b, 0) + 1
    return max(per_node.values()) * profile.host.overhead_us


def p2p_time(topology: Torus, profile: Profile, pairs: list[tuple[int, int]], nbytes: int,
             path: str) -> Timing:
    """Emulated time of transfers issued together, without data (the model executor)."""
    arr = arrivals(topology, profile, pairs, nbytes, path)
    done = receive_done(profile, [(b, x) for (_, b), x in zip(pairs, arr)], nbytes, path)
    wire = sum(x.hops for x in arr) * nbytes
    return Timing(max(done, default=0.0), np.asarray(done), _host_busy(profile, pairs, path), 0.0, wire)


def run_p2p(comm: MPI.Comm, node_rank: np.ndarray, topology: Torus, profile: Profile,
            pairs: list[tuple[int, int]], buffers: dict[int, np.ndarray], path: str) -> Timing:
    """The same transfers with real data: ``buffers[node]`` is the payload at a source node, overwritten at a
    destination node. Every rank calls this with the same ``pairs``; ranks hosting neither end only join the
    final Allreduce of the completion time."""
    sizes = {buffers[n].nbytes for n in buffers}
    if len(sizes) > 1:
        raise CollectiveError("p2p buffers must all have the same size")
    nbytes = sizes.pop() if sizes else 0
    nb = np.zeros(1, dtype=np.int64)
    comm.Allreduce(np.array([nbytes], dtype=np.int64), nb, op=MPI.MAX)
    nbytes = int(nb[0])
    me = comm.rank
    arr = arrivals(topology, profile, pairs, nbytes, path)
    requests, local = [], []
    times_in: list[tuple[int, np.ndarray]] = []
    for i, ((a, b), x) in enumerate(zip(pairs, arr)):
        src_rank, dst_rank = int(node_rank[a]), int(node_rank[b])
        if src_rank == me and dst_rank == me:
            np.copyto(buffers[b], buffers[a])
            local.append((i, b, x))
            continue
        if src_rank == me:
            stamp = np.array([x.first_us, x.last_us])
            requests.append(comm.Isend([stamp, MPI.DOUBLE], dest=dst_rank, tag=TAG_P2P_TIME + 100 * i))
            requests.append(comm.Isend([buffers[a].view(np.uint8).reshape(-1), MPI.BYTE], dest=dst_rank,
                                       tag=TAG_P2P_DATA + 100 * i))
        if dst_rank == me:
            stamp = np.empty(2)
            requests.append(comm.Irecv([stamp, MPI.DOUBLE], source=src_rank, tag=TAG_P2P_TIME + 100 * i))
            requests.append(comm.Irecv([buffers[b].view(np.uint8).reshape(-1), MPI.BYTE], source=src_rank,
                                       tag=TAG_P2P_DATA + 100 * i))
            times_in.append((i, stamp))
    MPI.Request.Waitall(requests)
    received = [(i, pairs[i][1], Arrival(float(s[0]), float(s[1]), arr[i].hops)) for i, s in times_in]
    mine = sorted(local + received)
    # the receive half in issue order, over this rank's receiving nodes only (their DMA engines are theirs)
    done = receive_done(profile, [(node, x) for _, node, x in mine], nbytes, path)
    slowest = np.zeros(1)
    comm.Allreduce(np.array([max(done, default=0.0)]), slowest, op=MPI.MAX)
    wire = sum(x.hops for x in arr) * nbytes
    return Timing(float(slowest[0]), np.asarray(done), _host_busy(profile, pairs, path), 0.0, wire)
