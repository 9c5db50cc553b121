"""Sparse AllReduce on real MPI ranks: correctness cases, and a jittered stress run.

Run by tests/test_mpi_suite.py at 2, 3, 4 and 8 ranks.
"""

import os
import resource

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_sparse, sparse_config
from nicemu.collectives.registry import names
from nicemu.collectives.schedules.sparse_patterns import block_mask
from nicemu.nic.profile import load_profile
from tests.rank_slices import product_or_slice
from tests.sparse_cases import CASES, case_inputs, check_sum

COMM = MPI.COMM_WORLD
PROFILE = load_profile("omniccl-paper")
TOPOLOGIES = [t for t in ("ring:8", f"ring:{max(COMM.size, 2)}", "torus:3x3") if int(
    np.prod([int(k) for k in t.split(":")[1].split("x")])) >= COMM.size]


#: every topology x algorithm x input case x dtype x (count, block) at 2 ranks; at 3, 4 and 8 every
#: (topology, algorithm, input case) with one (dtype, count, block) in turn (tests/rank_slices.py)
SPARSE_CASES = product_or_slice(
    [(t, a, c) for t in dict.fromkeys(TOPOLOGIES) for a in names(kind="sparse") for c in CASES],
    [(d, n, b) for d in ("float32", "int64") for n, b in ((700, 16), (5, 4))])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology, algo, case, dtype, count, block", SPARSE_CASES)
def test_sparse_cases_on_ranks(topology, algo, case, dtype, count, block):
    with Emulator(COMM, topology, PROFILE) as emu:
        n = emu.topology.nodes
        x = case_inputs(case, n, count, block, dtype, seed=count + n)
        work = x[emu.node_range.start:emu.node_range.stop].copy()
        t = emu.run_inplace("allreduce", work, "sum", algo, {"block_size": block, "spot_blocks": 3})
        check_sum(work, x)
        cfg = sparse_config(algo, n, block_size=block, spot_blocks=3)
        model = model_sparse(cfg, block_mask(x, block), PROFILE, x.dtype.itemsize)
        assert t.emulated_us == model.emulated_us
        assert t.wire_bytes == model.wire_bytes and t.framed_bytes == model.framed_bytes
        # omniccl-paper frames its packets (docs/model.md §18): every message that crosses a link pays
        assert (t.framed_bytes > t.wire_bytes) == (t.wire_bytes > 0)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", names(kind="sparse"))
@pytest.mark.parametrize("case", ["dense", "random-sparse"])
def test_sparse_with_host_dram_on_ranks(algo, case):
    """Host DRAM slow enough to bind (docs/model.md §10.5): real data stays exact, and the MPI
    executor's metrics are the model's."""
    prof = load_profile("omniccl-paper", ["host.memory_GBps=3"])
    with Emulator(COMM, "ring:8", prof) as emu:
        n = emu.topology.nodes
        x = case_inputs(case, n, 700, 16, "float32", seed=n)
        work = x[emu.node_range.start:emu.node_range.stop].copy()
        t = emu.run_inplace("allreduce", work, "sum", algo, {"block_size": 16, "spot_blocks": 3})
        check_sum(work, x)
        cfg = sparse_config(algo, n, block_size=16, spot_blocks=3)
        model = model_sparse(cfg, block_mask(x, 16), prof, x.dtype.itemsize)
        assert (t.emulated_us, t.host_busy_us, t.nic_busy_us, t.wire_bytes) == (
            model.emulated_us, model.host_busy_us, model.nic_busy_us, model.wire_bytes)
        assert model.emulated_us > model_sparse(cfg, block_mask(x, 16), PROFILE, x.dtype.itemsize).emulated_us


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("tx_spots", [1, 2])
def test_stress_back_to_back_with_jitter(tx_spots):
    """500 sparse AllReduces, one Rx spot, random sleeps in the protocol: exact, no hang, no growth."""
    if COMM.size != 4 and not os.environ.get("NICEMU_STRESS_ALL"):
        pytest.skip("the stress run happens in the 4-rank pass (NICEMU_STRESS_ALL=1 for every size)")
    iters = int(os.environ.get("NICEMU_STRESS_ITERS", "500"))
    with Emulator(COMM, "ring:8", PROFILE) as emu:
        rng = np.random.default_rng(11)
        count, block = 600, 8
        before = None
        for it in range(iters):
            x = rng.integers(-50, 50, size=(8, count)).astype(np.int32)
            keep = rng.random((8, -(-count // block))) < rng.choice([0.0, 0.05, 0.3, 1.0])
            x *= np.repeat(keep, block, axis=1)[:, :count].astype(np.int32)
            work = x[emu.node_range.start:emu.node_range.stop].copy()
            emu.run_inplace("allreduce", work, "sum", "omniccl",
                            {"block_size": block, "spots": 1, "spot_blocks": 2, "tx_spots": tx_spots},
                            jitter_us=200.0)
            check_sum(work, x)
            if it == 50:
                before = rss_bytes()
        after = rss_bytes()
        growth = (after - before) / before
        assert growth < 0.05, f"resident memory grew by {100 * growth:.1f}% over {iters - 50} calls"
