"""The nccl-tests type and op set: names and aliases, integer avg, the reference bound, and every
(dtype, op) on one process (all nodes in it) against the reference, for every algorithm that takes it."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from mpi4py import MPI

from nicemu import data
from nicemu.collectives import Emulator, model_time
from nicemu.collectives.api.checks import check_dtype, check_dtype_op, check_sparse_call
from nicemu.collectives.schedules.sparse_patterns import block_mask
from nicemu.errors import CollectiveError
from nicemu.nic.ops import ALIASES, DTYPES, OPS, divide, is_integer, unit_roundoff
from nicemu.nic.profile import load_profile
from nicemu.topologies import ring

PROFILE = load_profile("directreduce-paper")
LOW = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
INTS = ("int8", "uint8", "int32", "uint32", "int64", "uint64")


@pytest.mark.parametrize("name", list(DTYPES))
def test_every_name_is_canonical(name):
    assert check_dtype(name).name == name
    assert check_dtype(check_dtype(name)).name == name      # a dtype reads back as itself


@pytest.mark.parametrize("alias, name", [("half", "float16"), ("float", "float32"), ("double", "float64"),
                                         ("f8e4m3", "float8_e4m3fn"), ("f8e5m2", "float8_e5m2")])
def test_nccl_tests_aliases(alias, name):
    assert ALIASES[alias] == name
    assert check_dtype_op(alias, "avg").name == name


def test_ml_dtypes_scalar_types_and_sizes():
    assert check_dtype(ml_dtypes.bfloat16).itemsize == 2
    assert check_dtype(ml_dtypes.float8_e4m3fn).itemsize == 1
    assert check_dtype(ml_dtypes.float8_e5m2).itemsize == 1
    assert [unit_roundoff(DTYPES[n]) for n in LOW] == [2.0 ** -11, 2.0 ** -8, 2.0 ** -4, 2.0 ** -3]


def test_timing_follows_the_item_size():
    """The model reads only itemsize: bf16 times as float16, fp8 as int8 (same bytes on the wire)."""
    count = 1 << 12
    for a, b in (("bfloat16", "float16"), ("float8_e4m3fn", "int8"), ("float8_e5m2", "uint8")):
        ta = model_time("allreduce", "directreduce", ring(8), PROFILE, count, a)
        tb = model_time("allreduce", "directreduce", ring(8), PROFILE, count, b)
        assert ta.emulated_us == tb.emulated_us and ta.wire_bytes == tb.wire_bytes
    t1 = model_time("allreduce", "ring", ring(8), PROFILE, count, "float8_e4m3fn")
    assert t1.wire_bytes == 2 * 7 * count      # 2(p-1) chunks of count/p one-byte elements per node, 8 nodes


def test_sparse_algorithms_take_avg_but_not_prod():
    check_sparse_call("omniccl", "allreduce", "avg")
    with pytest.raises(CollectiveError, match="zero is not the identity of prod"):
        check_sparse_call("omniccl", "allreduce", "prod")


@pytest.mark.parametrize("name", INTS)
def test_integer_avg_is_c_division_of_the_wrapped_sum(name):
    dt = np.dtype(name)
    info = np.iinfo(dt)
    values = [info.min, info.min + 1, -7, -1, 0, 1, 7, info.max]
    x = np.array([v for v in values if info.min <= v <= info.max], dtype=dt)
    for n in (2, 3, 8):
        want = [-(-v // n) if v < 0 else v // n for v in x.tolist()]     # C truncates toward zero
        assert divide(x, n).tolist() == want


def test_integer_references_wrap():
    nodes, count = 8, 34       # uint8: -8 is 248, so the sums wrap modulo 256
    ref, bound = data.reduced_reference(nodes, count, "sum", 1.0, 256, "random", 0, np.dtype("uint8"))
    exact = sum(data.node_input(n, nodes, count, np.dtype(np.int64)) % 256 for n in range(nodes))
    assert bound == 0.0 and exact.max() > 255
    assert ref.dtype == np.uint8 and np.array_equal(ref, exact % 256)


def test_bound_is_the_rounding_of_n_minus_1_additions():
    nodes, count = 8, 17
    dt = DTYPES["float8_e4m3fn"]
    ref, bound = data.reduced_reference(nodes, count, "sum", 1.0, 256, "random", 0, dt)
    abs_sum = sum(np.abs(data.node_input(n, nodes, count, dt).astype(np.float64)) for n in range(nodes))
    np.testing.assert_allclose(bound, ((1 + 2.0 ** -4) ** 7 - 1 + 7 * 2.0 ** -53) * abs_sum, rtol=1e-12)
    result = ref.astype(dt)      # a correctly rounded result is within the bound ...
    assert data.count_wrong(result, ref, bound) == 0
    off = (ref + 1.01 * bound).astype(np.float64)            # ... one just outside it is not
    assert data.count_wrong(off, ref, bound) == count
    assert data.count_wrong(np.full(count, np.nan, dt), ref, bound) == count


def test_prod_inputs_cannot_overflow():
    nodes, count = 64, 17 * 64
    for name in LOW:
        ref, _ = data.reduced_reference(nodes, count, "prod", 1.0, 256, "random", 0, DTYPES[name])
        assert set(np.abs(ref).tolist()) == {2.0}


def _node_order_sum(x: np.ndarray) -> np.ndarray:
    acc = np.zeros_like(x[0])
    for row in x:
        acc += row
    return acc


@pytest.fixture(scope="module")
def emu():
    with Emulator(MPI.COMM_SELF, "ring:8", PROFILE) as e:
        yield e


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("name", list(DTYPES))
def test_every_dtype_and_op_on_one_process(emu, name, op):
    dt, nodes, count = DTYPES[name], 8, 17 * 8 + 3
    x = np.stack([data.node_input(n, nodes, count, dt, op=op) for n in range(nodes)])
    ref, bound = data.reduced_reference(nodes, count, op, 1.0, 256, "random", 0, dt)
    algos = ["ring", "directreduce", "mpi"] + (["omniccl", "omnireduce"] if op in ("sum", "avg") else [])
    out = {}
    for algo in algos:
        res = emu.allreduce(x, op=op, algo=algo)
        assert res.data.dtype == dt
        out[algo] = res.data
        for row in res.data:
            assert data.count_wrong(row, ref, bound) == 0, algo
        if algo in ("ring", "directreduce"):
            assert res.emulated_us == model_time("allreduce", algo, emu.topology, PROFILE, count, name).emulated_us
    # ring and DirectReduce accumulate every chunk in the same order (along the ring): the same bits
    np.testing.assert_array_equal(out["ring"].view(np.uint8), out["directreduce"].view(np.uint8))
    if "omniccl" in out and op == "sum":
        # the aggregator adds the workers' blocks in node order, starting from zero
        want = _node_order_sum(x)
        for row in out["omniccl"]:
            np.testing.assert_array_equal(row.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2", "uint8", "int8"])
def test_zero_blocks_are_found_by_value_in_every_type(name):
    """A block is zero when every element equals zero (-0.0 too); NaN makes it non-zero, so it travels."""
    dt = DTYPES[name]
    x = np.zeros((1, 12), dtype=dt)
    x[0, 5] = 3                      # block 1 of 4-element blocks
    if not is_integer(dt):
        x[0, 0] = -0.0               # block 0: negative zero only, still a zero block
        x[0, 9] = np.nan             # block 2: NaN
    mask = block_mask(x, 4)[0]
    assert mask.tolist() == [False, True, not is_integer(dt)]
