"""Emulated times against closed-form theory under the `ideal` profile (model executor)."""

import math

import pytest

from nicemu.collectives import model_time
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

IDEAL = load_profile("ideal")
ALPHA = IDEAL.link.latency_us
BETA = 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)   # us per byte
GAMMA = 1.0 / (IDEAL.host.reduce_GBps * 1e3)
SIZES = [1 << e for e in range(10, 31, 2)]        # 1 KiB .. 1 GiB


def ring_formula(p: int, n: float) -> float:
    return 2 * (p - 1) * ALPHA + 2 * ((p - 1) / p) * n * BETA + ((p - 1) / p) * n * GAMMA


@pytest.mark.parametrize("p", [2, 4, 8, 16])
@pytest.mark.parametrize("n", SIZES)
def test_host_ring_allreduce_matches_alpha_beta_gamma(p, n):
    t = model_time("allreduce", "ring", parse_topology(f"ring:{p}"), IDEAL, n // 4, "float32")
    assert t.emulated_us == pytest.approx(ring_formula(p, n), rel=1e-9)


@pytest.mark.parametrize("p", [3, 5])
@pytest.mark.parametrize("n", SIZES)
def test_host_ring_exact_when_count_splits_evenly(p, n):
    # n rounded to a multiple of p elements, so every chunk has the same size
    count = (n // 4) // p * p
    nb = count * 4
    t = model_time("allreduce", "ring", parse_topology(f"ring:{p}"), IDEAL, count, "float32")
    assert t.emulated_us == pytest.approx(ring_formula(p, nb), rel=1e-9)


@pytest.mark.parametrize("p", [3, 5, 7])
@pytest.mark.parametrize("count", [1, 2, 10, 1000, 12345, (1 << 28) + 1])
def test_largest_chunk_sets_each_step(p, count):
    cmax = math.ceil(count / p) * 4
    expected = 2 * (p - 1) * (ALPHA + cmax * BETA) + (p - 1) * cmax * GAMMA
    t = model_time("allreduce", "ring", parse_topology(f"ring:{p}"), IDEAL, count, "float32")
    assert t.emulated_us == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("shape", ["torus:4x4x2", "torus:3x3x3", "torus:2x2x2x2", "torus:3^6", "torus:4^6"])
@pytest.mark.parametrize("n", [1 << 12, 1 << 20, 1 << 30])
def test_torus_dimension_wise_closed_form(shape, n):
    topo = parse_topology(shape)
    p = topo.nodes
    count = (n // 4) // p * p or p
    nb = count * 4
    expected = (2 * sum(k - 1 for k in topo.shape) * ALPHA + 2 * ((p - 1) / p) * nb * BETA
                + ((p - 1) / p) * nb * GAMMA)
    t = model_time("allreduce", "ring", topo, IDEAL, count, "float32")
    assert t.emulated_us == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("p", [2, 3, 8, 16])
@pytest.mark.parametrize("n", [1 << 12, 1 << 24, 1 << 30])
def test_directreduce_under_ideal_is_the_bandwidth_optimal_bound(p, n):
    count = (n // 4) // p * p
    nb = count * 4
    expected = 2 * (p - 1) * ALPHA + 2 * ((p - 1) / p) * nb * BETA
    t = model_time("allreduce", "directreduce", parse_topology(f"ring:{p}"), IDEAL, count, "float32")
    assert t.emulated_us == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("algo", ["ring", "directreduce"])
def test_reduce_scatter_and_allgather_are_halves(algo):
    topo = parse_topology("ring:8")
    count = 1 << 20
    nb = count * 4
    rs = model_time("reducescatter", algo, topo, IDEAL, count).emulated_us
    ag = model_time("allgather", algo, topo, IDEAL, count).emulated_us
    gamma = GAMMA if algo == "ring" else 0.0
    assert rs == pytest.approx(7 * ALPHA + (7 / 8) * nb * (BETA + gamma), rel=1e-9)
    assert ag == pytest.approx(7 * ALPHA + (7 / 8) * nb * BETA, rel=1e-9)


def test_torus_8_pow_6_latency_term_is_84_alpha():
    topo = parse_topology("torus:8^6")
    p = topo.nodes
    count = p  # one element per node
    expected = 84 * ALPHA + 2 * ((p - 1) / p) * count * 4 * BETA + ((p - 1) / p) * count * 4 * GAMMA
    t = model_time("allreduce", "ring", topo, IDEAL, count)
    assert t.emulated_us == pytest.approx(expected, rel=1e-9)


def test_host_and_nic_busy_accounting():
    topo = parse_topology("ring:4")
    count = 1 << 16
    ring = model_time("allreduce", "ring", topo, IDEAL, count)
    dr = model_time("allreduce", "directreduce", topo, IDEAL, count)
    assert ring.host_busy_us == pytest.approx(3 * (count * 4 / 4) * GAMMA, rel=1e-12)
    assert dr.host_busy_us == 0.0
    assert ring.wire_bytes == dr.wire_bytes == 2 * 3 * count * 4


IDEAL_BIDIR = load_profile("ideal", ["topology.bidirectional=true"])


@pytest.mark.parametrize("shape", ["ring:2", "ring:8", "ring:16", "torus:4x4x2", "torus:3^6"])
@pytest.mark.parametrize("n", [1 << 12, 1 << 20, 1 << 30])
def test_bidirectional_halves_the_bandwidth_term(shape, n):
    """Each half of a chunk uses its own direction; the host still reduces both halves."""
    topo = parse_topology(shape)
    p = topo.nodes
    count = (n // 4) // (2 * p) * (2 * p) or 2 * p   # every chunk splits into equal halves
    nb = count * 4
    lat = 2 * sum(k - 1 for k in topo.shape) * ALPHA
    ring = model_time("allreduce", "ring", topo, IDEAL_BIDIR, count).emulated_us
    dr = model_time("allreduce", "directreduce", topo, IDEAL_BIDIR, count).emulated_us
    assert ring == pytest.approx(lat + ((p - 1) / p) * nb * BETA + ((p - 1) / p) * nb * GAMMA, rel=1e-9)
    assert dr == pytest.approx(lat + ((p - 1) / p) * nb * BETA, rel=1e-9)


def test_bidirectional_uses_both_link_directions_with_the_same_wire_bytes():
    topo = parse_topology("torus:4x4")
    uni = model_time("allreduce", "directreduce", topo, IDEAL, 1 << 16)
    bi = model_time("allreduce", "directreduce", topo, IDEAL_BIDIR, 1 << 16)
    assert bi.wire_bytes == uni.wire_bytes
    assert bi.emulated_us < uni.emulated_us
