"""MPI's own collectives: the wall-time reference, with no emulated time.

Nodes that share a rank are first combined locally with numpy, then the ranks
call ``Allreduce`` / ``Reduce_scatter`` / ``Allgatherv`` / ``Reduce`` on their blocks;
``Bcast`` sends the root node's row (as bytes) from the rank that hosts it.
MPI has no bfloat16 or fp8 datatype: those travel as a contiguous datatype of
their size in bytes, reduced by a user-defined (commutative) MPI op that applies
the numpy/ml-dtypes ufunc in the type. ``avg`` is MPI's sum, divided afterwards
(nicemu.nic.ops.finish, called by the caller).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from nicemu.nic.ops import NON_MPI_DTYPES, OPS

MPI_OPS = {"sum": MPI.SUM, "prod": MPI.PROD, "max": MPI.MAX, "min": MPI.MIN, "avg": MPI.SUM}
_USER: dict[tuple[str, str], tuple[MPI.Datatype, MPI.Op]] = {}     # (dtype, op) -> committed type, op


def _user_op(dtype: np.dtype, op: str) -> tuple[MPI.Datatype, MPI.Op]:
    """A datatype of ``dtype.itemsize`` bytes and an MPI op reducing it in ``dtype`` (made once)."""
    key = (dtype.name, op)
    if key not in _USER:
        ufunc = OPS[op]

        def apply(inbuf, inoutbuf, datatype) -> None:     # MPI's contract: inout <- in (op) inout
            inout = np.frombuffer(inoutbuf, dtype=dtype)
            ufunc(np.frombuffer(inbuf, dtype=dtype), inout, out=inout)

        _USER[key] = (MPI.BYTE.Create_contiguous(dtype.itemsize).Commit(), MPI.Op.Create(apply, commute=True))
    return _USER[key]


def _buffers(local: np.ndarray, result: np.ndarray, op: str):
    """The send and receive buffer specs and the MPI op for ``local``'s type."""
    if local.dtype.name not in NON_MPI_DTYPES:
        return local, result, MPI_OPS[op]
    datatype, mpi_op = _user_op(local.dtype, op)
    return ([local.view(np.uint8), local.size, datatype], [result.view(np.uint8), result.size, datatype],
            mpi_op)


def run_native(comm: MPI.Comm, collective: str, data: np.ndarray, op: str,
               seg_off: np.ndarray, seg_cnt: np.ndarray, lo: int, hi: int,
               bounds: np.ndarray, root: int = 0) -> None:
    """In place on ``data`` (local nodes x count), with the same semantics as the schedules (``root``: the
    root node of broadcast and reduce)."""
    root_rank = int(np.searchsorted(bounds, root, side="right")) - 1
    if collective == "broadcast":
        row = data[root - lo].copy() if comm.rank == root_rank else np.empty(data.shape[1], dtype=data.dtype)
        comm.Bcast(row.view(np.uint8), root=root_rank)
        data[:] = row
        return
    if collective == "allgather":
        mine = np.concatenate([data[i - lo, seg_off[i]:seg_off[i] + seg_cnt[i]]
                               for i in range(lo, hi)])
        counts = [int(seg_cnt[bounds[r]:bounds[r + 1]].sum()) for r in range(comm.size)]
        full = np.empty(data.shape[1], dtype=data.dtype)
        comm.Allgatherv(mine.view(np.uint8), [full.view(np.uint8), [c * data.dtype.itemsize for c in counts]])
        data[:] = full
        return
    local = (OPS[op].reduce(data, axis=0, dtype=data.dtype) if data.shape[0] > 1
             else data[0].copy())
    result = np.empty_like(local)
    if collective == "reduce":
        send, recv, mpi_op = _buffers(local, result, op)
        comm.Reduce(send, recv, op=mpi_op, root=root_rank)
        if comm.rank == root_rank:
            data[root - lo] = result
        return
    if collective == "allreduce":
        send, recv, mpi_op = _buffers(local, result, op)
        comm.Allreduce(send, recv, op=mpi_op)
        data[:] = result
        return
    counts = [int(seg_cnt[bounds[r]:bounds[r + 1]].sum()) for r in range(comm.size)]
    mine = np.empty(counts[comm.rank], dtype=data.dtype)
    if local.dtype.name in NON_MPI_DTYPES:
        datatype, mpi_op = _user_op(local.dtype, op)
        comm.Reduce_scatter([local.view(np.uint8), datatype], [mine.view(np.uint8), datatype], counts, op=mpi_op)
    else:
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
