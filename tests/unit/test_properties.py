"""Property tests (hypothesis), one process: every node on one rank (MPI.COMM_SELF).

Two properties over random topologies (rings and tori of 1 to 6 dimensions, 2 to
5 nodes each, at most 64 nodes), counts, dtypes, ops, collectives, profiles and,
for the sparse algorithms, densities and spot options:

1. the result equals an independent reference (tests/property_cases.py);
2. the MPI executor's emulated time equals the model executor's, exactly.

The same properties run on 2, 3, 4 and 8 ranks in tests/mpi/test_properties_mpi.py.
``NICEMU_PROPERTY_EXAMPLES=N`` raises the example counts for a long run.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
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

SPARSE_PROFILE = load_profile("omniccl-paper")


def run_dense(c: DenseCase) -> None:
    profile = load_profile(c.profile, c.overrides)
    with Emulator(MPI.COMM_SELF, spec_of(c.shape), profile) as emu:
        x = make_inputs(c.values, emu.topology.nodes, c.count, c.dtype)
        before = x.copy()
        res = emu.run(c.collective, x, op=c.op, algo=c.algo)
        np.testing.assert_array_equal(x, before)            # the caller's array is untouched
        off, cnt = emu.segments(c.count)
        assert_collective(c.collective, res.data, emu.node_range, x, c.op, off, cnt)
        if c.algo == "mpi":
            assert res.emulated_us is None
            return
        model = model_time(c.collective, c.algo, emu.topology, profile, c.count, c.dtype)
        assert res.emulated_us == model.emulated_us
        assert res.wire_bytes == model.wire_bytes
        assert res.host_busy_us == model.host_busy_us and res.nic_busy_us == model.nic_busy_us
        np.testing.assert_array_equal(res.node_done_us, model.node_done_us)


@property_settings(300)
@given(dense_cases())
def test_dense_collectives_match_reference_and_model(c: DenseCase):
    run_dense(c)


@property_settings(100)
@given(sparse_cases())
def test_sparse_allreduce_matches_reference_and_model(c: SparseCase):
    with Emulator(MPI.COMM_SELF, spec_of(c.shape), SPARSE_PROFILE) as emu:
        n = emu.topology.nodes
        x, masks = sparse_inputs(c, n)
        work = x.copy()
        timing = emu.run_inplace("allreduce", work, "sum", c.algo, c.options)
        for row in work:
            assert_reduced(row, x, "sum")
        cfg = sparse_config(c.algo, n, **c.options)
        model = model_sparse(cfg, masks, SPARSE_PROFILE, x.dtype.itemsize)
        assert timing.emulated_us == model.emulated_us
        assert timing.wire_bytes == model.wire_bytes
        assert timing.upstream_bytes == model.upstream_bytes
        assert timing.downstream_bytes == model.downstream_bytes


def test_strategies_cover_the_space():
    """The drawn topologies and counts reach the corners the properties are about."""
    from hypothesis import find
    from hypothesis import strategies as st

    from tests.property_cases import counts, torus_shapes
    six = find(torus_shapes(), lambda s: len(s) == 6)
    assert six == (2,) * 6
    assert math.prod(find(torus_shapes(), lambda s: math.prod(s) > 60)) <= 64
    assert find(torus_shapes(), lambda s: 5 in s and len(s) >= 2)
    tiny = find(st.integers(2, 64).flatmap(lambda n: st.tuples(st.just(n), counts(n))),
                lambda nc: nc[1] < nc[0] and nc[0] > 8)
    assert tiny[1] < tiny[0]


@property_settings(60)
@given(fault_cases())
def test_faults_lose_nothing_and_both_executors_agree(c: FaultCase):
    """Under drops, corruptions and a straggler the data is intact and the MPI executor's time is
    the model's (same call number, same draws); with no fault and no straggler it is the
    fault-free time, bit for bit."""
    profile = load_profile("directreduce-paper")
    spec = spec_of(c.shape)
    with Emulator(MPI.COMM_SELF, spec, profile, faults=c.faults, stragglers=c.stragglers) as emu:
        n = emu.topology.nodes
        sparse = c.algo in SPARSE_ALGOS
        if sparse:
            x = make_inputs(c.values, n, c.count, c.dtype)
            x[:, : c.count // 2] = 0                               # zero blocks to skip
            opts = {"block_size": 8, "spot_blocks": 4}
            masks = block_mask(x, 8)
        else:
            x = make_inputs(c.values, n, c.count, c.dtype)
        work = x.copy()
        timing = emu.run_inplace(c.collective, work, "sum", c.algo, opts if sparse else None, call=c.call)
        off, cnt = emu.segments(c.count)
        rows = [work[i, off[i]:off[i] + cnt[i]] for i in range(n)] if c.collective == "reducescatter" else work
        assert_collective(c.collective, rows, range(n), x, "sum", off, cnt)
        if sparse:
            cfg = sparse_config(c.algo, n, **opts)
            model = model_sparse(cfg, masks, profile, x.dtype.itemsize, emu.faults, c.call, emu.stragglers)
            clean = model_sparse(cfg, masks, profile, x.dtype.itemsize)
        else:
            model = model_time(c.collective, c.algo, emu.topology, profile, c.count, c.dtype,
                               faults=c.faults, call=c.call, stragglers=c.stragglers)
            clean = model_time(c.collective, c.algo, emu.topology, profile, c.count, c.dtype)
        assert timing.emulated_us == model.emulated_us
        assert timing.wire_bytes == model.wire_bytes
        if c.drop == 0 and c.corrupt == 0 and (c.straggler is None or c.straggler[1] == 1.0):
            assert timing.emulated_us == clean.emulated_us
        assert timing.emulated_us >= clean.emulated_us            # faults and stragglers never help
