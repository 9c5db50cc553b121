"""Refuse a sweep that cannot fit in memory, before anything is allocated."""

from __future__ import annotations

import os

import numpy as np

from nicemu.errors import UsageError
from nicemu.sizes import format_size

GiB = float(1 << 30)


def available_bytes() -> float:
    """MemAvailable of this host (what can be allocated without swapping)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return float("inf")


def mpi_executor_bytes(local_nodes: int, nbytes: int, itemsize: int,
                       collective: str = "allreduce") -> float:
    """Input and working copy per hosted node, the float64 reference, and receive scratch.

    AllToAll adds a staging row of twice the input per node and checks one reference per node.
    """
    if collective == "alltoall":
        return 4.0 * local_nodes * nbytes + 8.0 * (nbytes // itemsize) * local_nodes
    return 2.0 * local_nodes * nbytes + 8.0 * (nbytes // itemsize) + nbytes


def check_fits(comm, local_nodes: int, max_bytes: int, itemsize: int,
               executor: str, collective: str = "allreduce") -> None:
    """Collective: every rank raises the same UsageError if some host would run out of memory."""
    if executor != "mpi":
        return
    from mpi4py import MPI  # the MPI executor only
    need = mpi_executor_bytes(local_nodes, max_bytes, itemsize, collective)
    host = comm.Split_type(MPI.COMM_TYPE_SHARED)
    need_host = np.array([need])
    total = np.empty(1)
    host.Allreduce(need_host, total, op=MPI.SUM)
    host.Free()
    mine = np.array([total[0], available_bytes()])
    every = np.empty((comm.size, 2))
    comm.Allgather(mine, every)
    ratio = every[:, 0] / every[:, 1]
    worst = int(np.argmax(ratio))
    if ratio[worst] > 0.9:
        need_gib, avail_gib = every[worst, 0] / GiB, every[worst, 1] / GiB
        raise UsageError(
            f"size {format_size(max_bytes)} needs about {need_gib:.1f} GiB on the host of rank {worst} "
            f"(input, working copy and reference per node) but {avail_gib:.1f} GiB is available; "
            "use --executor model for timing only, or smaller --sizes")
