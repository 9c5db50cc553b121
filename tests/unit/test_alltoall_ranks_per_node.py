"""All-to-all with several ranks per node (collectives/schedules/hierarchical_alltoall.py, docs/model.md §13.6).

Real data against a numpy transpose for every dtype, the MPI executor's times equal to the model's,
closed forms under ``ideal`` (host memory, finite DRAM, NVLink), and one rank per node unchanged.
All ranks live in one process here; tests/mpi/test_alltoall_mpi.py runs the same on real ranks.
"""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import CollectiveError, Emulator, build_schedule, model_time
from nicemu.nic.profile import load_profile
from nicemu.topologies import Torus, parse_topology

PAPER = load_profile("directreduce-paper")
IDEAL = load_profile("ideal")
A, BETA = IDEAL.link.latency_us, 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)
DTYPES = ["float32", "float64", "float16", "bfloat16", "int8", "int32", "int64", "uint64"]


def transpose_reference(x: np.ndarray) -> np.ndarray:
    """Block j of row i becomes block i of row j, computed with numpy alone."""
    p, count = x.shape
    return np.ascontiguousarray(x.reshape(p, p, count // p).transpose(1, 0, 2)).reshape(p, count)


def random_rows(n, count, dtype, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=(n, count), dtype=dtype, endpoint=True)
    return rng.standard_normal((n, count)).astype(dtype)


def ranks(spec: str, p: int) -> Torus:
    return Torus.single_node(p) if spec == "node" else parse_topology(spec).with_ranks_per_node(p)


@pytest.mark.parametrize("spec,p", [("ring:3", 2), ("ring:2", 4), ("torus:2x3", 2), ("switch:3", 3),
                                    ("ring:5", 2), ("node", 4)])
@pytest.mark.parametrize("algo", ["ring", "directreduce", "mpi"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_numpy_and_the_model(spec, p, algo, dtype):
    topo = ranks(spec, p)
    n = topo.nodes
    count = n * 3
    x = random_rows(n, count, dtype, seed=n + p)
    with Emulator(MPI.COMM_SELF, topo, PAPER) as emu:
        res = emu.alltoall(x, algo=algo)
    # moving data must not change a single bit, whatever the dtype
    np.testing.assert_array_equal(res.data.view(np.uint8), transpose_reference(x).view(np.uint8))
    if algo == "mpi":
        return
    t = model_time("alltoall", algo, topo, PAPER, count, dtype)
    assert (res.emulated_us, res.wire_bytes, res.host_busy_us) == (t.emulated_us, t.wire_bytes, t.host_busy_us)


def test_rails_carry_every_byte_once_and_nothing_local_on_the_wire():
    """Each rail is the node all-to-all on the rank's whole row: P times its wire bytes."""
    for spec, p in [("ring:4", 2), ("torus:2x3", 4)]:
        nodes = parse_topology(spec)
        count = nodes.nodes * p * 16
        for algo in ("ring", "directreduce"):
            rail = model_time("alltoall", algo, nodes, PAPER, count)
            whole = model_time("alltoall", algo, nodes.with_ranks_per_node(p), PAPER, count)
            assert whole.wire_bytes == p * rail.wire_bytes
    assert model_time("alltoall", "ring", Torus.single_node(4), PAPER, 64).wire_bytes == 0


# ---- closed forms under `ideal` (docs/model.md §13.6) ----------------------------------------

def ideal_host(shape, m):
    return sum((k - 1) * A + (k - 1) / 2 * m * BETA for k in shape)


def ideal_nic(shape, m):
    return sum(A + (k - 1) / 2 * m * BETA for k in shape)


CLOSED = [("ring:2", 2), ("ring:3", 2), ("ring:3", 4), ("ring:4", 4), ("ring:5", 2), ("ring:5", 4),
          ("torus:2x3", 2), ("ring:2", 8), ("switch:3", 3)]


@pytest.mark.parametrize("spec,p", CLOSED)
def test_closed_form_host_memory(spec, p):
    """Without DRAM costs the intra-node copies take no time: the rails' node all-to-all on the row M."""
    topo = parse_topology(spec)
    count = topo.nodes * p * 64 * 1024 // 4     # 64 KiB per rank block: link-bound cut-through
    m = count * 4
    shape = topo.shape
    host = model_time("alltoall", "ring", topo.with_ranks_per_node(p), IDEAL, count).emulated_us
    nic = model_time("alltoall", "directreduce", topo.with_ranks_per_node(p), IDEAL, count).emulated_us
    if topo.switched:      # one hop to the switch and on: the ring over the switch's ports
        shape = (topo.nodes,)
        a = A + IDEAL.switch.latency_us
        assert host == pytest.approx(sum((k - 1) * a + (k - 1) / 2 * m * BETA for k in shape), rel=1e-9)
        return
    assert host == pytest.approx(ideal_host(shape, m), rel=1e-9, abs=0)
    assert nic == pytest.approx(ideal_nic(shape, m), rel=1e-9, abs=0)


def nvlink(bandwidth=450.0, latency=1.9):
    return IDEAL.with_overrides(["intra_node.nvlink=true", f"intra_node.bandwidth_GBps={bandwidth}",
                                 f"intra_node.latency_us={latency}"])


@pytest.mark.parametrize("spec,p", [*CLOSED, ("node", 2), ("node", 8)])
def test_closed_form_nvlink(spec, p):
    """(P-1) pairwise NVLink steps of M/P bytes after the rails: T = T_a2a(N, M) + (P-1)(α_v + (M/P)β_v)."""
    profile = nvlink()
    topo = ranks(spec, p)
    n_nodes = topo.nodes // p
    count = topo.nodes * 64 * 1024 // 4
    m = count * 4
    local = (p - 1) * (1.9 + m / p / (1e3 * 450.0))
    for algo, form in (("ring", ideal_host), ("directreduce", ideal_nic)):
        t = model_time("alltoall", algo, topo, profile, count).emulated_us
        rails = 0.0
        if n_nodes > 1:
            rails = model_time("alltoall", algo, topo.node_topology, profile, count).emulated_us
            if not topo.switched:
                assert rails == pytest.approx(form(topo.node_topology.shape, m), rel=1e-9)
        assert t == pytest.approx(rails + local, rel=1e-9, abs=0)


@pytest.mark.parametrize("spec,p", [("ring:3", 2), ("ring:4", 4), ("ring:5", 4), ("torus:2x3", 2), ("node", 4)])
def test_closed_form_with_dram(spec, p):
    """With DRAM at μ per rank (P/(1e3·memory_GBps)) each intra-node copy reads and writes M/P bytes:
    T = T_a2a(N, M; DRAM and DDIO divided by P) + (P-1)·2(M/P)μ."""
    mem = 50.0
    profile = IDEAL.with_overrides([f"host.memory_GBps={mem}"])
    topo = ranks(spec, p)
    count = topo.nodes * 4096
    m = count * 4
    mu = p / (1e3 * mem)
    local = (p - 1) * 2 * (m / p) * mu
    share = profile.with_overrides([f"host.memory_GBps={mem / p!r}"])
    for algo in ("ring", "directreduce"):
        rails = 0.0 if topo.single else model_time("alltoall", algo, topo.node_topology, share, count).emulated_us
        t = model_time("alltoall", algo, topo, profile, count).emulated_us
        assert t == pytest.approx(rails + local, rel=1e-9, abs=0)


# ---- one rank per node is what it was ---------------------------------------------------------

#: measured on the commit before the hierarchical all-to-all (main at 8b4bfab), bfloat16; directreduce-paper
#: had no packet framing then, so it runs with link.header_bytes=0 here (docs/model.md §7)
AS_RECORDED = {"directreduce-paper": ["link.header_bytes=0"]}
BEFORE = [("ring:8", "ring", "directreduce-paper", 65536, 49.5586, 3670016),
          ("ring:8", "directreduce", "directreduce-paper", 65536, 39.558279999999996, 3670016),
          ("torus:2x3", "ring", "400g-gen5", 24576, 7.285600000000001, 442368),
          ("torus:2x3", "directreduce", "400g-gen5", 24576, 7.180573333333334, 442368),
          ("ring:2", "directreduce", "400g-gen5", 2097152, 45.20989333333333, 4194304)]


@pytest.mark.parametrize("spec,algo,profile,count,emulated_us,wire_bytes", BEFORE)
def test_one_rank_per_node_unchanged(spec, algo, profile, count, emulated_us, wire_bytes):
    t = model_time("alltoall", algo, spec, load_profile(profile, AS_RECORDED.get(profile, [])), count, "bfloat16",
                   ranks_per_node=1)
    assert (t.emulated_us, t.wire_bytes) == (emulated_us, wire_bytes)


# ---- what is refused --------------------------------------------------------------------------

def test_bad_inputs_are_one_line_errors():
    topo = parse_topology("ring:3").with_ranks_per_node(2)
    with pytest.raises(CollectiveError, match="divisible by the 6 ranks .*one equal block per rank"):
        model_time("alltoall", "ring", topo, IDEAL, 10)
    with pytest.raises(CollectiveError, match="omniccl runs with one rank per node.*ring, directreduce\\)"):
        model_time("alltoall", "omniccl", topo, IDEAL, 12)
    with pytest.raises(CollectiveError, match="ring-pipelined does not implement alltoall"):
        build_schedule("alltoall", "ring-pipelined", topo, 12)
    with pytest.raises(CollectiveError, match="allgather runs with one rank per node.*allreduce or alltoall"):
        model_time("allgather", "ring", topo, IDEAL, 12)
