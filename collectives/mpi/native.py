"""MPI's own collectives: the wall-time reference, with no emulated time.

Nodes that share a rank are first combined locally with numpy, then the ranks
call ``Allreduce`` / ``Reduce_scatter`` / ``Allgatherv`` on their blocks.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from nicemu.nic.ops import OPS

MPI_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}


def run_native(comm: MPI.Comm, collective: str, data: np.ndarray, op: str,
               seg_off: np.ndarray, seg_cnt: np.ndarray, lo: int, hi: int,
               bounds: np.ndarray) -> None:
    """In place on ``data`` (local nodes x count), with the same semantics as the schedules."""
    if collective == "allgather":
        mine = np.concatenate([data[i - lo, seg_off[i]:seg_off[i] + seg_cnt[i]]
                               for i in range(lo, hi)])
        counts = [int(seg_cnt[bounds[r]:bounds[r + 1]].sum()) for r in range(comm.size)]
        full = np.empty(data.shape[1], dtype=data.dtype)
        comm.Allgatherv(mine, [full, counts])
        data[:] = full
        return
    local = (OPS[op].reduce(data, axis=0, dtype=data.dtype) if data.shape[0] > 1
             else data[0].copy())
    result = np.empty_like(local)
    if collective == "allreduce":
        comm.Allreduce(local, result, op=MPI_OPS[op])
        data[:] = result
        return
    counts = [int(seg_cnt[bounds[r]:bounds[r + 1]].sum()) for r in range(comm.size)]
    mine = np.empty(counts[comm.rank], dtype=data.dtype)
    comm.Reduce_scatter(local, mine, counts, op=MPI_OPS[op])
    start = int(seg_off[lo]) if hi > lo else 0
    for i in range(lo, hi):
        a = int(seg_off[i]) - start
        data[i - lo, seg_off[i]:seg_off[i] + seg_cnt[i]] = mine[a:a + seg_cnt[i]]


def run_native_alltoall(comm: MPI.Comm, data: np.ndarray, bounds: np.ndarray) -> None:
    """MPI's own all-to-all, in place on ``data`` (local nodes x count): block j of node i goes to
    block i of node j. Nodes that share a rank travel in one ``Alltoallv`` of raw bytes."""
    nloc, count = data.shape
    p = int(bounds[-1])
    per_rank = np.diff(bounds).astype(np.int64)
    raw = data.view(np.uint8).reshape(nloc, p, -1)
    block = raw.shape[2]
    send = np.concatenate([raw[:, bounds[r]:bounds[r + 1]].reshape(-1) for r in range(comm.size)])
    send_counts = per_rank * nloc * block
    recv_counts = per_rank * nloc * block
    recv = np.empty(int(recv_counts.sum()), dtype=np.uint8)
    displs = np.concatenate([[0], np.cumsum(send_counts)[:-1]])   # the same on both sides
    comm.Alltoallv([send, (send_counts, displs)], [recv, (recv_counts, displs)])
    start = 0
    for q in range(comm.size):
        piece = recv[start:start + recv_counts[q]].reshape(per_rank[q], nloc, block)
        raw[:, bounds[q]:bounds[q + 1]] = piece.transpose(1, 0, 2)
        start += recv_counts[q]
