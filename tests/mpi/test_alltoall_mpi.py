"""AllToAll on real MPI ranks (run with: mpiexec -n N python -m pytest --with-mpi tests/mpi).

Every rank builds the same full input, keeps its own nodes' rows and checks
the result against numpy's block transpose (bit for bit, every dtype); with
one node per rank also against MPI's own ``Alltoall``. Emulated times must
equal the model executor's exactly, whatever the node-to-rank mapping.
"""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_time
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

PROFILE = load_profile("directreduce-paper")
COMM = MPI.COMM_WORLD
DTYPES = ["float32", "float64", "float16", "int32", "int64"]


def topologies():
    size = COMM.Get_size()
    out = [f"ring:{max(size, 2)}", "ring:5", "torus:2x3", "torus:3x3"]
    return [t for t in dict.fromkeys(out) if parse_topology(t).nodes >= size]


def full_input(p, count, dtype, seed):
    rng = np.random.default_rng(seed)   # the same on every rank
    if np.dtype(dtype).kind == "i":
        return rng.integers(-10**6, 10**6, size=(p, count)).astype(dtype)
    return rng.standard_normal((p, count)).astype(dtype)


def transposed(x):
    p, count = x.shape
    return np.ascontiguousarray(x.reshape(p, p, count // p).transpose(1, 0, 2)).reshape(p, count)


def _alltoall_checked(emu, profile, algo: str, count: int, dtype, seed: int):
    """One all-to-all of this rank's rows: data equal to the transposed input byte for byte, and (but for
    ``mpi``) the model's time, wire bytes and host time. Returns (input of every node, this rank's rows)."""
    n = emu.topology.nodes
    lo, hi = emu.node_range.start, emu.node_range.stop
    x = full_input(n, count, dtype, seed=seed)
    res = emu.alltoall(x[lo:hi] if hi - lo > 1 else x[lo], algo=algo)
    rows = np.atleast_2d(res.data)
    np.testing.assert_array_equal(rows.view(np.uint8), transposed(x)[lo:hi].view(np.uint8))
    if algo == "mpi":
        assert res.emulated_us is None
    else:
        model = model_time("alltoall", algo, emu.topology, profile, count, dtype)
        assert (res.emulated_us, res.wire_bytes, res.host_busy_us) == \
            (model.emulated_us, model.wire_bytes, model.host_busy_us)
    return x, rows


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", topologies())
@pytest.mark.parametrize("algo", ["ring", "directreduce", "mpi"])
def test_alltoall_on_ranks(topology, algo):
    with Emulator(COMM, topology, PROFILE) as emu:
        p = emu.topology.nodes
        lo = emu.node_range.start
        for i, dtype in enumerate(DTYPES):
            x, rows = _alltoall_checked(emu, PROFILE, algo, p * (3 + i), dtype, p + i)
            if p == COMM.size and np.dtype(dtype).itemsize >= 4:   # collective: all ranks or none
                ref = np.empty_like(x[lo])
                COMM.Alltoall(np.ascontiguousarray(x[lo]), ref)   # MPI's own, one block per rank
                np.testing.assert_array_equal(rows[0], ref)


@pytest.mark.mpi(min_size=2)
def test_alltoall_count_not_divisible_fails_on_every_rank():
    from nicemu.collectives import CollectiveError
    with Emulator(COMM, f"ring:{COMM.size}", PROFILE) as emu:
        with pytest.raises(CollectiveError, match="divisible"):
            emu.alltoall(np.zeros(COMM.size + 1, dtype=np.float32))


def rank_layouts():
    """(node topology, ranks per node) with at least one rank per MPI process; one rank per process too."""
    size = COMM.Get_size()
    out = [("ring:3", 2), ("ring:2", 4), ("torus:2x3", 2)]
    if size % 2 == 0:
        out.append((f"ring:{max(size // 2, 2)}", 2))
    return [(t, p) for t, p in dict.fromkeys(out) if parse_topology(t).nodes * p >= size]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology, per_node", rank_layouts())
@pytest.mark.parametrize("algo", ["ring", "directreduce", "mpi"])
def test_alltoall_ranks_per_node_on_ranks(topology, per_node, algo):
    """The hierarchical all-to-all (rails, then inside the node) on real ranks: numpy, and the model's times."""
    profile = load_profile("400g-gen5", ["intra_node.nvlink=true"]) if per_node == 4 else PROFILE
    with Emulator(COMM, topology, profile, ranks_per_node=per_node) as emu:
        n = emu.topology.nodes
        for i, dtype in enumerate(DTYPES):
            _alltoall_checked(emu, profile, algo, n * (2 + i), dtype, n + i)
