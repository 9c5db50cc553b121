"""Rx and Tx spots: the aggregator's RDMA-writable memory, as an MPI RMA window.

Every rank allocates one window with ``Win.Allocate`` holding, for each
aggregator it hosts, ``S`` Rx spots with one record region per worker and
``T`` Tx spots per Rx spot. A record is::

    int64 count | int64 next | int64 slot | int64 round | int64 index[C] | block[C]   (block = block_bytes)

In an Rx record ``next`` is the worker's next-non-zero pointer; in a Tx record
it is the start of the slot's next window. ``slot`` and ``round`` let a rank
keep one result receive per aggregator rank and still know what each result
is; the emulated wire bytes do not count them (the timing charges the
published 16-byte header, collectives/schedules/spot_protocol.py). Workers ``Put`` their records into
the Rx regions; the aggregator reads and reduces them in its own memory and
scatters Tx records. The window is kept for reuse across calls and freed with
:meth:`SpotWindows.free` (or ``with``), so no window is ever leaked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

HEADER_WORDS = 4


@dataclass(frozen=True)
class RecordLayout:
    capacity: int        # C, blocks per record
    block_bytes: int

    @property
    def nbytes(self) -> int:
        return 8 * (HEADER_WORDS + self.capacity) + self.capacity * self.block_bytes

    def fill(self, buf: np.ndarray, count: int, nxt: int, indices: np.ndarray,
             blocks: np.ndarray, slot: int = -1, rnd: int = -1) -> int:
        """Write a record into a uint8 buffer; returns its used length in bytes."""
        words = buf[:8 * (HEADER_WORDS + self.capacity)].view(np.int64)
        words[0], words[1], words[2], words[3] = count, nxt, slot, rnd
        words[HEADER_WORDS:HEADER_WORDS + count] = indices
        data_at = 8 * (HEADER_WORDS + self.capacity)
        buf[data_at:data_at + count * self.block_bytes] = blocks.reshape(-1)[:count * self.block_bytes]
        return data_at + count * self.block_bytes

    def read(self, buf: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(count, next, indices, blocks as uint8 rows) of a record in a uint8 buffer."""
        words = buf[:8 * (HEADER_WORDS + self.capacity)].view(np.int64)
        count, nxt = int(words[0]), int(words[1])
        data_at = 8 * (HEADER_WORDS + self.capacity)
        blocks = buf[data_at:data_at + count * self.block_bytes].reshape(count, self.block_bytes)
        return count, nxt, words[HEADER_WORDS:HEADER_WORDS + count], blocks

    @staticmethod
    def origin(buf: np.ndarray) -> tuple[int, int]:
        """(slot, round) written into a record by :meth:`fill`."""
        words = buf[:8 * HEADER_WORDS].view(np.int64)
        return int(words[2]), int(words[3])


class SpotWindows:
    """One RMA window per rank with the Rx and Tx spots of the aggregators it hosts."""

    def __init__(self, comm: MPI.Comm, local_aggs: int, workers: int, spots: int,
                 tx_spots: int, record: RecordLayout) -> None:
        self.record = record
        self.workers, self.spots, self.tx_spots = workers, spots, tx_spots
        self.rx_per_agg = spots * workers * record.nbytes
        self.tx_per_agg = spots * tx_spots * record.nbytes
        size = max(local_aggs * (self.rx_per_agg + self.tx_per_agg), 8)
        self.win = MPI.Win.Allocate(size, 1, comm=comm)
        self.memory = np.frombuffer(self.win.tomemory(), dtype=np.uint8)
        self.key = (local_aggs, workers, spots, tx_spots, record)

    def rx_offset(self, local_agg: int, spot: int, worker: int) -> int:
        return local_agg * (self.rx_per_agg + self.tx_per_agg) + \
            (spot * self.workers + worker) * self.record.nbytes

    def tx_offset(self, local_agg: int, spot: int, tx: int) -> int:
        return local_agg * (self.rx_per_agg + self.tx_per_agg) + self.rx_per_agg + \
            (spot * self.tx_spots + tx) * self.record.nbytes

    def view(self, offset: int) -> np.ndarray:
        return self.memory[offset:offset + self.record.nbytes]

    def free(self) -> None:
        if self.win != MPI.WIN_NULL:
            self.memory = np.empty(0, dtype=np.uint8)
            self.win.Free()

    def __enter__(self) -> SpotWindows:
        return self

    def __exit__(self, *exc) -> None:
        self.free()
