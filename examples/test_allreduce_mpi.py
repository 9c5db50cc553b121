"""Using the emulator inside a pytest-mpi test of your own.

    mpiexec -n 2 python -m pytest -q --with-mpi examples/test_allreduce_mpi.py

Check the data against numpy in float64 (or exactly, for integers) and the emulated time against a
closed form: with the ``ideal`` profile the host ring costs 2(p-1)a + 2((p-1)/p)n b + ((p-1)/p)n g.
"""

import numpy as np
import pytest

from nicemu.collectives import Emulator
from nicemu.errors import CollectiveError
from nicemu.nic import load_profile


@pytest.fixture
def emu():
    from mpi4py import MPI
    with Emulator(MPI.COMM_WORLD, topology="ring:4", profile="ideal") as e:
        yield e


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", ["ring", "directreduce", "rabenseifner"])
def test_allreduce_matches_numpy(emu, algo):
    x = np.stack([np.arange(64, dtype=np.int64) * (n + 1) for n in emu.node_range])
    res = emu.allreduce(x, algo=algo)
    assert np.array_equal(res.data, np.broadcast_to(np.arange(64) * 10, x.shape))   # 1+2+3+4 = 10


@pytest.mark.mpi(min_size=2)
def test_ring_time_is_the_closed_form(emu):
    count, p = 1 << 12, 4
    res = emu.allreduce(np.ones((emu.local_nodes, count), np.float32), algo="ring")
    prof, n = load_profile("ideal"), count * 4
    alpha, beta, gamma = prof.link.latency_us, 1e-3 / prof.link.bandwidth_GBps, 1e-3 / prof.host.reduce_GBps
    assert res.emulated_us == pytest.approx(2 * (p - 1) * alpha + 2 * (p - 1) / p * n * beta
                                            + (p - 1) / p * n * gamma, rel=1e-12)


@pytest.mark.mpi(min_size=2)
def test_bad_input_is_a_one_line_error_on_every_rank(emu):
    with pytest.raises(CollectiveError, match="sparse option"):
        emu.allreduce(np.ones((emu.local_nodes, 8), np.float32), algo="ring", block_size=256)
