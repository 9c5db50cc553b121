"""Property tests (hypothesis) on real MPI ranks; run by tests/test_mpi_suite.py at 2, 3, 4 and 8 ranks.

The properties of tests/unit/test_properties.py, with the nodes spread over
ranks. Every example also draws how many ranks take part (1 to the world
size): the world is split, and the emulator runs on the first R ranks, so one
pass at 8 ranks covers every mapping of nodes to 1..8 ranks.

Hypothesis runs on every rank. ``derandomize=True`` makes every rank draw the
same examples, and each example ends with a collective verdict (an Allreduce of
"did it fail here"), so all ranks pass or fail together and shrink in step; a
failure is reported on every rank with that rank's own message.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mpi4py import MPI

from nicemu.collectives import Emulator, model_sparse, model_time, sparse_config
from nicemu.collectives.schedules.sparse_patterns import block_mask
from nicemu.nic.profile import load_profile
from tests.property_cases import (
    SPARSE_ALGOS,
    DenseCase,
    FaultCase,
    SparseCase,
    assert_collective,
    assert_reduced,
    dense_cases,
    fault_cases,
    make_inputs,
    property_settings,
    sparse_cases,
    sparse_inputs,
    spec_of,
)

COMM = MPI.COMM_WORLD
MAX_NODES = 36                 # smaller than the unit tests': 8 ranks share 2 cores in CI
WATCHDOG_S = 30.0              # a stalled example fails (CollectiveStalled) instead of hanging the suite
SPARSE_PROFILE = load_profile("omniccl-paper")


def on_first_ranks(ranks: int, body: Callable[[MPI.Comm], None]) -> None:
    """Run ``body`` on a communicator of world ranks 0..ranks-1, then agree on the verdict."""
    sub = COMM.Split(0 if COMM.rank < ranks else MPI.UNDEFINED, COMM.rank)
    error = ""
    if sub != MPI.COMM_NULL:
        try:
            body(sub)
        except Exception as exc:  # noqa: BLE001 -- every failure must reach the verdict
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
        finally:
            sub.Free()
    failed = np.array([1 if error else 0], dtype=np.int32)
    anywhere = np.zeros_like(failed)
    COMM.Allreduce(failed, anywhere, op=MPI.MAX)
    if anywhere[0]:
        raise AssertionError(f"rank {COMM.rank} of {ranks}: " + (error or "failed on another rank"))


@st.composite
def with_ranks(draw, cases):
    ranks = draw(st.integers(1, COMM.size))
    return ranks, draw(cases(max_nodes=MAX_NODES, min_nodes=ranks))


@pytest.mark.mpi(min_size=2)
@property_settings(12)
@given(with_ranks(dense_cases))
def test_dense_properties_on_ranks(drawn: tuple[int, DenseCase]):
    ranks, c = drawn

    def body(comm: MPI.Comm) -> None:
        profile = load_profile(c.profile, c.overrides)
        with Emulator(comm, spec_of(c.shape), profile, watchdog_s=WATCHDOG_S) as emu:
            x = make_inputs(c.values, emu.topology.nodes, c.count, c.dtype)   # same on every rank
            mine = x[emu.node_range.start:emu.node_range.stop]              # (local nodes, count)
            res = emu.run(c.collective, mine, op=c.op, algo=c.algo)
            off, cnt = emu.segments(c.count)
            assert_collective(c.collective, res.data, emu.node_range, x, c.op, off, cnt)
            if c.algo != "mpi":
                model = model_time(c.collective, c.algo, emu.topology, profile, c.count, c.dtype)
                assert res.emulated_us == model.emulated_us
                assert res.wire_bytes == model.wire_bytes
                assert res.host_busy_us == model.host_busy_us and res.nic_busy_us == model.nic_busy_us

    on_first_ranks(ranks, body)


@pytest.mark.mpi(min_size=2)
@property_settings(8)
@given(with_ranks(sparse_cases))
def test_sparse_properties_on_ranks(drawn: tuple[int, SparseCase]):
    ranks, c = drawn

    def body(comm: MPI.Comm) -> None:
        with Emulator(comm, spec_of(c.shape), SPARSE_PROFILE, watchdog_s=WATCHDOG_S) as emu:
            n = emu.topology.nodes
            x, masks = sparse_inputs(c, n)
            work = x[emu.node_range.start:emu.node_range.stop].copy()
            timing = emu.run_inplace("allreduce", work, "sum", c.algo, c.options)
            for row in work:
                assert_reduced(row, x, "sum")
            model = model_sparse(sparse_config(c.algo, n, **c.options), masks, SPARSE_PROFILE, x.dtype.itemsize)
            assert timing.emulated_us == model.emulated_us
            assert timing.wire_bytes == model.wire_bytes

    on_first_ranks(ranks, body)


@pytest.mark.mpi(min_size=2)
@property_settings(6)
@given(with_ranks(fault_cases))
def test_fault_properties_on_ranks(drawn: tuple[int, FaultCase]):
    """Link faults and stragglers on real ranks: data intact, time equal to the model's."""
    ranks, c = drawn

    def body(comm: MPI.Comm) -> None:
        profile = load_profile("directreduce-paper")
        with Emulator(comm, spec_of(c.shape), profile, watchdog_s=WATCHDOG_S, faults=c.faults,
                      stragglers=c.stragglers) as emu:
            n = emu.topology.nodes
            x = make_inputs(c.values, n, c.count, c.dtype)
            lo, hi = emu.node_range.start, emu.node_range.stop
            work = x[lo:hi].copy()
            sparse = c.algo in SPARSE_ALGOS
            opts = {"block_size": 8, "spot_blocks": 4} if sparse else None
            timing = emu.run_inplace(c.collective, work, "sum", c.algo, opts, call=c.call)
            off, cnt = emu.segments(c.count)
            rows = ([work[i - lo, off[i]:off[i] + cnt[i]] for i in range(lo, hi)]
                    if c.collective == "reducescatter" else work)
            assert_collective(c.collective, rows, emu.node_range, x, "sum", off, cnt)
            if sparse:
                model = model_sparse(sparse_config(c.algo, n, **opts), block_mask(x, 8), profile,
                                     x.dtype.itemsize, emu.faults, c.call, emu.stragglers)
            else:
                model = model_time(c.collective, c.algo, emu.topology, profile, c.count, c.dtype,
                                   faults=c.faults, call=c.call, stragglers=c.stragglers)
            assert timing.emulated_us == model.emulated_us
            assert timing.wire_bytes == model.wire_bytes

    on_first_ranks(ranks, body)
