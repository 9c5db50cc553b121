"""directreduce-pipelined on real MPI ranks (mpiexec -n N python -m pytest --with-mpi
tests/mpi/test_directreduce_pipelined_mpi.py).

Segments are made small (``host.segment_KiB`` caps the NIC's segment) so that small vectors already cut
every chunk into several segments, and a wavefront group holds several segments per node, several ring
steps, and on rings the reduce-scatter to allgather boundary. Results are checked against numpy (float64
or exact integers) and emulated times against the model executor, bit for bit, whatever the node-to-rank
mapping; one case shrinks NIC memory so that segments are read back over PCIe.
"""

import numpy as np
import pytest
from mpi4py import MPI
from test_collectives_mpi import inputs
from test_dtypes_mpi import COUNT, check, reference
from test_dtypes_mpi import inputs as typed_inputs

from nicemu.collectives import Emulator, model_time
from nicemu.nic.ops import DTYPES, OPS
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology
from tests.rank_slices import product_or_slice

COMM = MPI.COMM_WORLD
ALGO = "directreduce-pipelined"


def topologies():
    size = COMM.Get_size()
    out = [f"ring:{max(size, 2)}", "ring:8", "torus:3x3", "torus:2x2x2"]
    return [t for t in dict.fromkeys(out) if parse_topology(t).nodes >= size]


def profile(topology, count, itemsize, bidirectional=False, S=3, extra=()):
    """Segments that cut the first dimension's largest chunk into about ``S``."""
    k = parse_topology(topology).shape[0]
    seg_bytes = -(-count // (k * S)) * itemsize
    return load_profile("directreduce-paper", [f"host.segment_KiB={seg_bytes / 1024!r}",
                                               f"topology.bidirectional={str(bidirectional).lower()}", *extra])


def _agree(res, collective, topology, prof, count, dtype, op="sum"):
    model = model_time(collective, ALGO, topology, prof, count, dtype)
    assert res.emulated_us == model.emulated_us
    assert res.nic_busy_us == model.nic_busy_us
    assert res.wire_bytes == model.wire_bytes
    assert res.host_busy_us == 0.0
    return model


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", topologies())
@pytest.mark.parametrize("dtype", ["float32", "int64"])
@pytest.mark.parametrize("count", [1001, 5])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_allreduce_matches_numpy_and_model(topology, dtype, count, bidirectional):
    prof = profile(topology, count, np.dtype(dtype).itemsize, bidirectional)
    with Emulator(COMM, topology, prof) as emu:
        n = emu.topology.nodes
        x = inputs(n, count, dtype, seed=count + n)
        lo, hi = emu.node_range.start, emu.node_range.stop
        res = emu.allreduce(x[lo:hi], algo=ALGO)
        ref = x.astype(np.float64).sum(axis=0)
        for row in np.atleast_2d(res.data):
            if np.dtype(dtype).kind == "i":
                np.testing.assert_array_equal(row, x.sum(axis=0))
            else:
                np.testing.assert_allclose(row.astype(np.float64), ref, rtol=1e-5 * n, atol=1e-5 * n)
        _agree(res, "allreduce", emu.topology, prof, count, dtype)
        assert res.wire_bytes == model_time("allreduce", "directreduce", emu.topology, prof, count,
                                            dtype).wire_bytes


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", topologies())
@pytest.mark.parametrize("bidirectional", [False, True])
def test_reduce_scatter_and_allgather(topology, bidirectional):
    count = 1003
    prof = profile(topology, count, 8, bidirectional, S=4)
    with Emulator(COMM, topology, prof) as emu:
        n = emu.topology.nodes
        x = inputs(n, count, "int64", seed=3)
        lo, hi = emu.node_range.start, emu.node_range.stop
        off, cnt = emu.segments(count)
        rs = emu.reduce_scatter(x[lo:hi], algo=ALGO)
        ref = x.sum(axis=0)
        segs = rs.data if isinstance(rs.data, list) else [rs.data]
        for i, seg in zip(range(lo, hi), segs):
            np.testing.assert_array_equal(seg, ref[off[i]:off[i] + cnt[i]])
        ag = emu.allgather(x[lo:hi], algo=ALGO)
        expect = np.concatenate([x[i, off[i]:off[i] + cnt[i]] for i in range(n)])
        for row in np.atleast_2d(ag.data):
            np.testing.assert_array_equal(row, expect)
        _agree(rs, "reducescatter", emu.topology, prof, count, "int64")
        _agree(ag, "allgather", emu.topology, prof, count, "int64")


@pytest.mark.mpi(min_size=2)
def test_segments_read_back_when_nic_memory_is_small():
    """A 256-byte NIC with 64-byte packets: segments overflow their share and are read back over PCIe;
    the data and the read-back bytes are the model's."""
    topology, count = f"ring:{max(COMM.size, 5)}", 2003
    prof = profile(topology, count, 4, S=5, extra=("nic.packet_bytes=64", "nic.memory_KiB=0.25"))
    with Emulator(COMM, topology, prof) as emu:
        n = emu.topology.nodes
        x = inputs(n, count, "int32", seed=11)
        res = emu.allreduce(x[emu.node_range.start:emu.node_range.stop], algo=ALGO)
        for row in np.atleast_2d(res.data):
            np.testing.assert_array_equal(row, x.sum(axis=0))
        model = _agree(res, "allreduce", emu.topology, prof, count, "int32")
        assert res.nic_spill_bytes == model.nic_spill_bytes > 0


#: every type x op at 2 ranks; at 3, 4 and 8 every type with one op in turn (tests/rank_slices.py)
CASES = product_or_slice([(n,) for n in DTYPES], [(o,) for o in OPS])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("name, op", CASES)
def test_every_dtype_and_op(name, op):
    dt = DTYPES[name]
    topology = f"ring:{max(COMM.size, 5)}"
    prof = load_profile("directreduce-paper", ["host.segment_KiB=0.0625"])    # several segments per chunk
    with Emulator(COMM, topology, prof) as emu:
        n = emu.topology.nodes
        x = typed_inputs(n, COUNT, dt, op, seed=n + 5)
        ref, bound = reference(x, op)
        res = emu.allreduce(x[emu.node_range.start:emu.node_range.stop], op=op, algo=ALGO)
        assert np.atleast_2d(res.data).dtype == dt
        check(np.atleast_2d(res.data), ref, bound)
        assert res.emulated_us == model_time("allreduce", ALGO, emu.topology, prof, COUNT, name).emulated_us


@pytest.mark.mpi(min_size=2)
def test_ring_closed_form_on_ranks():
    """ring:N under `ideal` with every chunk S whole segments: the closed form of docs/model.md §4.6."""
    p = max(COMM.Get_size(), 2)
    prof = load_profile("ideal", ["host.segment_KiB=1"])          # 256 float32 elements
    a, b = 1.0, 1 / 12.5e3
    with Emulator(COMM, f"ring:{p}", prof) as emu:
        for S in (1, 4):
            count = p * S * 256
            x = np.ones((emu.local_nodes, count), dtype=np.float32)
            res = emu.allreduce(x, algo=ALGO)
            expected = (2 * (p - 1) + S - 1) * a + 2 * (p - 1) * S * 1024 * b
            assert res.emulated_us == pytest.approx(expected, rel=1e-9)
            assert (np.atleast_2d(res.data) == p).all()
