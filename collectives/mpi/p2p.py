"""Point-to-point transfers with real data: ``Isend``/``Irecv`` of a uint8 view between the ranks
hosting the two nodes, with the packet stream's arrival times carried alongside; the emulated time
equals the model's (collectives/model/p2p_timing.py) exactly.

Every pair's times and data use the fixed tags ``P2P_TIME`` and ``P2P_DATA`` (collectives/mpi/tags.py):
both ends post their operations in pair order, so MPI's non-overtaking rule matches two pairs between
the same two ranks in that order, and the tags never run out however many pairs a call has."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from nicemu.collectives.model.executor import Timing
from nicemu.collectives.model.p2p_timing import Arrival, arrivals, host_busy, receive_done
from nicemu.collectives.mpi import tags
from nicemu.errors import CollectiveError
from nicemu.nic.profile import Profile
from nicemu.topologies import Torus


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
            requests.append(comm.Isend([stamp, MPI.DOUBLE], dest=dst_rank, tag=tags.P2P_TIME))
            requests.append(comm.Isend([buffers[a].view(np.uint8).reshape(-1), MPI.BYTE], dest=dst_rank,
                                       tag=tags.P2P_DATA))
        if dst_rank == me:
            stamp = np.empty(2)
            requests.append(comm.Irecv([stamp, MPI.DOUBLE], source=src_rank, tag=tags.P2P_TIME))
            requests.append(comm.Irecv([buffers[b].view(np.uint8).reshape(-1), MPI.BYTE], source=src_rank,
                                       tag=tags.P2P_DATA))
            times_in.append((i, stamp))
    MPI.Request.Waitall(requests)
    received = [(i, pairs[i][1], Arrival(float(s[0]), float(s[1]), arr[i].hops, arr[i].landed))
                for i, s in times_in]
    mine = sorted(local + received)
    # the receive half in issue order, over this rank's receiving nodes only (their DMA engines are theirs)
    done = receive_done(profile, [(node, x) for _, node, x in mine], nbytes, path)
    slowest = np.zeros(1)
    comm.Allreduce(np.array([max(done, default=0.0)]), slowest, op=MPI.MAX)
    wire = sum(x.hops for x in arr) * nbytes
    return Timing(float(slowest[0]), np.asarray(done), host_busy(profile, pairs, path, topology), 0.0, wire)
