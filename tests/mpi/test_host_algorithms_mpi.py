"""MPICH's host algorithms (recursive doubling, Rabenseifner, binomial tree) on real MPI ranks.

Real data through the MPI executor against numpy (exact for integers) and MPI's own
Allreduce, with emulated times and wire bytes equal to the model executor's, on
rings, switches and a torus, powers of two or not, with one or several nodes per rank.
"""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_time
from nicemu.collectives.registry import REGISTRY
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology
from tests.rank_slices import product_or_slice

PROFILE = load_profile("directreduce-paper")
COMM = MPI.COMM_WORLD
ALGOS = ["recursive-doubling", "rabenseifner", "tree"]
UFUNC = {"sum": np.add, "max": np.maximum, "min": np.minimum}


def topologies():
    size = COMM.Get_size()
    out = [f"ring:{max(size, 2)}", f"switch:{max(size, 2)}", "switch:5", "ring:7", "switch:12", "torus:2x3"]
    return [t for t in dict.fromkeys(out) if parse_topology(t).nodes >= size]


def cases():
    return [(a, c) for a in ALGOS for c in REGISTRY[a].collectives]


#: every topology x (algorithm, collective) x (dtype, op) at 2 ranks; at 3, 4 and 8 every
#: (topology, algorithm, collective) with one (dtype, op) in turn (tests/rank_slices.py)
REAL_DATA_CASES = product_or_slice(
    [(t, a, c) for t in topologies() for a, c in cases()],
    [("int64", "sum"), ("int32", "max"), ("float64", "sum"), ("float32", "min"), ("int64", "avg")])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology, algo, collective, dtype, op", REAL_DATA_CASES)
def test_real_data_and_model_agree(topology, algo, collective, dtype, op):
    count = 1003      # odd: uneven pieces everywhere
    with Emulator(COMM, topology, PROFILE) as emu:
        n = emu.topology.nodes
        rng = np.random.default_rng(n * 31 + count)
        if np.dtype(dtype).kind == "i":
            x = rng.integers(-10**6, 10**6, size=(n, count)).astype(dtype)
        else:
            x = rng.standard_normal((n, count)).astype(dtype)
        lo, hi = emu.node_range.start, emu.node_range.stop
        if op == "avg":    # NCCL's integer avg: the sum divided by the node count, truncated toward zero
            total = x.sum(axis=0)
            ref = (np.sign(total) * (np.abs(total) // n)).astype(np.float64)
        else:
            ref = UFUNC[op].reduce(x.astype(np.float64), axis=0)
        off, cnt = emu.segments(count)
        res = emu.run(collective, x[lo:hi], op, algo)
        rows = res.data if isinstance(res.data, list) else list(np.atleast_2d(res.data))
        tol = 0 if np.dtype(dtype).kind == "i" else (1e-12 if dtype == "float64" else 1e-5) * n
        for node, row in zip(range(lo, hi), rows):
            if collective == "reduce" and node != 0:      # root 0: the other rows are scratch
                continue
            if collective in ("allreduce", "reduce"):
                want = ref
            elif collective == "broadcast":
                want = x[0].astype(np.float64)
            elif collective == "reducescatter":
                want = ref[off[node]:off[node] + cnt[node]]
            else:
                want = np.concatenate([x[i, off[i]:off[i] + cnt[i]] for i in range(n)]).astype(np.float64)
            if tol == 0:
                np.testing.assert_array_equal(row, want.astype(dtype))
            else:
                np.testing.assert_allclose(row.astype(np.float64), want, rtol=tol, atol=tol)
        if collective == "allreduce" and np.dtype(dtype).kind == "i" and op != "avg":
            local = UFUNC[op].reduce(x[lo:hi], axis=0)
            mpi_ref = np.empty_like(local)
            COMM.Allreduce(local, mpi_ref, op={"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op])
            for row in rows:
                np.testing.assert_array_equal(row, mpi_ref)
        model = model_time(collective, algo, emu.topology, PROFILE, count, dtype)
        assert res.emulated_us == model.emulated_us
        assert res.wire_bytes == model.wire_bytes


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", ["recursive-doubling", "tree"])
def test_back_to_back_calls_and_stragglers(algo):
    """Exchange steps read the state from before the step, call after call; stragglers time exactly."""
    p = max(6, COMM.size)
    with Emulator(COMM, f"switch:{p}", PROFILE, stragglers="4:3") as emu:
        lo, hi = emu.node_range.start, emu.node_range.stop
        for call in range(3):
            x = np.arange(p * 257, dtype=np.int64).reshape(p, 257) * (call + 1)
            want = x.sum(axis=0)
            work = x[lo:hi].copy()
            t = emu.run_inplace("allreduce", work, "sum", algo)
            np.testing.assert_array_equal(work, np.broadcast_to(want, work.shape))
            assert t.emulated_us == model_time("allreduce", algo, emu.topology, PROFILE, 257, "int64",
                                               stragglers="4:3").emulated_us
            assert t.emulated_us > model_time("allreduce", algo, emu.topology, PROFILE, 257, "int64").emulated_us


@pytest.mark.mpi(min_size=2)
def test_faults_are_refused_on_every_rank():
    from nicemu.errors import CollectiveError
    p = max(4, COMM.size)
    with Emulator(COMM, f"ring:{p}", PROFILE, faults="drop=1e-3,seed=1") as emu:
        x = np.ones((emu.local_nodes, 64), dtype=np.float32)
        with pytest.raises(CollectiveError, match="neighbour links only"):
            emu.run("allreduce", x, "sum", "rabenseifner")
        res = emu.run("allreduce", x, "sum", "ring")       # the emulator is still usable
        assert (np.atleast_2d(res.data) == p).all()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("count", [16, 1 << 16])
def test_host_best_runs_its_choice_with_real_data(count):
    p = max(8, COMM.size)
    with Emulator(COMM, f"switch:{p}", PROFILE) as emu:
        x = np.arange(p * count, dtype=np.int64).reshape(p, count) % 1000
        lo, hi = emu.node_range.start, emu.node_range.stop
        res = emu.run("allreduce", x[lo:hi], "sum", "host-best")
        model = model_time("allreduce", "host-best", emu.topology, PROFILE, count, "int64")
        assert res.emulated_us == model.emulated_us
        assert res.chosen_algo == model.chosen_algo == ("recursive-doubling" if count == 16 else res.chosen_algo)
        for row in np.atleast_2d(res.data):
            np.testing.assert_array_equal(row, x.sum(axis=0))
