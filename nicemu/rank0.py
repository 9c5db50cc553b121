"""Work that every rank would do alike, done once by rank 0 while the others wait idle.

The model executor's replay gives the same numbers on every rank; ranks oversubscribing a machine's cores
would pay for it many times over. ``nicemu jobs`` and ``nicemu train --executor mpi`` compute their model
and report this way after the real data has moved on every rank.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from nicemu.errors import NicemuError


def on_rank0(comm, body: Callable[[], object], what: str = "the model") -> None:
    """Run ``body`` on rank 0 alone (every rank, if ``comm`` has one) while the other ranks wait idle.

    A one-line error on rank 0 ends every rank with it (printed once, by rank 0); a crash there aborts the job."""
    if comm.size == 1:
        body()
        return
    status = np.zeros(1, dtype=np.int64)
    error = None
    if comm.rank == 0:
        try:
            body()
        except NicemuError as exc:
            status[0], error = 1, exc
    req = comm.Ibcast(status, root=0)
    while not req.Test():        # wait without spinning a core the way a blocking collective does
        time.sleep(0.01)
    if error is not None:
        raise error
    if status[0]:
        raise NicemuError(f"{what} stopped on rank 0 (its error is printed there)")
