"""NIC memory enforced for DirectReduce on real ranks: data stays right, times equal the model's.

A small ``nic.memory_KiB`` makes every chunk spill (part of it DMA-written to host and read back). On
``ring:R`` and a torus of R nodes (the lean path, ScalarAgent) and on 2R nodes (virtual nodes, NicAgents),
one and both directions, the result must equal MPI's own Allreduce exactly (int32) and the emulated time and
read-back bytes the model executor's, exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_time
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

COMM = MPI.COMM_WORLD


def topologies() -> list[str]:
    size = COMM.Get_size()
    out = [f"ring:{size}", f"ring:{2 * size}"]
    if size == 4:
        out.append("torus:2x2")
    return out


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", topologies())
@pytest.mark.parametrize("bidirectional", ["false", "true"])
def test_spilled_directreduce_is_exact_and_matches_model(topology, bidirectional):
    prof = load_profile("directreduce-paper", ["nic.memory_KiB=3", f"topology.bidirectional={bidirectional}"])
    rng = np.random.default_rng(COMM.rank + 5)
    with Emulator(COMM, topology, prof) as emu:
        count = 4096 * emu.topology.nodes + 3          # 16 KiB chunks, 3 KiB of NIC memory
        x = rng.integers(-10**6, 10**6, size=(emu.local_nodes, count)).astype(np.int32)
        ref = np.empty(count, dtype=np.int32)
        COMM.Allreduce(x.sum(axis=0, dtype=np.int32), ref, op=MPI.SUM)
        want = model_time("allreduce", "directreduce", emu.topology, prof, count, "int32")
        assert want.nic_spill_bytes > 0
        res = emu.allreduce(x if emu.local_nodes > 1 else x[0], algo="directreduce")
        for row in (res.data if emu.local_nodes > 1 else [res.data]):
            np.testing.assert_array_equal(row, ref)
        assert res.emulated_us == want.emulated_us
        assert res.nic_spill_bytes == want.nic_spill_bytes
        for collective in ("reducescatter", "allgather"):
            call = emu.reduce_scatter if collective == "reducescatter" else emu.allgather
            got = call(x if emu.local_nodes > 1 else x[0], algo="directreduce")
            assert got.emulated_us == model_time(collective, "directreduce", emu.topology, prof, count,
                                                 "int32").emulated_us


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology", [t for t in (f"ring:{max(COMM.Get_size(), 3)}", "torus:3x3", "torus:2x3")
                                      if parse_topology(t).nodes >= COMM.Get_size()])
def test_spilled_alltoall_is_exact_and_matches_model(topology):
    """The all-to-all's forwarded bundles and held blocks beyond nic.memory_KiB (docs/model.md §13.7)."""
    prof = load_profile("directreduce-paper", ["nic.memory_KiB=3"])
    with Emulator(COMM, topology, prof) as emu:
        n = emu.topology.nodes
        count = 2048 * n                                # 8 KiB blocks, 3 KiB of NIC memory
        full = np.random.default_rng(n).integers(-10**6, 10**6, size=(n, count)).astype(np.int32)
        lo, hi = emu.node_range.start, emu.node_range.stop
        res = emu.alltoall(full[lo:hi], algo="directreduce")
        want_rows = full.reshape(n, n, -1).transpose(1, 0, 2).reshape(n, count)[lo:hi]
        np.testing.assert_array_equal(np.atleast_2d(res.data), want_rows)
        want = model_time("alltoall", "directreduce", emu.topology, prof, count, "int32")
        assert (res.emulated_us, res.nic_spill_bytes) == (want.emulated_us, want.nic_spill_bytes)
        assert want.nic_spill_bytes > 0
