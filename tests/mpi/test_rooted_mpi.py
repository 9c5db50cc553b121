"""Broadcast and Reduce across ranks: every algorithm against numpy and MPI's own Bcast/Reduce, every dtype and
op, several nodes per rank, non-powers of two, any root; the MPI executor's times equal the model's
(run with: mpiexec -n N python -m pytest --with-mpi tests/mpi/test_rooted_mpi.py, N = 2, 3, 4)."""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu import data as bench_data
from nicemu.collectives import CollectiveError, Emulator, model_time, names
from nicemu.nic.ops import DTYPES, OPS

COMM = MPI.COMM_WORLD
PROFILE = "directreduce-paper"
EMUS: dict[str, Emulator] = {}


def topologies() -> list[str]:
    n = COMM.size
    return [f"ring:{2 * n}", f"switch:{n + 1}", f"torus:2x{n}"]    # several nodes per rank, odd counts


def emu(topology: str) -> Emulator:
    if topology not in EMUS:
        EMUS[topology] = Emulator(COMM, topology, PROFILE)
    return EMUS[topology]


def inputs(e: Emulator, count: int, dtype: str, op: str = "sum") -> np.ndarray:
    return np.stack([bench_data.node_input(n, e.topology.nodes, count, np.dtype(DTYPES[dtype]), op=op)
                     for n in e.node_range])


def _roots(p: int) -> list[int]:
    return sorted({0, p // 2, p - 1})


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", topologies())
@pytest.mark.parametrize("algo", names(collective="reduce"))
def test_reduce_every_algorithm_and_root(topology, algo):
    e = emu(topology)
    p, count = e.topology.nodes, 29
    x = inputs(e, count, "int64")
    want, _ = bench_data.reduced_reference(p, count, "sum", 1.0, 256, "random", 0, np.dtype(np.int64))
    for root in _roots(p):
        res = e.reduce(x, root=root, algo=algo)
        if root in e.node_range:
            assert np.array_equal(res.data[root - e.node_range.start], want)
        if algo != "mpi":
            m = model_time("reduce", algo, topology, PROFILE, count, "int64", root=root)
            assert (res.emulated_us, res.wire_bytes, res.host_busy_us) == (m.emulated_us, m.wire_bytes,
                                                                          m.host_busy_us)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", topologies())
@pytest.mark.parametrize("algo", names(collective="broadcast"))
def test_broadcast_every_algorithm_and_root(topology, algo):
    e = emu(topology)
    p, count = e.topology.nodes, 29
    x = inputs(e, count, "float32")
    for root in _roots(p):
        res = e.broadcast(x, root=root, algo=algo)
        want = bench_data.node_input(root, p, count, np.dtype(np.float32))
        assert np.array_equal(res.data, np.broadcast_to(want, x.shape))
        if algo != "mpi":
            m = model_time("broadcast", algo, topology, PROFILE, count, "float32", root=root)
            assert (res.emulated_us, res.wire_bytes) == (m.emulated_us, m.wire_bytes)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_dtype_and_op_against_numpy_and_mpi(dtype):
    """Reduce: the root's row within the format's error bound of the float64 (exact for integers) reduction,
    and as MPI_Reduce has it; broadcast: the root's row, bit for bit."""
    e = emu(topologies()[1])
    p, count, root = e.topology.nodes, 40, e.topology.nodes - 1
    dt = np.dtype(DTYPES[dtype])
    for op in OPS:
        x = inputs(e, count, dtype, op)
        ref, bound = bench_data.reduced_reference(p, count, op, 1.0, 256, "random", 0, dt)
        mpi = e.reduce(x, op=op, root=root, algo="mpi").data
        for algo in ("tree", "ring", "rabenseifner", "ring-pipelined", "directreduce"):
            got = e.reduce(x, op=op, root=root, algo=algo).data
            if root in e.node_range:
                row = got[root - e.node_range.start]
                assert bench_data.count_wrong(row, ref, bound) == 0, (algo, op)
                theirs = mpi[root - e.node_range.start]
                theirs = theirs if dt.kind in "iu" else theirs.astype(np.float64)
                assert bench_data.count_wrong(row, theirs, 2 * bound) == 0, (algo, op)
    x = inputs(e, count, dtype)
    for algo in ("tree", "ring", "directreduce"):
        res = e.broadcast(x, root=1, algo=algo)
        want = bench_data.node_input(1, p, count, dt)
        assert np.array_equal(res.data.view(np.uint8), np.broadcast_to(want, x.shape).view(np.uint8))


@pytest.mark.mpi(min_size=2)
def test_run_by_name_and_refusals_on_every_rank():
    e = emu(topologies()[0])
    p = e.topology.nodes
    x = inputs(e, 8, "int32")
    res = e.run("broadcast", x, algo="tree", root=p - 1)
    assert np.array_equal(res.data, np.broadcast_to(bench_data.node_input(p - 1, p, 8, np.dtype(np.int32)),
                                                    x.shape))
    with pytest.raises(CollectiveError, match=f"root {p} is not a node"):
        e.broadcast(x, root=p, algo="ring")
    with pytest.raises(CollectiveError, match="disagree"):
        e.reduce(x, root=COMM.rank, algo="ring")
    with pytest.raises(CollectiveError, match="applies to broadcast and reduce"):
        e.run("allreduce", x, algo="ring", root=1)
    with pytest.raises(CollectiveError, match="AllReduce only"):
        e.reduce(x, algo="omniccl")
    res = e.reduce(x, algo="ring", root=0)                     # the emulator still works afterwards
    if e.node_range.start == 0:
        assert res.data[0].tolist() == bench_data.reduced_reference(p, 8, "sum", 1.0, 256, "random", 0,
                                                                    np.dtype(np.int32))[0].tolist()


def teardown_module():
    for e in EMUS.values():
        e.free()
    EMUS.clear()
