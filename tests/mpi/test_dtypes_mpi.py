"""Every nccl-tests type and op on real MPI ranks (run by tests/test_mpi_suite.py at 2, 3, 4 and 8 ranks).

Integers are checked exactly, wrapping modulo 2**bits (random full-range inputs make sums and products
wrap). Floats are checked against the float64 reduction with the bound of N - 1 operations rounded in
the type, plus the float64 reference's own rounding (nicemu/data.py), and beyond that:

* ring and DirectReduce run the same schedule, so they accumulate every chunk in the same order (along
  the ring) and give the same bits;
* OmNICCL's aggregator adds the workers' blocks to a zeroed Tx spot in node order, so its sum is exactly
  the left-to-right sum of the nodes in the type: a different order from the ring's, hence other bits;
* MPI's own collective (bf16/fp8 through a user-defined op) reduces in an order MPI chooses: bound only.
"""

import math

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_sparse, model_time, sparse_config
from nicemu.collectives.schedules.sparse_patterns import block_mask
from nicemu.nic.ops import DTYPES, OPS, divide, is_integer, unit_roundoff
from nicemu.nic.profile import load_profile
from tests.rank_slices import product_or_slice

COMM = MPI.COMM_WORLD
PROFILE = load_profile("directreduce-paper")
TOPOLOGY = f"ring:{max(COMM.size, 4)}"       # 3 ranks: 4 nodes, one rank hosting two
COUNT = 203


def inputs(nodes: int, count: int, dt: np.dtype, op: str, seed: int) -> np.ndarray:
    """The same on every rank: full-range integers; floats well inside the format's range for ``op``."""
    rng = np.random.default_rng(seed)
    if is_integer(dt):
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=(nodes, count), dtype=dt, endpoint=True)
    if op == "prod":        # 0.7**8 and 1.5**8 stay normal and finite in every format
        return (rng.uniform(0.7, 1.5, (nodes, count)) * rng.choice([-1, 1], (nodes, count))).astype(dt)
    return (rng.standard_normal((nodes, count)) * 4).astype(dt)


def reference(x: np.ndarray, op: str) -> tuple[np.ndarray, np.ndarray | float]:
    """(value, bound): in the type for integers (wrapping; avg truncates), float64 and the rounding
    bound of N - 1 operations (N for avg) for floats, plus the float64 reference's own rounding."""
    n = x.shape[0]
    if is_integer(x.dtype):
        acc = OPS[op].reduce(x, axis=0, dtype=x.dtype)
        return (divide(acc, n) if op == "avg" else acc), 0.0
    x64 = x.astype(np.float64)
    u, u64 = unit_roundoff(x.dtype), 2.0 ** -53

    def grow(k: int) -> float:
        return math.expm1(k * math.log1p(u)) + math.expm1(k * math.log1p(u64))   # (1+u)**k - 1, exactly

    if op in ("max", "min"):
        return OPS[op].reduce(x64, axis=0), 0.0
    if op == "prod":
        p = np.prod(x64, axis=0)
        return p, grow(n - 1) * np.abs(p)
    abs_sum = np.abs(x64).sum(axis=0)
    if op == "sum":
        return x64.sum(axis=0), grow(n - 1) * abs_sum
    return x64.sum(axis=0) / n, grow(n) * abs_sum / n      # no quotient here is subnormal


def check(rows: np.ndarray, ref: np.ndarray, bound) -> None:
    for row in np.atleast_2d(rows):
        if is_integer(row.dtype):
            np.testing.assert_array_equal(row, ref)
        else:
            diff = np.abs(row.astype(np.float64) - ref)
            assert np.all(diff <= bound), f"{np.count_nonzero(~(diff <= bound))} elements outside the bound"


#: every type x op at 2 ranks; at 3, 4 and 8 every type with one op in turn, every op at least once
#: (tests/rank_slices.py); the same for OmNICCL's sum and avg
DENSE_CASES = product_or_slice([(n,) for n in DTYPES], [(o,) for o in OPS])
OMNICCL_CASES = product_or_slice([(n,) for n in DTYPES], [("sum",), ("avg",)])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name, op", DENSE_CASES)
def test_dense_algorithms_every_dtype_and_op(name, op):
    dt = DTYPES[name]
    with Emulator(COMM, TOPOLOGY, PROFILE) as emu:
        n = emu.topology.nodes
        x = inputs(n, COUNT, dt, op, seed=n)
        mine = x[emu.node_range.start:emu.node_range.stop]
        ref, bound = reference(x, op)
        out = {}
        for algo in ("ring", "directreduce", "mpi"):
            res = emu.allreduce(mine, op=op, algo=algo)
            out[algo] = np.atleast_2d(res.data)
            assert out[algo].dtype == dt
            check(out[algo], ref, bound)
            if algo != "mpi":
                model = model_time("allreduce", algo, emu.topology, PROFILE, COUNT, name)
                assert res.emulated_us == model.emulated_us and res.wire_bytes == model.wire_bytes
        np.testing.assert_array_equal(out["ring"].view(np.uint8), out["directreduce"].view(np.uint8))
        if is_integer(dt):
            np.testing.assert_array_equal(out["mpi"], out["ring"])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name, op", OMNICCL_CASES)
def test_omniccl_every_dtype(name, op):
    dt, block = DTYPES[name], 8
    with Emulator(COMM, TOPOLOGY, PROFILE) as emu:
        n = emu.topology.nodes
        x = inputs(n, COUNT, dt, op, seed=n + 1)
        keep = np.random.default_rng(n).random((n, -(-COUNT // block))) < 0.4
        x[~np.repeat(keep, block, axis=1)[:, :COUNT]] = 0          # block-sparse: zero blocks skipped
        work = x[emu.node_range.start:emu.node_range.stop].copy()
        t = emu.run_inplace("allreduce", work, op, "omniccl", {"block_size": block})
        ref, bound = reference(x, op)
        check(work, ref, bound)
        ordered = np.zeros(COUNT, dtype=dt)       # node order from a zeroed Tx spot, in the type
        for row in x:
            ordered += row
        if op == "avg":
            ordered = divide(ordered, n)
        for row in work:
            np.testing.assert_array_equal(row.view(np.uint8), ordered.view(np.uint8))
        cfg = sparse_config("omniccl", n, block_size=block)
        assert t.emulated_us == model_sparse(cfg, block_mask(x, block), PROFILE, dt.itemsize).emulated_us
