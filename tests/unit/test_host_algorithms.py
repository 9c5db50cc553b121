"""MPICH's host algorithms against the closed forms of Thakur, Rabenseifner and Gropp (2005).

On ``switch:N`` under ``ideal`` a message costs α' + nβ with α' = link latency + switch latency, and a
host reduction nγ. Powers of two follow the textbook formulas exactly. For other p the textbook
formula (with MPICH's fold-in and fold-out steps) assumes steps in lock step; in the emulator the
nodes outside the fold start at once and a partner's data may arrive before the node is ready for
it, so the emulated time is below that formula but never above it; two cases are worked out by hand.
"""

import math

import numpy as np
import pytest

from nicemu.collectives import build_schedule, model_time
from nicemu.collectives.schedules.routing import route
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

IDEAL = load_profile("ideal")
SWITCHED = IDEAL.with_overrides(["switch.latency_us=0.4"])
BETA = 1.0 / (IDEAL.link.bandwidth_GBps * 1e3)
GAMMA = 1.0 / (IDEAL.host.reduce_GBps * 1e3)
POW2 = [2, 4, 8, 16, 32]
NON_POW2 = [3, 5, 6, 7, 12, 15, 20]


def alpha(profile):
    return profile.link.latency_us + profile.switch.latency_us


def formula(algo: str, collective: str, p: int, n: float, a: float) -> float:
    """Thakur et al.'s cost, with MPICH's fold-in (α + nβ + nγ) and fold-out (α + nβ) when p is not a
    power of two (Rabenseifner's terms then use p' = 2^⌊lg p⌋)."""
    pof2 = 1 << (p.bit_length() - 1)
    lg = pof2.bit_length() - 1
    extra = 0.0 if pof2 == p else (a + n * BETA + n * GAMMA) + (a + n * BETA)
    frac = (pof2 - 1) / pof2
    if algo == "ring":
        return 2 * (p - 1) * a + 2 * (p - 1) / p * n * BETA + (p - 1) / p * n * GAMMA
    if algo == "recursive-doubling" and collective == "allreduce":
        return lg * (a + n * BETA + n * GAMMA) + extra
    if algo == "rabenseifner" and collective == "allreduce":
        return 2 * lg * a + 2 * frac * n * BETA + frac * n * GAMMA + extra
    if collective == "reducescatter":
        return lg * a + frac * n * (BETA + GAMMA)
    if collective == "allgather":
        return lg * a + frac * n * BETA
    if algo == "tree":
        lgp = math.ceil(math.log2(p))
        return 2 * lgp * (a + n * BETA) + lgp * n * GAMMA
    raise AssertionError(algo)


CASES = [("ring", "allreduce"), ("recursive-doubling", "allreduce"), ("rabenseifner", "allreduce"),
         ("tree", "allreduce"), ("rabenseifner", "reducescatter"), ("rabenseifner", "allgather"),
         ("recursive-doubling", "allgather")]


def count_for(p: int, n_bytes: int) -> int:
    """An element count near n_bytes / 4 that every piece of every algorithm splits evenly."""
    unit = p * (1 << p.bit_length())
    return max(unit, (n_bytes // 4) // unit * unit)


@pytest.mark.parametrize("profile", [IDEAL, SWITCHED], ids=["ideal", "switch-latency"])
@pytest.mark.parametrize("algo, collective", CASES)
@pytest.mark.parametrize("p", POW2)
@pytest.mark.parametrize("n", [1 << 10, 1 << 20, 1 << 28])
def test_powers_of_two_equal_the_closed_form(algo, collective, p, n, profile):
    count = count_for(p, n)
    t = model_time(collective, algo, f"switch:{p}", profile, count, "float32")
    assert t.emulated_us == pytest.approx(formula(algo, collective, p, count * 4, alpha(profile)), rel=1e-9)


@pytest.mark.parametrize("algo, collective", CASES[1:])
@pytest.mark.parametrize("p", NON_POW2)
def test_non_powers_of_two_never_exceed_the_synchronous_formula(algo, collective, p):
    count = count_for(p, 1 << 22)
    n = count * 4
    t = model_time(collective, algo, f"switch:{p}", SWITCHED, count, "float32")
    bound = formula(algo, collective, p, n, alpha(SWITCHED))
    if collective != "allreduce" and p & (p - 1):
        # the pieces of folded core ranks cover two nodes' segments: bound each halving/doubling
        # step by its largest piece and add the fold steps of the segment-sized data
        pof2 = 1 << (p.bit_length() - 1)
        seg = n / p
        lg = pof2.bit_length() - 1
        big = sum(2 * seg * (pof2 >> (k + 1)) for k in range(lg))
        fold = (alpha(SWITCHED) + n * (BETA + GAMMA)) if collective == "reducescatter" else \
            (alpha(SWITCHED) + seg * BETA)
        back = (alpha(SWITCHED) + seg * BETA) if collective == "reducescatter" else (alpha(SWITCHED) + n * BETA)
        bound = lg * alpha(SWITCHED) + big * (BETA + (GAMMA if collective == "reducescatter" else 0)) \
            + fold + back
    assert 0 < t.emulated_us <= bound * (1 + 1e-12)
    if p == 6 and algo == "recursive-doubling" and collective == "allreduce":
        # nodes 4 and 5 do their first exchange while 0 -> 1 and 2 -> 3 fold in
        assert t.emulated_us < bound * 0.95


def test_p_equal_3_recursive_doubling_by_hand():
    """Node 2 sends to node 1 at once; node 1 reduces it after the fold-in (T = α' + nβ + nγ), at T + nγ,
    while its own vector reaches node 2 at T + α' + nβ (done 2T). Node 1's fold-out to node 0 waits for
    its port, busy from T to T + nβ (nβ > nγ here), and lands at T + 2nβ + α'."""
    count = 1 << 20
    n = count * 4
    a = alpha(SWITCHED)
    T = a + n * (BETA + GAMMA)
    t = model_time("allreduce", "recursive-doubling", "switch:3", SWITCHED, count, "float32")
    assert t.node_done_us.tolist() == pytest.approx([T + 2 * n * BETA + a, T + n * GAMMA, 2 * T], rel=1e-12)


def test_p_equal_6_recursive_doubling_by_hand():
    """The critical path of recursive doubling on switch:6, worked out by hand.

    T = α' + nβ + nγ. Nodes 1 and 3 hold the folded sums at T and exchange until 2T; node 1 then
    reduces node 4's vector (which arrived long before) until 2T + nγ. Its fold-out to node 0 waits
    for its port, busy sending to node 4 from 2T to 2T + nβ, so node 0 has the result at
    2T + 2nβ + α'.
    """
    count = 1 << 20
    n = count * 4
    a = alpha(SWITCHED)
    T = a + n * (BETA + GAMMA)
    t = model_time("allreduce", "recursive-doubling", "switch:6", SWITCHED, count, "float32")
    assert t.node_done_us[0] == pytest.approx(2 * T + 2 * n * BETA + a, rel=1e-12)
    assert t.emulated_us == pytest.approx(2 * T + 2 * n * BETA + a, rel=1e-12)


@pytest.mark.parametrize("algo, collective", CASES[1:])
@pytest.mark.parametrize("p", [2, 3, 5, 8, 12])
def test_every_node_sends_and_receives_at_most_once_per_step(algo, collective, p):
    schedule = build_schedule(collective, algo, f"switch:{p}", 1000)
    for step in schedule.steps():
        assert len(np.unique(step.src)) == len(step.src)
        assert len(np.unique(step.dst)) == len(step.dst)
        if not step.exchange:   # no node writes what it sends in the same step
            assert not set(step.src.tolist()) & set(step.dst.tolist()) or step.phase in ("rs", "ag")
        assert step.route is not None and step.route.load == 1


def test_torus_routes_share_links():
    """Recursive doubling on ring:8: partners 4 apart cross 4 links, each carrying 4 transfers."""
    topo = parse_topology("ring:8")
    nodes = np.arange(8)
    loads = [route(topo, nodes, nodes ^ (1 << k)).load for k in range(3)]
    assert loads == [1, 2, 4]
    r = route(topo, nodes, nodes ^ 4)
    assert r.total.tolist() == [4] * 8
    # torus:4x4: partner 8 apart is two rows down: 2 links in dimension 0
    topo = parse_topology("torus:4x4")
    nodes = np.arange(16)
    r = route(topo, nodes, nodes ^ 8)
    assert r.total.tolist() == [2] * 16 and r.load == 2


def test_routed_wire_bytes_count_every_link():
    count = 1 << 16
    t = model_time("allreduce", "recursive-doubling", "ring:8", IDEAL, count, "float32")
    assert t.wire_bytes == 8 * count * 4 * (1 + 2 + 4)


@pytest.mark.parametrize("topology", ["switch:8", "ring:8", "torus:4x4", "switch:6"])
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather"])
@pytest.mark.parametrize("count", [16, 4096, 1 << 22])
def test_host_best_is_the_fastest_host_algorithm(topology, collective, count):
    from nicemu.collectives.api.host_best import candidates
    profile = load_profile("directreduce-paper")
    best = model_time(collective, "host-best", topology, profile, count, "float32")
    times = {a: model_time(collective, a, topology, profile, count, "float32").emulated_us
             for a in candidates(collective)}
    assert best.chosen_algo in times
    assert best.emulated_us == min(times.values()) == times[best.chosen_algo]


def test_host_best_follows_mpi_practice_on_a_switch():
    """Recursive doubling for short messages, Rabenseifner for medium ones, a segmented ring for long
    ones: the progression of MPI libraries' tuning tables comes out of the model."""
    profile = load_profile("directreduce-paper")
    chosen = [model_time("allreduce", "host-best", "switch:16", profile, count, "float32").chosen_algo
              for count in (64, 1 << 18, 1 << 24)]
    assert chosen == ["recursive-doubling", "rabenseifner", "ring-pipelined"]


def test_host_best_refuses_faults_and_alltoall():
    from nicemu.errors import CollectiveError
    with pytest.raises(CollectiveError, match="neighbour links only"):
        model_time("allreduce", "host-best", "ring:4", IDEAL, 64, faults="drop=1e-3,seed=1")
    with pytest.raises(CollectiveError, match="host-best does not run alltoall"):
        model_time("alltoall", "host-best", "ring:4", IDEAL, 64)
