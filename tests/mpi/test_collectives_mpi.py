"""Collectives on real MPI ranks (run with: mpiexec -n N python -m pytest --with-mpi tests/mpi).

Every result is checked against numpy's float64 reduction of all nodes' inputs
and against MPI's own Allreduce; emulated times must equal the model
executor's bit for bit, whatever the node-to-rank mapping.
"""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_time
from nicemu.nic.profile import load_profile
from tests.rank_slices import product_or_slice

PROFILE = load_profile("directreduce-paper")
COMM = MPI.COMM_WORLD


def topologies():
    size = COMM.Get_size()
    out = [f"ring:{max(size, 2)}", "ring:8", "torus:2x2x2", "torus:3x3", "torus:4x4x2"]
    return [t for t in dict.fromkeys(out) if _nodes(t) >= size]


def _nodes(spec):
    from nicemu.topologies import parse_topology
    return parse_topology(spec).nodes


def inputs(nodes, count, dtype, seed):
    rng = np.random.default_rng(seed)   # same on every rank: each rank slices its own nodes
    if np.dtype(dtype).kind == "i":
        return rng.integers(-10**6, 10**6, size=(nodes, count)).astype(dtype)
    return rng.standard_normal((nodes, count)).astype(dtype)


def mpi_reference(local_rows, op):
    """MPI's own Allreduce of the rank's nodes, combined locally first."""
    ufunc = {"sum": np.add, "max": np.maximum, "min": np.minimum}[op]
    local = ufunc.reduce(local_rows, axis=0)
    out = np.empty_like(local)
    COMM.Allreduce(local, out, op={"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op])
    return out


#: the full topology x algorithm x count x dtype x op product runs at 2 ranks; at 3, 4 and 8 every
#: (topology, algorithm, count) runs with one (dtype, op) in turn (tests/rank_slices.py)
ALLREDUCE_CASES = product_or_slice(
    [(t, a, c) for t in topologies() for a in ("ring", "directreduce") for c in (1, 5, 4099)],
    [(d, o) for d in ("float32", "float64", "int32", "int64", "float16") for o in ("sum", "max")])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology, algo, count, dtype, op", ALLREDUCE_CASES)
def test_allreduce_on_ranks(topology, algo, dtype, op, count):
    with Emulator(COMM, topology, PROFILE) as emu:
        n = emu.topology.nodes
        x = inputs(n, count, dtype, seed=count + n)
        mine = x[emu.node_range.start:emu.node_range.stop]
        res = emu.allreduce(mine, op=op, algo=algo)
        ref64 = {"sum": np.sum, "max": np.max}[op](x.astype(np.float64), axis=0)
        ref_mpi = mpi_reference(mine, op)
        rows = np.atleast_2d(res.data)
        if np.dtype(dtype).kind == "i":
            for row in rows:
                np.testing.assert_array_equal(row, ref64.astype(dtype))
                np.testing.assert_array_equal(row, ref_mpi)
        else:
            tol = {"float16": 2e-2, "float32": 1e-5, "float64": 1e-12}[dtype] * n
            for row in rows:
                np.testing.assert_allclose(row.astype(np.float64), ref64, rtol=tol, atol=tol)
                np.testing.assert_allclose(row.astype(np.float64), ref_mpi.astype(np.float64),
                                           rtol=tol, atol=tol)
        model = model_time("allreduce", algo, emu.topology, PROFILE, count, dtype)
        assert res.emulated_us == model.emulated_us
        assert res.wire_bytes == model.wire_bytes


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", topologies())
@pytest.mark.parametrize("algo", ["ring", "directreduce", "mpi"])
def test_reduce_scatter_and_allgather_on_ranks(topology, algo):
    count = 1003
    with Emulator(COMM, topology, PROFILE) as emu:
        n = emu.topology.nodes
        x = inputs(n, count, "int64", seed=3)
        lo, hi = emu.node_range.start, emu.node_range.stop
        ref = x.sum(axis=0)
        off, cnt = emu.segments(count)
        rs = emu.reduce_scatter(x[lo:hi], algo=algo)
        segs = rs.data if isinstance(rs.data, list) else [rs.data]
        for i, seg in zip(range(lo, hi), segs):
            np.testing.assert_array_equal(seg, ref[off[i]:off[i] + cnt[i]])
        ag = emu.allgather(x[lo:hi], algo=algo)
        expect = np.concatenate([x[i, off[i]:off[i] + cnt[i]] for i in range(n)])
        for row in np.atleast_2d(ag.data):
            np.testing.assert_array_equal(row, expect)
        if algo != "mpi":
            assert rs.emulated_us == model_time("reducescatter", algo, emu.topology, PROFILE, count,
                                                "int64").emulated_us


@pytest.mark.mpi(min_size=2)
def test_paper_sizes_on_ranks_match_model_and_closed_form():
    ideal = load_profile("ideal")
    p = 8
    with Emulator(COMM, f"ring:{p}", ideal) as emu:
        for nbytes in (1 << 10, 1 << 18, 1 << 22):
            count = nbytes // 4
            x = np.ones((emu.local_nodes, count), dtype=np.float32)
            res = emu.allreduce(x, algo="ring")
            a, b, g = 1.0, 1 / 12.5e3, 1 / 20e3
            expected = 2 * (p - 1) * a + 2 * (p - 1) / p * nbytes * b + (p - 1) / p * nbytes * g
            assert res.emulated_us == pytest.approx(expected, rel=1e-9)
            assert (np.atleast_2d(res.data) == p).all()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", topologies())
@pytest.mark.parametrize("algo", ["ring", "directreduce"])
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter"])
def test_bidirectional_on_ranks(topology, algo, collective):
    prof = load_profile("directreduce-paper", ["topology.bidirectional=true"])
    count = 2053
    with Emulator(COMM, topology, prof) as emu:
        n = emu.topology.nodes
        x = inputs(n, count, "int32", seed=5)
        lo, hi = emu.node_range.start, emu.node_range.stop
        res = emu.run(collective, x[lo:hi], algo=algo)
        ref = x.astype(np.int64).sum(axis=0).astype(np.int32)
        if collective == "allreduce":
            for row in np.atleast_2d(res.data):
                np.testing.assert_array_equal(row, ref)
        else:
            off, cnt = emu.segments(count)
            segs = res.data if isinstance(res.data, list) else [res.data]
            for i, seg in zip(range(lo, hi), segs):
                np.testing.assert_array_equal(seg, ref[off[i]:off[i] + cnt[i]])
        assert res.emulated_us == model_time(collective, algo, emu.topology, prof, count, "int32").emulated_us
