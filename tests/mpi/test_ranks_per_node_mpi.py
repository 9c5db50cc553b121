"""Several ranks per node (``ranks_per_node``): the hierarchical AllReduce on real MPI ranks.

Every dense algorithm's result against numpy (exact for integers) and MPI's own Allreduce, and its
emulated time and wire bytes equal to the model executor's, with host DRAM and DDIO charged
(directreduce-paper), one rank or several per MPI process, powers of two or not.
"""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_time
from nicemu.errors import CollectiveError
from nicemu.nic.profile import load_profile
from tests.mpi.test_collectives_mpi import inputs, mpi_reference
from tests.rank_slices import product_or_slice

# a small DDIO share and pipeline segment, so that DMA writes spill and ring-pipelined segments
PROFILE = load_profile("directreduce-paper", ["host.ddio_KiB=8", "host.segment_KiB=4"])
COMM = MPI.COMM_WORLD
ALGOS = ["ring", "ring-pipelined", "directreduce", "directreduce-pipelined", "recursive-doubling", "rabenseifner", "tree", "host-best"]


def layouts():
    """(node topology, ranks per node) with at least one rank per MPI process."""
    size = COMM.Get_size()
    out = [(f"ring:{max(size, 2)}", 2), ("switch:3", 3)]
    if size % 2 == 0 and size >= 4:
        out.append((f"ring:{size // 2}", 2))          # one rank per process
    return [(t, p) for t, p in out if _nodes(t) * p >= size]


def _nodes(spec):
    from nicemu.topologies import parse_topology
    return parse_topology(spec).nodes


#: every layout x algorithm x (dtype, op) at 2 ranks; at 3, 4 and 8 every (layout, algorithm) with
#: one (dtype, op) in turn (tests/rank_slices.py)
HIERARCHICAL_CASES = product_or_slice([(t, p, a) for t, p in layouts() for a in ALGOS],
                                      [("int64", "sum"), ("float64", "sum"), ("int32", "max")])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology, per_node, algo, dtype, op", HIERARCHICAL_CASES)
def test_hierarchical_allreduce_on_ranks(topology, per_node, algo, dtype, op):
    count = 6 * 1031                      # shards of 1031 elements: odd chunks inside every rail
    with Emulator(COMM, topology, PROFILE, ranks_per_node=per_node) as emu:
        n = emu.topology.nodes
        assert n == _nodes(topology) * per_node
        x = inputs(n, count, dtype, seed=n + per_node)
        mine = x[emu.node_range.start:emu.node_range.stop]
        res = emu.allreduce(mine, op=op, algo=algo)
        rows = np.atleast_2d(res.data)
        ref = {"sum": np.sum, "max": np.max}[op](x.astype(np.float64), axis=0)
        if np.dtype(dtype).kind == "i":
            want = mpi_reference(mine, op)
            np.testing.assert_array_equal(want, ref.astype(dtype))
            for row in rows:
                np.testing.assert_array_equal(row, want)
        else:
            for row in rows:
                np.testing.assert_allclose(row, ref, rtol=1e-12 * n, atol=1e-12 * n)
        model = model_time("allreduce", algo, topology, PROFILE, count, dtype, ranks_per_node=per_node)
        assert res.emulated_us == model.emulated_us
        assert res.wire_bytes == model.wire_bytes


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", ["ring", "directreduce"])
def test_link_faults_with_ranks_per_node(algo):
    """Drops and corruptions on the rails' links (none between the ranks of a node): exact results, and the
    model's times and fault counts with the same draws."""
    faults = "drop=0.02,corrupt=0.02,seed=5"
    topology = f"ring:{COMM.Get_size()}"
    with Emulator(COMM, topology, PROFILE, faults=faults, ranks_per_node=2) as emu:
        n = emu.topology.nodes
        x = inputs(n, 3 * 1031, "int64", seed=n)
        mine = x[emu.node_range.start:emu.node_range.stop]
        res = emu.allreduce(mine, algo=algo)
        for row in np.atleast_2d(res.data):
            np.testing.assert_array_equal(row, x.sum(axis=0))
        model = model_time("allreduce", algo, topology, PROFILE, 3 * 1031, "int64", faults=faults,
                           ranks_per_node=2)
        assert res.emulated_us == model.emulated_us
        assert res.faults["drops"] + res.faults["corruptions"] > 0
        assert (res.faults["drops"], res.faults["corruptions"]) == (model.faults["drops"], model.faults["corruptions"])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo, collective", [("omniccl", "allreduce"), ("ring", "allgather")])
def test_what_runs_one_rank_per_node_is_refused_on_every_rank(algo, collective):
    with Emulator(COMM, f"ring:{COMM.Get_size()}", PROFILE, ranks_per_node=2) as emu:
        x = np.ones((emu.local_nodes, 64), dtype=np.float32)
        with pytest.raises(CollectiveError, match="one rank per node"):
            emu.run(collective, x, "sum", algo)


NVLINK = PROFILE.with_overrides(["intra_node.nvlink=true", "intra_node.reduce_GBps=900"])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", ["ring", "directreduce", "rabenseifner"])
def test_nvlink_ranks(algo):
    """Ranks of a node on an NVLink-class fabric (docs/model.md §19.5): exact integers, the model's times."""
    topology = f"ring:{max(COMM.Get_size() // 2, 2)}"
    with Emulator(COMM, topology, NVLINK, ranks_per_node=2) as emu:
        n = emu.topology.nodes
        x = inputs(n, 4 * 1031, "int64", seed=n)
        mine = x[emu.node_range.start:emu.node_range.stop]
        res = emu.allreduce(mine, algo=algo)
        for row in np.atleast_2d(res.data):
            np.testing.assert_array_equal(row, x.sum(axis=0))
        model = model_time("allreduce", algo, topology, NVLINK, 4 * 1031, "int64", ranks_per_node=2)
        assert res.emulated_us == model.emulated_us
        assert model.emulated_us != model_time("allreduce", algo, topology, PROFILE, 4 * 1031, "int64",
                                               ranks_per_node=2).emulated_us
