"""Telemetry of the sparse algorithms on real MPI ranks: every rank times the whole call with
``model_sparse``, so ``Result.telemetry`` (ports, resources and the trace) equals the model's exactly.

Run by tests/test_mpi_suite.py at 2, 3, 4 and 8 ranks.
"""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_sparse, sparse_config
from nicemu.collectives.registry import names
from nicemu.collectives.schedules.sparse_patterns import block_mask
from nicemu.nic.profile import load_profile
from tests.sparse_cases import case_inputs, check_sum

COMM = MPI.COMM_WORLD
PROFILE = load_profile("omniccl-paper", ["link.header_bytes=64"])
ARRAYS = ("link_bytes", "link_framed", "link_busy_us", "resource_bytes", "resource_busy_us")


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", names(kind="sparse"))
@pytest.mark.parametrize("trace", [None, "0,2"])
def test_sparse_telemetry_on_ranks_equals_the_model(algo, trace):
    topology = "ring:5" if COMM.size <= 5 else f"ring:{COMM.size + 1}"   # virtual nodes at any size
    with Emulator(COMM, topology, PROFILE, telemetry=True, trace_nodes=trace) as emu:
        n = emu.topology.nodes
        x = case_inputs("random-sparse", n, 300, 8, "float32", seed=7)
        work = x[emu.node_range.start:emu.node_range.stop].copy()
        options = {"block_size": 8, "spot_blocks": 3, "aggregators": 2}
        t = emu.run_inplace("allreduce", work, "sum", algo, options)
        check_sum(work, x)
        model = model_sparse(sparse_config(algo, n, **options), block_mask(x, 8), PROFILE, 4,
                             trace_nodes=trace, telemetry=True)
    assert t.emulated_us == model.emulated_us
    got, want = t.telemetry, model.telemetry
    for name in ARRAYS:
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert got.link_bytes.sum() == t.wire_bytes and got.link_framed.sum() == t.framed_bytes
    if trace is None:
        assert got.events is None
    else:
        for key, col in want.events.items():
            assert np.array_equal(got.events[key], col) if isinstance(col, np.ndarray) else got.events[key] == col
        # dedicated aggregator a (endpoint n + a) is traced with node a
        assert {0, 2} <= set(np.unique(got.events["node"]).tolist()) <= {0, 2, n}
