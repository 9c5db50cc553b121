"""Hypothesis strategies, inputs and references for the property tests (unit and MPI suites).

A drawn case is plain data (topology shape, count, dtype, op, algorithm, profile
knobs, a seed); the inputs follow from it with numpy's seeded generator, so every
MPI rank rebuilds the same inputs and reference without communicating.

References are computed independently of nicemu:

* integer sums with Python's unbounded integers, wrapped to the dtype's width
  (two's complement, as a NIC's or CPU's fixed-width adder does);
* min and max exactly in the input dtype (they never round);
* floating-point sums in float64, compared with the error bound of any
  summation order: each of the ``n - 1`` additions in the input dtype rounds with
  relative error at most ``u`` (half the dtype's epsilon; additions that underflow
  are exact), so ``|result - exact| <= gamma(n-1) * sum_i |x_i|`` with
  ``gamma(k) = k u / (1 - k u)`` (Higham, *Accuracy and Stability of Numerical
  Algorithms*, 2nd ed., §4.2). The float64 reference adds its own
  ``gamma(n-1)`` at ``u = 2**-53``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

from nicemu.collectives.registry import names
from nicemu.nic.ops import OPS

#: the types and ops drawn here (the original set, so the drawn examples stay the same); the nccl-tests
#: additions (bf16, fp8, 8-bit and unsigned integers, prod, avg) are checked in test_dtypes_ops.py and
#: tests/mpi/test_dtypes_mpi.py
DTYPES = ("float16", "float32", "float64", "int32", "int64")
DRAWN_OPS = ("max", "min", "sum")

MAX_NODES = 64           # cap on drawn topologies: keeps one example in the milliseconds
MAX_DIMS = 6
DIM_SIZES = (2, 5)       # nodes per dimension, as in issue 6
DENSE_ALGOS = ("ring", "ring-pipelined", "directreduce", "directreduce-pipelined", "mpi")
SPARSE_ALGOS = tuple(names(kind="sparse"))
COLLECTIVES = ("allreduce", "reducescatter", "allgather", "alltoall")
PROFILES = ("directreduce-paper", "ideal", "omniccl-paper")
MAX_SPARSE_BLOCKS = 32


def examples(default: int) -> int:
    """Example count: ``$NICEMU_PROPERTY_EXAMPLES`` raises it for long runs."""
    return max(default, int(os.environ.get("NICEMU_PROPERTY_EXAMPLES", "0")))


def property_settings(default_examples: int) -> settings:
    """Deterministic, deadline-free settings: CI stays reproducible on a loaded machine.

    ``derandomize`` fixes the example sequence (every MPI rank draws the same ones);
    ``database=None`` keeps hypothesis from replaying examples saved by other runs;
    the health checks are timing-based, so they are off (they could fire on one rank only).
    """
    return settings(max_examples=examples(default_examples), deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck), print_blob=False)


@st.composite
def torus_shapes(draw, max_nodes: int = MAX_NODES, min_nodes: int = 2) -> tuple[int, ...]:
    """1 to 6 dimensions of 2 to 5 nodes, at most ``max_nodes`` and at least ``min_nodes`` in all."""
    lo, hi = DIM_SIZES
    max_dims = min(MAX_DIMS, int(math.log2(max_nodes)))
    ndim = draw(st.integers(1, max_dims))
    shape: list[int] = []
    for i in range(ndim):
        rest = ndim - i - 1                       # dimensions still to come, each >= 2 nodes
        room = max_nodes // (math.prod(shape) * lo ** rest)
        shape.append(draw(st.integers(lo, max(lo, min(hi, room)))))
    assume(math.prod(shape) >= min_nodes)          # e.g. no ring:2 for 3 ranks
    return tuple(shape)


def spec_of(shape: tuple[int, ...]) -> str:
    return f"ring:{shape[0]}" if len(shape) == 1 else "torus:" + "x".join(map(str, shape))


def counts(nodes: int, max_count: int = 3000) -> st.SearchStrategy[int]:
    """Element counts up to ``max_count``: tiny (below the node count), multiples of it and one
    off, and any."""
    multiples = max(1, min(40, max_count // nodes))
    return st.one_of(
        st.integers(1, max(1, min(nodes - 1, max_count))),
        st.integers(1, multiples).flatmap(lambda k: st.sampled_from([k * nodes - 1, k * nodes, k * nodes + 1])
                                          ).filter(lambda c: 1 <= c <= max_count),
        st.integers(1, max_count),
    )


@dataclass(frozen=True)
class Values:
    """How input values are drawn: ``scale`` picks their magnitude, ``zeros`` a share of exact zeros."""

    seed: int
    scale: str          # "small", "wide" (integers: the dtype's full range; floats: mixed exponents)
    zeros: float


values_strategy = st.builds(Values, st.integers(0, 2**32 - 1), st.sampled_from(["small", "wide"]),
                            st.sampled_from([0.0, 0.0, 0.3]))


def make_inputs(v: Values, nodes: int, count: int, dtype: str) -> np.ndarray:
    """(nodes, count) inputs in ``dtype``; float magnitudes stay far from overflow (float16: 65504)."""
    rng = np.random.default_rng(v.seed)
    dt = np.dtype(dtype)
    if dt.kind == "i":
        info = np.iinfo(dt)
        lo, hi = (-1000, 1000) if v.scale == "small" else (int(info.min), int(info.max))
        x = rng.integers(lo, hi, size=(nodes, count), dtype=dt, endpoint=True)
    else:
        mant = rng.standard_normal((nodes, count))
        if v.scale == "wide":   # exponents from 1e-4 to 1e2 (1e2 * 64 nodes * 4 sigma << 65504)
            mant *= 10.0 ** rng.integers(-4, 3, size=(nodes, count))
        x = mant.astype(dt)
    if v.zeros:
        x[rng.random((nodes, count)) < v.zeros] = 0
    return x


def _wrap(total: int, dt: np.dtype) -> int:
    bits = 8 * dt.itemsize
    return (total + 2 ** (bits - 1)) % 2 ** bits - 2 ** (bits - 1)


def reduce_reference(x: np.ndarray, op: str) -> np.ndarray:
    """The reduction over the node axis, computed without nicemu (see the module docstring)."""
    if op in ("max", "min"):
        return OPS[op].reduce(x, axis=0)
    if x.dtype.kind == "i":
        cols = [sum(int(v) for v in col) for col in x.T.tolist()] if x.size else []
        return np.array([_wrap(s, x.dtype) for s in cols], dtype=x.dtype)
    return x.astype(np.float64).sum(axis=0)


def assert_reduced(result: np.ndarray, x: np.ndarray, op: str, ref: np.ndarray | None = None) -> None:
    """``result`` (one node's row) equals the reduction of ``x``; floats within the summation bound."""
    ref = reduce_reference(x, op) if ref is None else ref
    assert result.dtype == x.dtype, f"result dtype {result.dtype}, inputs {x.dtype}"
    if op != "sum" or x.dtype.kind == "i":
        np.testing.assert_array_equal(result, ref)
        return
    n = x.shape[0]
    k = max(n - 1, 1)
    gamma = lambda u: k * u / (1 - k * u)  # noqa: E731
    bound = (gamma(np.finfo(x.dtype).eps / 2) + gamma(2.0 ** -53)) * np.abs(x.astype(np.float64)).sum(axis=0)
    err = np.abs(result.astype(np.float64) - ref)
    bad = ~(err <= bound)
    assert not bad.any(), (f"{int(bad.sum())} of {bad.size} elements outside the summation bound; first at "
                           f"{int(np.argmax(bad))}: got {result[bad][0]!r}, exact {ref[bad][0]!r}, "
                           f"bound {bound[bad][0]:.3g}")


def assert_collective(collective: str, rows: np.ndarray | list, nodes: range, x: np.ndarray, op: str,
                      seg_off: np.ndarray, seg_cnt: np.ndarray) -> None:
    """Check every local node's output of ``collective`` against ``x`` (all nodes' inputs)."""
    if collective == "alltoall":      # block j of node i's row becomes block i of node j's row
        b = x.shape[1] // x.shape[0]
        for row, node in zip(rows, nodes):
            np.testing.assert_array_equal(row, x[:, node * b:(node + 1) * b].reshape(-1))
        return
    if collective == "allgather":
        expect = np.concatenate([x[i, seg_off[i]:seg_off[i] + seg_cnt[i]] for i in range(x.shape[0])])
        for row in rows:
            np.testing.assert_array_equal(row, expect)
        return
    ref = reduce_reference(x, op)
    for row, node in zip(rows, nodes):
        if collective == "reducescatter":
            lo, hi = seg_off[node], seg_off[node] + seg_cnt[node]
            assert len(row) == seg_cnt[node], f"node {node} got {len(row)} elements, owns {seg_cnt[node]}"
            assert_reduced(row, x[:, lo:hi], op, ref[lo:hi])
        else:
            assert_reduced(row, x, op, ref)


@dataclass(frozen=True)
class DenseCase:
    shape: tuple[int, ...]
    count: int
    dtype: str
    op: str
    algo: str
    collective: str
    profile: str
    packet_bytes: int
    bidirectional: bool
    values: Values
    segment_KiB: float = 1024.0    # the pipelined rings' segment (cap); small ones give many segments per chunk

    @property
    def overrides(self) -> tuple[str, ...]:
        return (f"nic.packet_bytes={self.packet_bytes}", f"topology.bidirectional={str(self.bidirectional).lower()}",
                f"host.segment_KiB={self.segment_KiB!r}")


@st.composite
def dense_cases(draw, max_nodes: int = MAX_NODES, min_nodes: int = 2,
                algos: tuple[str, ...] = DENSE_ALGOS) -> DenseCase:
    shape = draw(torus_shapes(max_nodes, min_nodes))
    nodes = math.prod(shape)
    algo = draw(st.sampled_from(algos))
    collective = draw(st.sampled_from(COLLECTIVES if not algo.endswith("-pipelined") else COLLECTIVES[:3]))
    if collective == "alltoall":      # one equal block per node
        count = nodes * draw(st.integers(1, max(1, 3000 // nodes)))
    else:
        count = draw(counts(nodes))
    return DenseCase(shape, count, draw(st.sampled_from(sorted(DTYPES))),
                     draw(st.sampled_from(DRAWN_OPS)), algo,
                     collective, draw(st.sampled_from(PROFILES)),
                     draw(st.sampled_from([64, 1024, 4096])), draw(st.booleans()), draw(values_strategy),
                     draw(st.sampled_from([0.25, 4.0, 1024.0])))


@dataclass(frozen=True)
class SparseCase:
    shape: tuple[int, ...]
    count: int
    dtype: str
    algo: str
    density: float
    block_size: int
    aggregators: int | None
    spots: int | None
    spot_blocks: int | None
    tx_spots: int | None
    seed: int

    @property
    def options(self) -> dict:
        return {"block_size": self.block_size, "aggregators": self.aggregators, "spots": self.spots,
                "spot_blocks": self.spot_blocks, "tx_spots": self.tx_spots}


@st.composite
def sparse_cases(draw, max_nodes: int = MAX_NODES, min_nodes: int = 2) -> SparseCase:
    shape = draw(torus_shapes(max_nodes, min_nodes))
    nodes = math.prod(shape)
    block = draw(st.sampled_from([1, 3, 8, 64, 256]))
    # at most MAX_SPARSE_BLOCKS blocks: the protocol runs a round per window, and one
    # process plays every node, so many small blocks on 64 nodes would take seconds
    count = draw(counts(nodes, min(3000, MAX_SPARSE_BLOCKS * block)))
    return SparseCase(
        shape, count, draw(st.sampled_from(sorted(DTYPES))), draw(st.sampled_from(SPARSE_ALGOS)),
        draw(st.sampled_from([0.0, 0.01, 0.1, 0.3, 0.7, 1.0])), block,
        draw(st.none() | st.integers(1, nodes)), draw(st.none() | st.integers(1, 4)),
        draw(st.none() | st.integers(1, 8)), draw(st.none() | st.sampled_from([1, 2])),
        draw(st.integers(0, 2**32 - 1)))


def sparse_inputs(c: SparseCase, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, block masks): each node keeps each block with probability ``density``; kept
    blocks hold non-zero values (so the mask is known without looking at the data)."""
    rng = np.random.default_rng(c.seed)
    nblocks = -(-c.count // c.block_size)
    masks = rng.random((nodes, nblocks)) < c.density
    dt = np.dtype(c.dtype)
    if dt.kind == "i":
        info = np.iinfo(dt)
        vals = rng.integers(1, int(info.max), size=(nodes, c.count), dtype=dt, endpoint=True)
        vals *= rng.choice(np.array([-1, 1], dtype=dt), size=(nodes, c.count))
    else:
        vals = (rng.uniform(0.5, 2.0, (nodes, c.count)) * rng.choice([-1.0, 1.0], (nodes, c.count))).astype(dt)
    keep = np.repeat(masks, c.block_size, axis=1)[:, :c.count]
    return np.where(keep, vals, np.zeros((), dt)), masks


@dataclass(frozen=True)
class FaultCase:
    """A dense or sparse AllReduce-family call under link faults and stragglers."""

    shape: tuple[int, ...]
    count: int
    dtype: str
    algo: str
    collective: str
    drop: float
    corrupt: float
    seed: int
    one_link: bool           # faults only on the directed link 0->1 (neighbours on every ring/torus)
    straggler: tuple[int, float] | None
    call: int
    values: Values

    @property
    def faults(self) -> str:
        return f"drop={self.drop},corrupt={self.corrupt},seed={self.seed}" + (",link=0->1" if self.one_link else "")

    @property
    def stragglers(self) -> str | None:
        return None if self.straggler is None else f"{self.straggler[0]}:{self.straggler[1]}"


@st.composite
def fault_cases(draw, max_nodes: int = 32, min_nodes: int = 2) -> FaultCase:
    shape = draw(torus_shapes(max_nodes, min_nodes))
    nodes = math.prod(shape)
    algo = draw(st.sampled_from(tuple(names(emulated=True, link_faults=True))))
    collective = "allreduce" if algo in SPARSE_ALGOS else draw(st.sampled_from(COLLECTIVES[:3]))
    return FaultCase(
        shape, draw(counts(nodes, 2000)), draw(st.sampled_from(sorted(DTYPES))), algo, collective,
        draw(st.sampled_from([0.0, 1e-3, 0.05, 0.3])), draw(st.sampled_from([0.0, 1e-3, 0.05, 0.3])),
        draw(st.integers(0, 2**31)), draw(st.booleans()),
        draw(st.none() | st.tuples(st.integers(0, nodes - 1), st.sampled_from([1.0, 1.5, 4.0]))),
        draw(st.integers(0, 5)), draw(values_strategy))
