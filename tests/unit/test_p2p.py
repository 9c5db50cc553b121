"""Point-to-point transfers (collectives/schedules/p2p.py): routes, the closed form under ``ideal``, contention, paths."""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import p2p_time, run_p2p
from nicemu.collectives.schedules.p2p import route
from nicemu.errors import CollectiveError
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology, ring

IDEAL = load_profile("ideal")
PAPER = load_profile("directreduce-paper")


def closed_form(hops: int, nbytes: int, profile=IDEAL) -> float:
    """h α + n β + (h - 1) min(n, P) β (docs/model.md §14)."""
    alpha = profile.link.latency_us
    beta = 1.0 / (profile.link.bandwidth_GBps * 1e3)
    return hops * alpha + nbytes * beta + (hops - 1) * min(nbytes, profile.nic.packet_bytes) * beta


@pytest.mark.parametrize("src, dst, hops", [(0, 1, 1), (0, 3, 3), (0, 4, 4), (0, 5, 3), (6, 1, 3), (2, 7, 3)])
@pytest.mark.parametrize("nbytes", [100, 4096, 5000, 1 << 20, 3 * (1 << 20) + 7])
def test_single_transfer_closed_form_on_ring(src, dst, hops, nbytes):
    topo = ring(8)
    assert len(route(topo, src, dst)) == hops
    t = p2p_time(topo, IDEAL, [(src, dst)], nbytes, "nic")
    assert t.emulated_us == pytest.approx(closed_form(hops, nbytes), rel=1e-12)
    assert t.wire_bytes == hops * nbytes
    assert t.host_busy_us == 0.0


def test_route_is_dimension_order_and_shortest_on_torus():
    topo = parse_topology("torus:4x4")
    hops = route(topo, 0, 15)               # (0,0) -> (3,3): one step back in each dimension
    assert [(d, s) for _, d, s in hops] == [(0, -1), (1, -1)]
    walk = [0]
    for node, dim, step in hops:
        assert node == walk[-1]
        walk.append(int(topo.neighbor(node, dim, step)))
    assert walk[-1] == 15
    assert len(route(topo, 0, 10)) == 4      # (0,0) -> (2,2): two hops per dimension


def test_shared_link_serialises_parallel_transfers():
    topo = ring(8)
    n = 1 << 20
    alone = p2p_time(topo, IDEAL, [(0, 2)], n, "nic").emulated_us
    both = p2p_time(topo, IDEAL, [(0, 2), (1, 3)], n, "nic")   # both cross link 1 -> 2
    beta = 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)
    assert both.emulated_us >= alone + n * beta * (1 - 1e-12)
    disjoint = p2p_time(topo, IDEAL, [(0, 1), (4, 5)], n, "nic")
    assert disjoint.emulated_us == pytest.approx(closed_form(1, n), rel=1e-12)


def test_pipeline_stages_one_hop_apart_on_torus_do_not_contend():
    """torus:2x4 with TP 4: stage s's TP rank i sends to stage s+1's rank i over one dimension-0 link."""
    topo = parse_topology("torus:2x4")
    pairs = [(i, 4 + i) for i in range(4)]
    t = p2p_time(topo, IDEAL, pairs, 1 << 20, "nic")
    assert t.emulated_us == pytest.approx(closed_form(1, 1 << 20), rel=1e-12)
    on_ring = p2p_time(ring(8), IDEAL, pairs, 1 << 20, "nic")   # 4 hops each, sharing links
    assert on_ring.emulated_us > 4 * t.emulated_us


def test_host_path_pays_overhead_at_both_ends():
    topo = ring(4)
    n = 65536
    nic = p2p_time(topo, PAPER, [(0, 1)], n, "nic")
    host = p2p_time(topo, PAPER, [(0, 1)], n, "host")
    assert host.emulated_us == pytest.approx(nic.emulated_us + 2 * PAPER.host.overhead_us, rel=1e-12)
    assert host.host_busy_us == PAPER.host.overhead_us and nic.host_busy_us == 0.0
    # PCIe read and write each add their latency and one packet's serialisation to the link path, which
    # serialises the payload and every packet's framing
    pcie_beta = 1.0 / (PAPER.pcie.bandwidth_GBps * 1e3)
    link_beta = 1.0 / (PAPER.link.bandwidth_GBps * 1e3)
    pkt, header = PAPER.nic.packet_bytes, PAPER.link.header_bytes
    assert n % pkt == 0 and header > 0       # the link carries n/pkt framed packets (docs/model.md §18)
    expected = (2 * PAPER.pcie.latency_us + PAPER.link.latency_us + 2 * pkt * pcie_beta
                + (n + n // pkt * header) * link_beta)
    assert nic.emulated_us == pytest.approx(expected, rel=1e-12)


def test_bad_transfers_are_refused():
    with pytest.raises(CollectiveError, match="not between two nodes"):
        p2p_time(ring(4), IDEAL, [(0, 4)], 10, "nic")
    with pytest.raises(CollectiveError, match="not between two nodes"):
        p2p_time(ring(4), IDEAL, [(1, 1)], 10, "nic")
    with pytest.raises(CollectiveError, match="host or nic"):
        p2p_time(ring(4), IDEAL, [(0, 1)], 10, "pcie")


def test_real_data_single_process_matches_model_and_delivers_bytes():
    """All nodes in one process: the data is copied, and the time is the model's."""
    topo = parse_topology("torus:2x4")
    pairs = [(i, 4 + i) for i in range(4)] + [(7, 2)]
    n = 10_000
    rng = np.random.default_rng(1)
    sent = {a: rng.integers(0, 256, n, dtype=np.uint8) for a, _ in pairs}
    bufs = {a: v.copy() for a, v in sent.items()}
    for _, b in pairs:
        if b not in bufs:
            bufs[b] = np.zeros(n, dtype=np.uint8)
    node_rank = np.zeros(topo.nodes, dtype=np.int64)
    t = run_p2p(MPI.COMM_SELF, node_rank, topo, PAPER, pairs[:4], {k: bufs[k] for k in range(8)}, "host")
    for a, b in pairs[:4]:
        assert np.array_equal(bufs[b], sent[a])
    model = p2p_time(topo, PAPER, pairs[:4], n, "host")
    assert t.emulated_us == model.emulated_us and t.wire_bytes == model.wire_bytes


NVLINK = load_profile("400g-gen5").with_overrides(["intra_node.nvlink=true"])


@pytest.mark.parametrize("path", ["host", "nic"])
def test_nvlink_transfer_inside_a_node_closed_form(path):
    """Two accelerators of one node: the sender's NVLink port, then the receiver's, cut through; no PCIe,
    no network link, no host (docs/model.md §14)."""
    topo = ring(2).with_ranks_per_node(4)
    n, pkt = 1_000_000, NVLINK.nic.packet_bytes
    beta = 1.0 / (1e3 * NVLINK.intra_node.bandwidth_GBps)
    t = p2p_time(topo, NVLINK, [(1, 2)], n, path)
    assert t.emulated_us == pytest.approx(NVLINK.intra_node.latency_us + n * beta + pkt * beta, rel=1e-12)
    assert (t.wire_bytes, t.host_busy_us) == (0, 0.0)
    # two senders into one receiver share its port; across nodes the transfer takes the rails as before
    both = p2p_time(topo, NVLINK, [(0, 2), (1, 2)], n, path)
    assert both.emulated_us == pytest.approx(NVLINK.intra_node.latency_us + 2 * n * beta + pkt * beta, rel=1e-12)
    off = load_profile("400g-gen5")
    assert p2p_time(topo, NVLINK, [(1, 5)], n, path).emulated_us == p2p_time(topo, off, [(1, 5)], n, path).emulated_us
    assert p2p_time(topo, off, [(1, 2)], n, path).emulated_us > t.emulated_us     # through host memory


def test_nvlink_real_data_single_process_matches_model():
    topo = ring(2).with_ranks_per_node(4)
    pairs = [(0, 1), (2, 6), (3, 1)]
    n = 5_000
    rng = np.random.default_rng(3)
    sent = {a: rng.integers(0, 256, n, dtype=np.uint8) for a, _ in pairs}
    bufs = {k: sent.get(k, np.zeros(n, dtype=np.uint8)).copy() for k in range(8)}
    node_rank = np.zeros(topo.nodes, dtype=np.int64)
    t = run_p2p(MPI.COMM_SELF, node_rank, topo, NVLINK, pairs[:2], bufs, "nic")
    for a, b in pairs[:2]:
        assert np.array_equal(bufs[b], sent[a])
    model = p2p_time(topo, NVLINK, pairs[:2], n, "nic")
    assert t.emulated_us == model.emulated_us and t.wire_bytes == model.wire_bytes
