"""The lean one-node-per-rank path (collectives/mpi/lean_path.py) on real ranks.

With ``ring:R`` or a torus of R nodes on R ranks every call takes the lean
path. Chunk sizes straddle :data:`PACK_MAX_BYTES` (times packed with the data
vs. a separate timing message, reduce from the packed buffer vs. a scratch
buffer, placed chunks copied vs. received in place), for reductions and
placements, one and both directions. Results are checked against MPI's own
Allreduce (integers: exactly) and emulated times against the model executor
(exactly); the same emulator object repeats each call, so the persistent
requests are reused.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_time
from nicemu.collectives.mpi.lean_path import PACK_MAX_BYTES
from nicemu.nic.profile import load_profile

COMM = MPI.COMM_WORLD


def topologies() -> list[str]:
    size = COMM.Get_size()
    out = [f"ring:{size}"]
    if size == 4:
        out.append("torus:2x2")
    if size == 8:
        out.append("torus:2x2x2")
    return out


def counts() -> list[int]:
    """Element counts (int32) whose largest chunk is just at, just above and well above the limit."""
    parts = COMM.Get_size()
    at = PACK_MAX_BYTES // 4 * parts
    return [at, at + parts, 4 * at + 3]


def mpi_sum(row: np.ndarray) -> np.ndarray:
    out = np.empty_like(row)
    COMM.Allreduce(row, out, op=MPI.SUM)
    return out


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", topologies())
@pytest.mark.parametrize("algo", ["ring", "directreduce"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lean_path_matches_mpi_and_model(topology, algo, bidirectional):
    prof = load_profile("directreduce-paper", [f"topology.bidirectional={str(bidirectional).lower()}"])
    rng = np.random.default_rng(COMM.rank + 17)
    with Emulator(COMM, topology, prof) as emu:
        assert emu.local_nodes == 1
        for count in counts():
            x = rng.integers(-10**6, 10**6, size=count).astype(np.int32)
            ref = mpi_sum(x)
            expected = model_time("allreduce", algo, emu.topology, prof, count, "int32").emulated_us
            for _ in range(2):                      # the second call reuses the persistent requests
                res = emu.allreduce(x, algo=algo)
                assert emu.executor.last_transport.name == "lean", "the lean path was not taken"
                np.testing.assert_array_equal(res.data, ref)
                assert res.emulated_us == expected
            rs = emu.reduce_scatter(x, algo=algo)
            off, cnt = emu.segments(count)
            me = COMM.rank
            np.testing.assert_array_equal(rs.data, ref[off[me]:off[me] + cnt[me]])
            assert rs.emulated_us == model_time("reducescatter", algo, emu.topology, prof, count,
                                                "int32").emulated_us
        assert any(plan.lean is not None for plan in emu.executor.plans.values())


@pytest.mark.mpi(min_size=2)
def test_lean_path_float_sum_and_max():
    prof = load_profile("directreduce-paper")
    count = 3 * PACK_MAX_BYTES // 4 * COMM.Get_size() + 1
    rng = np.random.default_rng(COMM.rank)
    with Emulator(COMM, f"ring:{COMM.Get_size()}", prof) as emu:
        for dtype, op, mpi_op in (("float64", "sum", MPI.SUM), ("float32", "max", MPI.MAX)):
            x = rng.standard_normal(count).astype(dtype)
            ref = np.empty_like(x)
            COMM.Allreduce(x, ref, op=mpi_op)
            res = emu.allreduce(x, op=op, algo="ring")
            np.testing.assert_allclose(res.data, ref, rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-6)
            assert res.emulated_us == model_time("allreduce", "ring", emu.topology, prof, count, dtype).emulated_us
