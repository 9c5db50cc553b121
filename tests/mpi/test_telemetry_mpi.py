"""Telemetry on real MPI ranks: the MPI executor's per-link and per-resource statistics and trace events
equal the model executor's exactly (each rank accounts for its own nodes' resources; the sums are exact)."""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_time
from nicemu.collectives.registry import REGISTRY
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology
from tests.rank_slices import product_or_slice

COMM = MPI.COMM_WORLD
PROFILE = load_profile("directreduce-paper")
ALGOS = ["ring", "directreduce", "ring-pipelined", "recursive-doubling", "rabenseifner", "tree"]
COLUMNS = ("kind", "node", "lane", "start", "end", "bytes", "step", "side")


def topologies():
    size = COMM.Get_size()
    out = [f"ring:{max(size, 2)}", "torus:2x3", "switch:5"]
    return [t for t in dict.fromkeys(out) if parse_topology(t).nodes >= size]


CASES = product_or_slice([(t, a) for t in topologies() for a in ALGOS],
                         [(c,) for c in ("allreduce", "reducescatter", "allgather", "broadcast")])


def same_stats(got, want):
    for name in ("link_bytes", "link_framed", "link_busy_us", "resource_bytes", "resource_busy_us"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.emulated_us == want.emulated_us


def same_events(got, want):
    order_g = np.lexsort([got[c] for c in reversed(COLUMNS)])
    order_w = np.lexsort([want[c] for c in reversed(COLUMNS)])
    for c in COLUMNS:
        np.testing.assert_array_equal(np.asarray(got[c])[order_g], np.asarray(want[c])[order_w], err_msg=c)
    assert got["steps"] == want["steps"]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("topology, algo, collective", CASES)
def test_mpi_telemetry_equals_the_model(topology, algo, collective):
    if collective not in REGISTRY[algo].collectives:
        pytest.skip(f"{algo} does not run {collective}")
    count = 999
    with Emulator(COMM, topology, PROFILE, trace_nodes="0,1") as emu:
        x = np.ones((emu.local_nodes, count), dtype=np.float32)
        res = emu.run(collective, x, "sum", algo)
        want = model_time(collective, algo, topology, PROFILE, count, trace_nodes="0,1")
        assert res.emulated_us == want.emulated_us and res.wire_bytes == want.wire_bytes
        same_stats(res.telemetry, want.telemetry)
        same_events(res.telemetry.events, want.telemetry.events)
        assert int(res.telemetry.link_bytes.sum()) == res.wire_bytes


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("what", ["faults", "ranks_per_node", "alltoall", "second_call"])
def test_mpi_telemetry_other_paths(what):
    size = COMM.Get_size()
    topo, kw, collective, count = f"ring:{max(size, 2)}", {}, "allreduce", 1200
    model_kw = {}
    if what == "faults":
        kw = model_kw = {"faults": "drop=2e-3,corrupt=1e-3,seed=5"}
    elif what == "ranks_per_node":
        topo = f"ring:{max((size + 1) // 2, 2)}"
        kw = model_kw = {"ranks_per_node": 2}
    elif what == "alltoall":
        collective = "alltoall"
        count = parse_topology(topo).nodes * 50
    with Emulator(COMM, topo, PROFILE, telemetry=True, **kw) as emu:
        x = np.ones((emu.local_nodes, count), dtype=np.float32)
        res = emu.run(collective, x, "sum", "ring", call=0)
        if what == "second_call":      # the statistics are per call, not accumulated
            res = emu.run(collective, x, "sum", "directreduce", call=1)
        algo = "directreduce" if what == "second_call" else "ring"
        want = model_time(collective, algo, topo, PROFILE, count, telemetry=True,
                          call=1 if what == "second_call" else 0, **model_kw)
        same_stats(res.telemetry, want.telemetry)
        assert res.telemetry.events is None
        assert int(res.telemetry.link_bytes.sum()) == res.wire_bytes
