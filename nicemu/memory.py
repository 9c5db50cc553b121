"""Refuse a sweep that cannot fit in memory, before anything is allocated.

The estimates are deliberately simple upper bounds measured on the executors:

* the MPI executor holds, per hosted node, the input and a working copy, plus
  the float64 reference and receive scratch;
* the dense model executor holds a few int64/float64 arrays per node and step
  group: at most about 1 KiB per node (measured 0.6-0.95 KiB from torus:8^6 to
  torus:2^20);
* a sparse algorithm holds every node's block mask and the protocol's per-block
  state: at most about 5 B per node and block (measured 2.3-4.3 B), on every
  rank of the MPI executor too (the masks are gathered), and about 1 KiB per
  slot (aggregators x spots), plus, on the MPI executor, the spot windows of
  the aggregators a rank hosts.
"""

from __future__ import annotations

import math
import os

import numpy as np

from nicemu.errors import UsageError
from nicemu.sizes import format_size

GiB = float(1 << 30)
#: dense model executor, bytes per topology node
MODEL_BYTES_PER_NODE = 1024.0
#: sparse algorithms, bytes per (node, block) of the block masks and the protocol's state
SPARSE_BYTES_PER_NODE_BLOCK = 5.0
#: sparse algorithms, bytes per slot (aggregators x spots; measured about 940 B)
SPARSE_BYTES_PER_SLOT = 1024.0
#: a run may use this share of the memory available
USABLE_SHARE = 0.9


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
    """Input and working copy per hosted node, the float64 reference and its per-element error bound, and
    receive scratch (inputs are made and results checked a chunk at a time, nicemu/data.py). Measured:
    ``nicemu bench --executor mpi --topology ring:2 --sizes 256M --algo ring`` (one rank, two nodes) peaks
    at 2.19 GiB resident, against 2.25 GiB here plus the interpreter.

    AllToAll adds a staging row of twice the input per node and checks one reference per node.
    """
    if collective == "alltoall":
        return 4.0 * local_nodes * nbytes + 8.0 * (nbytes // itemsize) * local_nodes
    return 2.0 * local_nodes * nbytes + 16.0 * (nbytes // itemsize) + nbytes


def sparse_bytes(cfg, nodes: int, nbytes: int, itemsize: int) -> float:
    """Block masks, per-block and per-slot protocol state of a sparse run (either executor)."""
    nblocks = math.ceil(nbytes // itemsize / cfg.block_size)
    slots = (cfg.aggregators or nodes) * cfg.spots
    return SPARSE_BYTES_PER_NODE_BLOCK * nodes * nblocks + 8.0 * nblocks + SPARSE_BYTES_PER_SLOT * slots


def spot_window_bytes(cfg, nodes: int, ranks: int, itemsize: int) -> float:
    """The RMA window of the rank that hosts the most aggregators: Rx and Tx spots of each."""
    aggregators = cfg.aggregators or nodes
    record = 8.0 * (2 + cfg.spot_blocks) + float(cfg.spot_blocks) * cfg.block_size * itemsize
    return math.ceil(aggregators / ranks) * cfg.spots * (nodes + cfg.tx_spots) * record


def check_model_fits(need: float, what: str, fix: str) -> None:
    """Raise a UsageError when the model executor would need more than this host has available."""
    avail = available_bytes()
    if need > USABLE_SHARE * avail:
        raise UsageError(f"{what} needs about {need / GiB:.1f} GiB but {avail / GiB:.1f} GiB is available; {fix}")


def check_fits(comm, local_nodes: int, max_bytes: int, itemsize: int,
               executor: str, collective: str = "allreduce", extra_bytes: float = 0.0, fix: str | None = None,
               what: str | None = None) -> None:
    """Collective: every rank raises the same UsageError if some host would run out of memory.

    ``extra_bytes`` is this rank's share beyond the data (sparse masks, spot windows); ``what`` names the
    largest call (default: its size) and ``fix`` what to change (default: bench's options).
    """
    if executor != "mpi":
        return
    from mpi4py import MPI  # the MPI executor only
    need = mpi_executor_bytes(local_nodes, max_bytes, itemsize, collective) + extra_bytes
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
    if ratio[worst] > USABLE_SHARE:
        need_gib, avail_gib = every[worst, 0] / GiB, every[worst, 1] / GiB
        fix = fix or ("use --executor model for timing only, or smaller --sizes"
                      f"{', --spots, --spot-blocks or --block-size' if extra_bytes else ''}")
        raise UsageError(
            f"{what or 'size ' + format_size(max_bytes)} needs about {need_gib:.1f} GiB on the host of rank {worst} "
            f"(input, working copy and reference per node{', block masks and spot windows' if extra_bytes else ''})"
            f" but {avail_gib:.1f} GiB is available; {fix}")
