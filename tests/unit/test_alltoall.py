"""AllToAll (collectives/schedules/alltoall.py): data against numpy, closed forms, and the NIC-vs-host finding.

All nodes live in one process here; tests/mpi/test_alltoall_mpi.py runs the same
checks on real ranks.
"""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import CollectiveError, Emulator, build_schedule, model_time
from nicemu.collectives.registry import names
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

PAPER = load_profile("directreduce-paper")
#: the closed forms of docs/model.md §13.5 leave host DRAM out (§19): the profile without it
PAPER_NO_DRAM = PAPER.with_overrides(["host.memory_GBps=.inf"])
IDEAL = load_profile("ideal")
TOPOLOGIES = ["ring:2", "ring:5", "ring:8", "torus:2x3", "torus:3x3", "torus:2x2x2", "torus:3x2x4"]
DTYPES = ["float32", "float64", "float16", "int32", "int64"]


def transpose_reference(x: np.ndarray) -> np.ndarray:
    """Block j of row i becomes block i of row j, computed with numpy alone."""
    p, count = x.shape
    return np.ascontiguousarray(x.reshape(p, p, count // p).transpose(1, 0, 2)).reshape(p, count)


def random_rows(p, count, dtype, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-10**6, 10**6, size=(p, count)).astype(dtype)
    return rng.standard_normal((p, count)).astype(dtype)


@pytest.fixture(scope="module", params=TOPOLOGIES)
def emu(request):
    with Emulator(MPI.COMM_SELF, request.param, PAPER) as e:
        yield e


@pytest.mark.parametrize("algo", ["ring", "directreduce", "mpi"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocks", [1, 7])
def test_alltoall_matches_numpy_transpose(emu, algo, dtype, blocks):
    p = emu.topology.nodes
    count = p * blocks
    x = random_rows(p, count, dtype, seed=p + blocks)
    before = x.copy()
    res = emu.alltoall(x, algo=algo)
    # moving data must not change a single bit, whatever the dtype
    np.testing.assert_array_equal(res.data.view(np.uint8), transpose_reference(x).view(np.uint8))
    np.testing.assert_array_equal(x, before)
    if algo == "mpi":
        assert res.emulated_us is None
        return
    t = model_time("alltoall", algo, emu.topology, PAPER, count, dtype)
    assert res.emulated_us == t.emulated_us            # bit-identical to the model executor
    assert res.wire_bytes == t.wire_bytes
    assert res.host_busy_us == t.host_busy_us and res.nic_busy_us == t.nic_busy_us


def test_run_inplace_leaves_output_in_work(emu):
    p = emu.topology.nodes
    x = random_rows(p, 3 * p, "int32", seed=5)
    work = x.copy()
    for algo in ("directreduce", "ring"):
        emu.run_inplace("alltoall", work, "sum", algo)
        np.testing.assert_array_equal(work, transpose_reference(x))
        work[:] = x
    emu.run_inplace("alltoall", work, "max", "mpi")     # op is ignored
    np.testing.assert_array_equal(work, transpose_reference(x))


def test_wire_bytes_are_the_ring_bundles():
    """Dimension d moves ((k_d-1)/2)·M per link: Σ_d p·(k_d-1)/2·M bytes in all."""
    for spec in ["ring:8", "torus:3x4", "torus:2x2x2"]:
        topo = parse_topology(spec)
        count = topo.nodes * 5
        m = count * 4
        expect = sum(topo.nodes * (k - 1) * m // 2 for k in topo.shape)
        for algo in ("ring", "directreduce"):
            assert model_time("alltoall", algo, topo, PAPER, count).wire_bytes == expect


# ---- closed forms under `ideal` (docs/model.md §13) -----------------------------------------

def ideal_host(topo, m):
    """Store-and-forward: every hop pays α and its whole bundle's serialisation."""
    a, beta = IDEAL.link.latency_us, 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)
    return sum((k - 1) * a + (k - 1) / 2 * m * beta for k in topo.shape)


def ideal_nic(topo, m):
    """Cut-through, link-bound: one α per dimension, the links never idle; and one more α for every bundle
    that does not fit in NIC memory, which waits to be written to and read back from host memory (§13.7)."""
    a, beta = IDEAL.link.latency_us, 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)
    budget = IDEAL.nic.memory_KiB * 1024
    spills = sum(1 for k in topo.shape for s in range(1, k - 1) if (k - 1 - s) * m // k > budget)
    return sum(a + (k - 1) / 2 * m * beta for k in topo.shape) + spills * a


@pytest.mark.parametrize("spec", ["ring:2", "ring:3", "ring:4", "ring:8", "torus:3x3", "torus:2x3"])
@pytest.mark.parametrize("block_bytes", [32 * 1024, 64 * 1024, 1 << 20])
def test_closed_forms_under_ideal(spec, block_bytes):
    topo = parse_topology(spec)
    count = topo.nodes * block_bytes // 4
    m = count * 4
    a, beta = IDEAL.link.latency_us, 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)
    # the link-bound condition of the cut-through form: a super-block outlasts a packet plus α
    assert all(k == 2 or m // k >= IDEAL.nic.packet_bytes + a / beta for k in topo.shape)
    host = model_time("alltoall", "ring", topo, IDEAL, count).emulated_us
    nic = model_time("alltoall", "directreduce", topo, IDEAL, count).emulated_us
    assert host == pytest.approx(ideal_host(topo, m), rel=1e-9, abs=0)
    assert nic == pytest.approx(ideal_nic(topo, m), rel=1e-9, abs=0)
    # store-and-forward pays the link latency once per hop, cut-through once per dimension (when it fits)
    if all((k - 2) * m // k <= IDEAL.nic.memory_KiB * 1024 for k in topo.shape):
        assert host - nic == pytest.approx(sum(k - 2 for k in topo.shape) * a, rel=1e-9)


@pytest.mark.parametrize("spec", ["ring:3", "ring:8", "torus:3x3"])
def test_host_form_holds_at_any_size_and_one_packet_gives_no_cut_through(spec):
    topo = parse_topology(spec)
    for blocks in (1, 5, 40):
        count = topo.nodes * blocks
        m = count * 4
        host = model_time("alltoall", "ring", topo, IDEAL, count).emulated_us
        assert host == pytest.approx(ideal_host(topo, m), rel=1e-9, abs=0)
        if all((k - 1) * m // k <= IDEAL.nic.packet_bytes for k in topo.shape):
            # every bundle is one packet: there is nothing to forward early
            assert model_time("alltoall", "directreduce", topo, IDEAL, count).emulated_us == \
                pytest.approx(host, rel=1e-9)


# ---- the finding: the NIC variant beats the host variant -------------------------------------

@pytest.mark.parametrize("spec", ["ring:8", "torus:3x3", "torus:4x4"])
def test_nic_variant_is_faster_than_host_variant_for_large_messages(spec):
    """directreduce-paper, M from 64 KiB to 4 MiB (every bundle fits in the NIC's 4 MiB): the NIC variant
    saves the per-hop PCIe, host and link-latency costs. Both are link-bound for large M, so the relative
    gain shrinks. At 256 MiB no forwarded bundle fits: every hop goes through host memory (§13.7) and the
    two variants differ by the NIC's steering latency against the host's notification, under 0.01%."""
    topo = parse_topology(spec)
    gains = []
    for m in (1 << 16, 1 << 20, 1 << 22):
        count = m // 4 - (m // 4) % topo.nodes
        host = model_time("alltoall", "ring", topo, PAPER, count).emulated_us
        nic = model_time("alltoall", "directreduce", topo, PAPER, count)
        assert nic.emulated_us < host and nic.nic_spill_bytes == 0
        gains.append(1 - nic.emulated_us / host)
    assert gains == sorted(gains, reverse=True)          # absolute saving fixed, M grows
    count = (1 << 26) - (1 << 26) % topo.nodes
    host = model_time("alltoall", "ring", topo, PAPER, count).emulated_us
    nic = model_time("alltoall", "directreduce", topo, PAPER, count)
    assert nic.nic_spill_bytes > 0 and nic.emulated_us == pytest.approx(host, rel=1e-4)


def test_nic_variant_keeps_the_host_out_of_the_path():
    topo = parse_topology("ring:8")
    count = 8 * 1024
    assert model_time("alltoall", "directreduce", topo, PAPER, count).host_busy_us == 0.0
    host = model_time("alltoall", "ring", topo, PAPER, count)
    assert host.host_busy_us == pytest.approx(7 * PAPER.host.overhead_us)   # one note per hop


# ---- errors and the schedule ------------------------------------------------------------------

def test_count_not_divisible_is_a_clear_error(emu):
    p = emu.topology.nodes
    with pytest.raises(CollectiveError, match=f"divisible by the {p} nodes.*multiple of {p}"):
        emu.alltoall(np.zeros((p, p + 1), dtype=np.float32))
    with pytest.raises(CollectiveError, match="divisible"):
        model_time("alltoall", "ring", emu.topology, PAPER, p + 1)


@pytest.mark.parametrize("algo", tuple(names(kind="sparse")))
def test_sparse_algorithms_refuse_alltoall(algo):
    topo = parse_topology("ring:4")
    with pytest.raises(CollectiveError, match=f"{algo} implements AllReduce only"):
        build_schedule("alltoall", algo, topo, 8)
    with Emulator(MPI.COMM_SELF, topo, PAPER) as e:
        with pytest.raises(CollectiveError, match="AllReduce only"):
            e.alltoall(np.zeros((4, 8), dtype=np.float32), algo=algo)


def test_schedule_is_linear_in_ring_size_and_prints():
    topo = parse_topology("torus:3x4")
    sched = build_schedule("alltoall", "directreduce", topo, 24)
    steps = list(sched.steps())
    assert len(steps) == (3 - 1) + (4 - 1)
    text = sched.describe(2)
    assert "relayout" in text and "cut_through" in text and "->" in text


@pytest.mark.parametrize("k", [3, 4, 8])
def test_steady_state_forms_under_directreduce_paper(k):
    """docs/model.md §13.5: equal packets, link-bound ring; the saving does not depend on M."""
    a, ap, oh, an = (PAPER_NO_DRAM.link.latency_us, PAPER_NO_DRAM.pcie.latency_us, PAPER_NO_DRAM.host.overhead_us,
                     PAPER_NO_DRAM.nic.latency_us)
    beta, pi = 1.0 / (PAPER_NO_DRAM.link.bandwidth_GBps * 1e3), 1.0 / (PAPER_NO_DRAM.pcie.bandwidth_GBps * 1e3)
    f = r = PAPER_NO_DRAM.nic.packet_bytes
    topo = parse_topology(f"ring:{k}")
    for m in (k * (1 << 16), k * (1 << 22)):          # every bundle a whole number of packets
        assert m // k >= f + (a + an) / beta             # the link-bound condition
        host = model_time("alltoall", "ring", topo, PAPER_NO_DRAM, m // 4).emulated_us
        nic = model_time("alltoall", "directreduce", topo, PAPER_NO_DRAM, m // 4).emulated_us
        band = (k - 1) / 2 * m * beta * (1 + PAPER_NO_DRAM.link.header_bytes / f)   # framed packets (§18)
        assert host == pytest.approx((k - 1) * (a + 2 * ap + (f + r) * pi + oh) + band, rel=1e-12)
        # a forwarded bundle beyond nic.memory_KiB waits to be written to host memory and read back (§13.7)
        spills = sum(1 for s in range(1, k - 1) if (k - 1 - s) * m // k > PAPER_NO_DRAM.nic.memory_KiB * 1024)
        assert spills == (0 if m < k << 22 else {3: 0, 4: 1, 8: 5}[k])
        nic_form = ap + f * pi + band + a + an + r * pi + ap + spills * (a + an + 2 * ap + 2 * f * pi)
        assert nic == pytest.approx(nic_form, rel=1e-12)
        if not spills:
            saving = (k - 2) * (a + 2 * ap + (f + r) * pi) + (k - 1) * oh - an
            assert host - nic == pytest.approx(saving, rel=1e-6)
