"""The MPI executor: a schedule run with real data across real MPI ranks.

Each rank hosts a contiguous block of topology nodes (all of them when run
without ``mpiexec``). For every step it computes the sender half of the timing
for the transfers its nodes send, ships each chunk with ``Isend`` on a uint8
view of the node's buffer (no copy, no pickle) together with the packet
stream's arrival times (one small float64 message per peer rank and step),
and then reduces or places what arrives and runs the receiver half. Transfers
between two nodes of the same rank never touch MPI.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from collectives.executor_model import Timing
from collectives.schedule import Schedule
from collectives.timing import make_agents, receive_half, send_half
from nic.compute_enhancer import ComputeEnhancer
from nic.datadirector import DataDirector
from nic.host import HostCpu
from nic.profile import Profile
from topologies import Torus

TAG_TIME = 11
TAG_DATA = 12


def node_blocks(nodes: int, ranks: int) -> np.ndarray:
    """First node of every rank (and ``nodes`` at the end): contiguous, near-equal blocks."""
    return np.array([r * nodes // ranks for r in range(ranks + 1)], dtype=np.int64)


class MpiExecutor:
    def __init__(self, comm: MPI.Comm, topology: Torus, profile: Profile) -> None:
        self.comm = comm
        self.topology = topology
        self.profile = profile
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.bounds = node_blocks(topology.nodes, self.size)
        self.lo, self.hi = int(self.bounds[self.rank]), int(self.bounds[self.rank + 1])
        self.node_rank = np.searchsorted(self.bounds, np.arange(topology.nodes), side="right") - 1
        self._scratch: list[np.ndarray] = []

    @property
    def local_nodes(self) -> int:
        return self.hi - self.lo

    def _scratch_buffer(self, slot: int, nbytes: int) -> np.ndarray:
        while len(self._scratch) <= slot:
            self._scratch.append(np.empty(0, dtype=np.uint8))
        if self._scratch[slot].size < nbytes:
            self._scratch[slot] = np.empty(nbytes, dtype=np.uint8)
        return self._scratch[slot][:nbytes]

    def run(self, schedule: Schedule, data: np.ndarray, op: str) -> Timing:
        """Run ``schedule`` in place on ``data`` (local nodes x count)."""
        itemsize = data.dtype.itemsize
        raw = data.view(np.uint8).reshape(data.shape[0], -1)
        agents = make_agents(self.topology, self.profile, self.local_nodes)
        rank, lo = self.rank, self.lo
        for step in schedule.steps():
            src_rank = self.node_rank[step.src]
            dst_rank = self.node_rank[step.dst]
            out_idx = np.flatnonzero(src_rank == rank)
            in_idx = np.flatnonzero(dst_rank == rank)
            nbytes = step.count * itemsize
            boff = step.offset * itemsize

            # sender half: timing for everything our nodes send, then post the sends
            first_out, last_out = send_half(agents, step, step.src[out_idx] - lo, nbytes[out_idx])
            first = np.empty(len(step.src))
            last = np.empty(len(step.src))
            first[out_idx], last[out_idx] = first_out, last_out
            requests = []
            remote_out = out_idx[dst_rank[out_idx] != rank]
            for peer in np.unique(dst_rank[remote_out]):
                sel = remote_out[dst_rank[remote_out] == peer]
                times = np.ascontiguousarray(np.stack([first[sel], last[sel]], axis=1))
                requests.append(self.comm.Isend(times, int(peer), TAG_TIME))
                for t in sel:
                    if nbytes[t]:
                        row = raw[step.src[t] - lo, boff[t]:boff[t] + nbytes[t]]
                        requests.append(self.comm.Isend(row, int(peer), TAG_DATA))

            # post the receives for chunks coming from other ranks
            remote_in = in_idx[src_rank[in_idx] != rank]
            incoming: dict[int, np.ndarray] = {}
            time_bufs = []
            recv_requests = []
            slot = 0
            for peer in np.unique(src_rank[remote_in]):
                sel = remote_in[src_rank[remote_in] == peer]
                tbuf = np.empty((len(sel), 2))
                time_bufs.append((sel, tbuf))
                recv_requests.append(self.comm.Irecv(tbuf, int(peer), TAG_TIME))
                for t in sel:
                    if nbytes[t]:
                        buf = self._scratch_buffer(slot, int(nbytes[t]))
                        slot += 1
                        incoming[int(t)] = buf
                        recv_requests.append(self.comm.Irecv(buf, int(peer), TAG_DATA))
            MPI.Request.Waitall(recv_requests)
            for sel, tbuf in time_bufs:
                first[sel], last[sel] = tbuf[:, 0], tbuf[:, 1]

            # receiver half: the data op named by the step, then its timing
            for t in in_idx:
                if not nbytes[t]:
                    continue
                dst_row = data[step.dst[t] - lo]
                a, b = step.offset[t], step.offset[t] + step.count[t]
                if t in incoming:
                    chunk = incoming[int(t)].view(data.dtype)
                else:
                    chunk = data[step.src[t] - lo, a:b]
                if not step.reduce:
                    DataDirector.place(dst_row[a:b], chunk)
                elif step.engine == "nic":
                    ComputeEnhancer.reduce(op, dst_row[a:b], chunk)
                else:
                    HostCpu.reduce(op, dst_row[a:b], chunk)
            receive_half(agents, step, step.dst[in_idx] - lo, first[in_idx], last[in_idx],
                         nbytes[in_idx])
            MPI.Request.Waitall(requests)
        return self._gather_timing(agents)

    def _gather_timing(self, agents) -> Timing:
        stats = agents.stats()
        local = np.array([np.max(agents.clock, initial=0.0),
                          np.max(stats["host_busy_us"], initial=0.0),
                          np.max(stats["nic_busy_us"], initial=0.0)])
        glob = np.empty(3)
        self.comm.Allreduce(local, glob, op=MPI.MAX)
        wire = np.array([agents.links.bytes_sent], dtype=np.int64)
        wire_all = np.empty(1, dtype=np.int64)
        self.comm.Allreduce(wire, wire_all, op=MPI.SUM)
        return Timing(float(glob[0]), agents.clock.copy(), float(glob[1]), float(glob[2]),
                      int(wire_all[0]))
