"""Which MPI rank hosts which topology nodes: contiguous, near-equal blocks of node ids."""

from __future__ import annotations

import numpy as np


def node_blocks(nodes: int, ranks: int) -> np.ndarray:
    """First node of every rank (and ``nodes`` at the end): contiguous, near-equal blocks, as int64.

    Rank ``r`` hosts nodes ``[b[r], b[r+1])``; this is how the ``Emulator`` places nodes. Raises nothing."""
    return np.array([r * nodes // ranks for r in range(ranks + 1)], dtype=np.int64)
