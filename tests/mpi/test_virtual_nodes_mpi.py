"""Virtual nodes on real ranks: results and emulated times do not depend on the rank count.

Virtual nodes: a rank may host several topology nodes, and any number of ranks
from 1 to the node count must give the same results. The suite runs this module
at 2, 3, 4 and 8 ranks (tests/test_mpi_suite.py). Instead of comparing runs at
different rank counts with each other, every run here is compared with values
that are computed *without* the rank count, so every rank count provably gives
the same numbers:

* emulated time, wire bytes, host/NIC busy time and per-node completion equal
  the model executor's (``model_time`` for ring/directreduce, ``model_sparse``
  on the inputs' block masks for the sparse algorithms), with ``==``;
* integer results equal numpy's float64 reduction bit for bit, float results
  are within the recursive-summation error bound of it;
* on the virtual-node tori (64 and 81 nodes), float results equal bit for bit
  the single-process run (all nodes on ``MPI.COMM_SELF``, the rank-1 case).

The direct form (one script under ``mpiexec -n 1, 2, 4, 8``, outputs compared)
is tests/e2e/test_rank_independence.py.
"""

import time

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_sparse, model_time, sparse_config
from nicemu.collectives.registry import names
from nicemu.collectives.schedules.sparse_patterns import block_mask
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology
from tests.rank_slices import full_product, in_slice

COMM = MPI.COMM_WORLD
PROFILE = load_profile("directreduce-paper")
SPARSE_PROFILE = load_profile("omniccl-paper")

#: up to 81 nodes; the last two are virtual-node tori (64 and 81 nodes)
TOPOLOGIES = ["ring:2", "ring:5", "ring:8", "torus:2x2x2", "torus:3x3", "torus:4x4x4", "torus:3x3x3x3"]
VIRTUAL = ("torus:4x4x4", "torus:3x3x3x3")
#: 1 is below every node count; 1000 is a multiple of none of 3, 9, 64 and 81;
#: 4099 is prime, so no node count divides it
COUNTS = [1, 1000, 4099]
COLLECTIVES = ["allreduce", "reducescatter", "allgather"]
ALGOS = ["ring", "directreduce"]
DTYPES = ["float32", "float64", "float16", "int32", "int64"]
SPARSE = {"block_size": 8, "spot_blocks": 4}
#: the data path of the sparse algorithms runs one Python event loop per rank, so its cost
#: grows with the blocks per node; on the 64/81-node tori the largest count uses 32-element
#: blocks (129 blocks instead of 513), which keeps the module within a minute at 8 ranks
SPARSE_LARGE_ON_TORI = {"block_size": 32, "spot_blocks": 4}
DENSITY = 0.3


def dtype_for(topology: str, count: int) -> str:
    """Rotate the dtypes over the (topology, count) grid: every dtype on several
    topologies and counts, without running every dtype everywhere."""
    return DTYPES[(TOPOLOGIES.index(topology) + COUNTS.index(count)) % len(DTYPES)]


def inputs(nodes: int, count: int, dtype: str, seed: int) -> np.ndarray:
    """Every node's input, identical on every rank (each rank slices its own nodes).

    float16 gets small integers so that its sums are exact (an 81-node float16 sum of
    normal values has no useful error bound); float32/float64 get normal values."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-10**6, 10**6, size=(nodes, count)).astype(dtype)
    if dtype == "float16":
        return rng.integers(-8, 9, size=(nodes, count)).astype(dtype)
    return rng.standard_normal((nodes, count)).astype(dtype)


def sparse_inputs(nodes: int, count: int, dtype: str, block: int, density: float, seed: int) -> np.ndarray:
    """Random values, with each node keeping each block with probability ``density``."""
    x = inputs(nodes, count, dtype, seed)
    keep = np.random.default_rng([seed, 1]).random((nodes, -(-count // block))) < density
    return x * np.repeat(keep, block, axis=1)[:, :count].astype(dtype)


def check_reduced(got: np.ndarray, x: np.ndarray, op: str, lo: int = 0, hi: int | None = None) -> None:
    """``got`` equals the float64 reduction of every node's ``x[:, lo:hi]``.

    Integers (and float16 holding small integers) bit for bit; float32/float64 within
    the bound of any summation order, (nodes - 1) * eps * sum |x|, and exactly for max/min."""
    part = x[:, lo:hi].astype(np.float64)
    ref = {"sum": np.sum, "max": np.max, "min": np.min}[op](part, axis=0)
    assert got.dtype == x.dtype and got.shape == ref.shape
    if x.dtype.kind == "i" or x.dtype == np.float16 or op != "sum":
        np.testing.assert_array_equal(got, ref.astype(x.dtype))
        return
    bound = x.shape[0] * np.finfo(x.dtype).eps * np.abs(part).sum(axis=0)
    err = np.abs(got.astype(np.float64) - ref)
    assert (err <= bound).all(), f"max error {err.max()} above the summation bound at {np.argmax(err - bound)}"


def same_timing(got, model) -> None:
    """The run's timing equals the model's, bit for bit."""
    assert got is not None and got.emulated_us is not None and got.emulated_us > 0
    assert got.emulated_us == model.emulated_us
    assert got.wire_bytes == model.wire_bytes
    assert got.host_busy_us == model.host_busy_us
    assert got.nic_busy_us == model.nic_busy_us


def nodes_of(spec: str) -> int:
    return parse_topology(spec).nodes


@pytest.fixture(scope="module", params=TOPOLOGIES)
def emu(request):
    if COMM.size > nodes_of(request.param):
        pytest.skip(f"{COMM.size} ranks > {nodes_of(request.param)} nodes of {request.param}")
    with Emulator(COMM, request.param, PROFILE) as e:
        assert e.node_range.stop - e.node_range.start == e.local_nodes
        yield e


@pytest.fixture(scope="module")
def sparse_emu(emu):
    """The same topology and ranks with the sparse algorithms' profile (RMA windows kept across tests)."""
    with Emulator(COMM, emu.topology, SPARSE_PROFILE) as e:
        yield e


@pytest.fixture(scope="module")
def single():
    """``single(spec, profile, fn)``: ``fn(emulator)`` with every node of ``spec`` in one process
    (``MPI.COMM_SELF``, the 1-rank case), given to every rank.

    Only rank 0 runs it; the others wait without spinning, so that on an oversubscribed
    machine rank 0 gets the cores (eight ranks each running all 81 nodes would not)."""
    made: dict[tuple[str, str], Emulator] = {}

    def run(spec: str, profile, fn):
        out = None
        if COMM.rank == 0:
            try:
                key = (spec, profile.name)
                if key not in made:
                    made[key] = Emulator(MPI.COMM_SELF, spec, profile)
                out = fn(made[key])
            except Exception as exc:   # every rank must leave the barrier, then all fail
                out = exc
        req = COMM.Ibarrier()
        while not req.Test():
            time.sleep(0.002)
        out = COMM.bcast(out, root=0)
        if isinstance(out, Exception):
            raise out
        return out

    yield run
    for e in made.values():
        e.free()


@pytest.mark.mpi(min_size=2)
def test_node_mapping_covers_every_node_once(emu):
    """Contiguous blocks, every node hosted by exactly one rank, at most one node more per rank."""
    ranges = COMM.allgather((emu.node_range.start, emu.node_range.stop))
    assert ranges[0][0] == 0 and ranges[-1][1] == emu.topology.nodes
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("collective", COLLECTIVES)
def test_dense_matches_model_and_reference(emu, single, collective, algo, count):
    spec = emu.topology.name
    # every count at 2 ranks; at 3, 4 and 8 each (topology, collective, algo) with one count in turn
    main = (TOPOLOGIES.index(spec) * len(COLLECTIVES) + COLLECTIVES.index(collective)) * 2 + ALGOS.index(algo)
    if not in_slice(main, COUNTS.index(count), len(COUNTS)):
        pytest.skip("this count runs for another (topology, collective, algo) here (tests/rank_slices.py)")
    n = emu.topology.nodes
    lo, hi = emu.node_range.start, emu.node_range.stop
    dtype = dtype_for(spec, count)
    x = inputs(n, count, dtype, seed=count + n)
    mine = x[lo:hi]
    res = emu.run(collective, mine, "sum", algo)
    off, cnt = emu.segments(count)
    assert int(cnt.sum()) == count and (np.diff(off) == cnt[:-1]).all()

    if collective == "allreduce":
        rows = np.atleast_2d(res.data)
        assert rows.shape == (hi - lo, count)
        for row in rows:
            check_reduced(row, x, "sum")
    elif collective == "reducescatter":
        segs = res.data if isinstance(res.data, list) else [res.data]
        assert len(segs) == hi - lo
        for i, seg in zip(range(lo, hi), segs):
            check_reduced(seg, x, "sum", off[i], off[i] + cnt[i])
    else:
        expect = np.concatenate([x[i, off[i]:off[i] + cnt[i]] for i in range(n)])
        rows = np.atleast_2d(res.data)
        assert rows.shape == (hi - lo, count)
        for row in rows:
            np.testing.assert_array_equal(row, expect)

    model = model_time(collective, algo, emu.topology, PROFILE, count, dtype)
    same_timing(res, model)
    np.testing.assert_array_equal(np.atleast_1d(res.node_done_us), model.node_done_us[lo:hi])

    if spec in VIRTUAL and x.dtype.kind == "f" and collective != "allgather":
        ref = single(spec, PROFILE, lambda e: e.run(collective, x, "sum", algo))
        assert ref.emulated_us == res.emulated_us
        if collective == "allreduce":
            np.testing.assert_array_equal(np.atleast_2d(res.data), ref.data[lo:hi])
        else:
            segs = res.data if isinstance(res.data, list) else [res.data]
            for got, want in zip(segs, ref.data[lo:hi]):
                np.testing.assert_array_equal(got, want)


TORI_DTYPE_OPS = [("float32", "max"), ("int32", "min"), ("float64", "sum"), ("float32", "sum"), ("int64", "sum"),
                  ("float16", "sum")]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", VIRTUAL)
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("dtype,op", TORI_DTYPE_OPS)
def test_virtual_tori_every_dtype(single, topology, algo, dtype, op):
    """64 and 81 nodes: every dtype (and max/min) at a count no node count divides."""
    if COMM.size > nodes_of(topology):
        pytest.skip("more ranks than nodes")
    # every (dtype, op) with every (torus, algo) at 2 ranks; at 3, 4 and 8 the six pairs are shared out
    # over the four (torus, algo), so each pair runs once
    if not full_product() and TORI_DTYPE_OPS.index((dtype, op)) % 4 != VIRTUAL.index(topology) * 2 + ALGOS.index(algo):
        pytest.skip("this (dtype, op) runs with another (torus, algo) here (tests/rank_slices.py)")
    count = 515
    with Emulator(COMM, topology, PROFILE) as emu:
        n = emu.topology.nodes
        lo, hi = emu.node_range.start, emu.node_range.stop
        x = inputs(n, count, dtype, seed=17 + n)
        res = emu.allreduce(x[lo:hi], op=op, algo=algo)
        for row in np.atleast_2d(res.data):
            check_reduced(row, x, op)
        same_timing(res, model_time("allreduce", algo, emu.topology, PROFILE, count, dtype))
        ref = single(topology, PROFILE, lambda e: e.allreduce(x, op=op, algo=algo))
        np.testing.assert_array_equal(np.atleast_2d(res.data), ref.data[lo:hi])
        assert res.emulated_us == ref.emulated_us


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("algo", tuple(names(kind="sparse")))
def test_sparse_matches_model_and_reference(sparse_emu, single, algo, count):
    spec = sparse_emu.topology.name
    # every count at 2 ranks; at 3, 4 and 8 each (topology, algo) with one count in turn
    sparse_algos = tuple(names(kind="sparse"))
    main = TOPOLOGIES.index(spec) * len(sparse_algos) + sparse_algos.index(algo)
    if not in_slice(main, COUNTS.index(count), len(COUNTS)):
        pytest.skip("this count runs for another (topology, algo) here (tests/rank_slices.py)")
    n = sparse_emu.topology.nodes
    lo, hi = sparse_emu.node_range.start, sparse_emu.node_range.stop
    dtype = "int64" if count == 1000 else "float32"
    opts = SPARSE_LARGE_ON_TORI if spec in VIRTUAL and count == max(COUNTS) else SPARSE
    x = sparse_inputs(n, count, dtype, opts["block_size"], DENSITY, seed=count + 31 * n)
    work = x[lo:hi].copy()
    t = sparse_emu.run_inplace("allreduce", work, "sum", algo, dict(opts))
    zero = ~(x != 0).any(axis=0)          # columns that are zero on every node stay exactly zero
    for row in work:
        check_reduced(row, x, "sum")
        assert (row[zero] == 0).all()
    cfg = sparse_config(algo, n, **opts)
    model = model_sparse(cfg, block_mask(x, cfg.block_size), SPARSE_PROFILE, x.dtype.itemsize)
    same_timing(t, model)
    assert t.upstream_bytes == model.upstream_bytes and t.downstream_bytes == model.downstream_bytes
    if spec in VIRTUAL and x.dtype.kind == "f":
        def whole(e):
            ref = x.copy()
            return ref, e.run_inplace("allreduce", ref, "sum", algo, dict(opts))

        ref, tr = single(spec, SPARSE_PROFILE, whole)
        np.testing.assert_array_equal(work, ref[lo:hi])
        assert tr.emulated_us == t.emulated_us
