"""Which rank counts run the full cross products of tests/mpi, and the slice the others run.

tests/test_mpi_suite.py runs tests/mpi at 2, 3, 4 and 8 ranks. A product of dtype x op (or input
case) x algorithm x topology repeats the same code path at every rank count once the node-to-rank
mapping is fixed. The full product runs at ``FULL_PRODUCT_RANKS``, 2 ranks: several nodes per rank
on most topologies, one node per rank (the lean path) on ``ring:2``. At 3, 4 and 8 ranks every *main*
case (topology, algorithm, collective, count) still runs, each with one of the *secondary* cases
(dtype, op, ...) in turn, so every main value and every secondary value runs at every rank count.
"""

from __future__ import annotations

from mpi4py import MPI

FULL_PRODUCT_RANKS = (2,)


def full_product() -> bool:
    """True at the rank counts that run every combination."""
    return MPI.COMM_WORLD.Get_size() in FULL_PRODUCT_RANKS


def product_or_slice(main: list[tuple], secondary: list[tuple]) -> list[tuple]:
    """``main x secondary`` (tuples concatenated) at ``FULL_PRODUCT_RANKS``; elsewhere
    ``max(len(main), len(secondary))`` cases pairing them in turn, the secondary index advancing one
    extra step per full turn so that a main axis with a period dividing ``len(secondary)`` (e.g. two
    algorithms alternating) still meets every secondary case."""
    if full_product():
        return [m + s for m in main for s in secondary]
    k = len(secondary)
    return [main[i % len(main)] + secondary[turn(i, k)] for i in range(max(len(main), k))]


def turn(i: int, k: int) -> int:
    """The secondary case (of ``k``) that main case ``i`` meets in a slice."""
    return (i + i // k) % k


def in_slice(main_index: int, secondary_index: int, k: int) -> bool:
    """For a test that skips inside: run (main case, secondary case of ``k``) here? Always at
    ``FULL_PRODUCT_RANKS``; elsewhere only the pair ``product_or_slice`` would keep."""
    return full_product() or secondary_index == turn(main_index, k)
