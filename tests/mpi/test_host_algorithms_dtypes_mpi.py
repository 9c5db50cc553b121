"""Every nccl-tests type and op through the host algorithms beyond the ring, on real MPI ranks.

The same inputs and references as tests/mpi/test_dtypes_mpi.py: integers exact (wrapping), floats within
the bound of N - 1 operations rounded in the type, which holds for any order of the additions
(recursive doubling, Rabenseifner's halving, the tree and the segmented ring each add in their own order).
"""

import numpy as np
import pytest
from mpi4py import MPI
from test_dtypes_mpi import COUNT, check, inputs, reference

from nicemu.collectives import Emulator, model_time
from nicemu.nic.ops import DTYPES, OPS
from nicemu.nic.profile import load_profile
from tests.rank_slices import product_or_slice

COMM = MPI.COMM_WORLD
PROFILE = load_profile("directreduce-paper", ["host.segment_KiB=0.0625"])    # several segments per chunk
ALGOS = ("recursive-doubling", "rabenseifner", "tree", "ring-pipelined", "host-best")


#: every type x op at 2 ranks; at 3, 4 and 8 every type with one op in turn (tests/rank_slices.py)
CASES = product_or_slice([(n,) for n in DTYPES], [(o,) for o in OPS])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name, op", CASES)
def test_host_algorithms_every_dtype_and_op(name, op):
    dt = DTYPES[name]
    with Emulator(COMM, f"switch:{max(COMM.size, 5)}", PROFILE) as emu:
        n = emu.topology.nodes
        x = inputs(n, COUNT, dt, op, seed=n + 7)
        mine = x[emu.node_range.start:emu.node_range.stop]
        ref, bound = reference(x, op)
        for algo in ALGOS:
            res = emu.allreduce(mine, op=op, algo=algo)
            assert np.atleast_2d(res.data).dtype == dt
            check(np.atleast_2d(res.data), ref, bound)
            model = model_time("allreduce", algo, emu.topology, PROFILE, COUNT, name)
            assert res.emulated_us == model.emulated_us
