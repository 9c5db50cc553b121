"""The shared-fabric flow model (nic/fabric.py) against closed forms, the max-min optimality condition and a
slow reference in exact rational arithmetic; the builder (collectives/model/fabric.py) against p2p routes."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nicemu.collectives.model.fabric import Fabric
from nicemu.collectives.schedules.p2p import route as p2p_route
from nicemu.nic.fabric import FabricError, Routes, max_min_rates, simulate
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

# --- a slow, obviously correct reference: exact fractions, one bottleneck at a time ---------------------------


def _ref_rates(cap, routes, weights, active):
    """Progressive filling: raise the common level until one resource saturates; freeze its flows; repeat."""
    rate = {}
    rem = dict(enumerate(cap))
    unfrozen = set(active)
    while unfrozen:
        best = None
        for r, c in rem.items():
            w = sum(weights[f] for f in unfrozen if r in routes[f])
            if w and (best is None or c / w < best[0]):
                best = (c / w, r)
        level, r = best
        for f in [f for f in unfrozen if r in routes[f]]:
            rate[f] = weights[f] * level
            unfrozen.discard(f)
            for s in routes[f]:
                rem[s] -= rate[f]
    return rate


def _ref_simulate(cap, start, size, routes, lat, weights):
    cap = [Fraction(c) for c in cap]
    join = [Fraction(s) + Fraction(x) for s, x in zip(start, lat)]
    left = [Fraction(x) for x in size]
    weights = [Fraction(w) for w in weights]
    finish = [None] * len(size)
    for f in range(len(size)):
        if left[f] == 0:
            finish[f] = join[f]
    t = Fraction(0)
    while any(x is None for x in finish):
        active = [f for f in range(len(size)) if finish[f] is None and join[f] <= t]
        later = [join[f] for f in range(len(size)) if finish[f] is None and join[f] > t]
        if not active:
            t = min(later)
            continue
        rate = _ref_rates(cap, routes, weights, active)
        t_next = min([t + left[f] / rate[f] for f in active] + later)
        for f in active:
            left[f] -= rate[f] * (t_next - t)
            if left[f] == 0:
                finish[f] = t_next
        t = t_next
    return [float(x) for x in finish]


# --- closed forms ----------------------------------------------------------------------------------------------


def test_single_flow_alone_is_size_over_bandwidth_plus_latency_exactly():
    for start, size, cap, lat in ((0.0, 1 << 20, 12500.0, 1.0), (3.25, 12345, 100.0, 0.7), (1e3, 1, 3.0, 0.0)):
        fin = simulate([cap], start, size, [[0]], latency_us=lat)
        assert fin[0] == start + lat + size / cap


def test_two_equal_flows_on_one_link_each_take_half_the_bandwidth():
    fin = simulate([10.0], [0.0, 0.0], [100.0, 100.0], [[0], [0]])
    assert fin.tolist() == [20.0, 20.0]
    fin = simulate([10.0] * 3, 0.0, 100.0, [[0, 1], [1, 2]])   # sharing only the middle link
    assert fin.tolist() == [20.0, 20.0]


def test_flow_limited_elsewhere_leaves_its_share_to_others():
    # A crosses links 0 (10 B/us) and 1 (2 B/us): limited to 2 by link 1, so B gets 8 of link 0, not 5
    cap = [10.0, 2.0]
    rates = max_min_rates(np.array(cap), np.array([0, 0, 1]), np.array([0, 1, 0]), np.ones(2), 2)
    assert rates.tolist() == [2.0, 8.0]
    fin = simulate(cap, 0.0, [20.0, 80.0], [[0, 1], [0]])
    assert fin.tolist() == [10.0, 10.0]


@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_parking_lot(k):
    # a long flow over k links, one short flow on each: all at C/2; the shorts (S_s) end first, then the long
    # flow runs alone at C: it ends at (S_l + S_s)/C
    cap, s_short, s_long = 8.0, 64.0, 200.0
    routes = [list(range(k))] + [[i] for i in range(k)]
    fin = simulate([cap] * k, 0.0, [s_long] + [s_short] * k, routes)
    assert fin[1:].tolist() == [2 * s_short / cap] * k
    assert fin[0] == (s_long + s_short) / cap
    # equal sizes: everyone at C/2 to the end
    fin = simulate([cap] * k, 0.0, s_long, routes)
    assert fin.tolist() == [2 * s_long / cap] * (k + 1)


def test_parking_lot_with_distinct_short_sizes():
    # shorts of 1, 2, 3 units: each short ends at 2*S_i/C; the long flow's rate stays C/2 while any short
    # shares its path (max-min: it is held to the level of its most contended link)
    cap = 1.0
    routes = [[0, 1, 2], [0], [1], [2]]
    fin = simulate([cap] * 3, 0.0, [10.0, 1.0, 2.0, 3.0], routes)
    assert fin[1:].tolist() == [2.0, 4.0, 6.0]
    # long flow: 3 bytes by t = 6 at rate 1/2, then alone at 1: 6 + 7
    assert fin[0] == 13.0


def test_staggered_starts():
    # A alone at C until t1, then A and B at C/2; when A ends B runs alone at C
    cap, size, t1 = 4.0, 40.0, 2.5
    fin = simulate([cap], [0.0, t1], size, [[0], [0]])
    t_a = t1 + 2 * (size - cap * t1) / cap
    assert fin[0] == t_a
    assert fin[1] == t_a + t1


def test_flow_ending_frees_capacity():
    # three flows on one link, sizes 1, 2, 3 units of C: at C/3 until the first ends, then C/2, then C
    cap = 3.0
    fin = simulate([cap], 0.0, [3.0, 6.0, 9.0], [[0], [0], [0]])
    assert fin.tolist() == [3.0, 5.0, 6.0]


def test_latency_is_paid_before_sharing():
    # B's latency keeps it off the link until t = 5: A runs alone until then
    fin = simulate([1.0], 0.0, [10.0, 10.0], [[0], [0]], latency_us=[0.0, 5.0])
    assert fin.tolist() == [15.0, 20.0]


def test_weighted_sharing():
    fin = simulate([4.0], 0.0, [10.0, 30.0], [[0], [0]], weight=[1.0, 3.0])
    assert fin.tolist() == [10.0, 10.0]


def test_zero_byte_flow_finishes_on_joining():
    fin = simulate([1.0], [2.0, 0.0], [0.0, 4.0], [[0], [0]], latency_us=1.0)
    assert fin.tolist() == [3.0, 5.0]


def test_intervals_record_constant_rate_stretches():
    out: list = []
    simulate([3.0], 0.0, [3.0, 6.0, 9.0], [[0], [0], [0]], intervals=out)
    assert [(t0, t1) for t0, t1, _, _ in out] == [(0.0, 3.0), (3.0, 5.0), (5.0, 6.0)]
    assert [r.tolist() for _, _, _, r in out] == [[1.0, 1.0, 1.0], [1.5, 1.5], [3.0]]


# --- errors -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(nbytes=[-1.0]), "bytes of flow 0 is -1.0"),
    (dict(routes=[[3]]), "unknown resource 3"),
    (dict(capacity=[0.0]), "resource 0 has capacity 0.0"),
    (dict(capacity=[float("inf")]), "positive, finite"),
    (dict(routes=[[]]), "flow 0 has an empty route"),
    (dict(routes=[[0, 0]]), "crosses a resource twice"),
    (dict(start_us=[float("nan")]), "start_us of flow 0 is nan"),
    (dict(latency_us=[-2.0]), "latency_us of flow 0 is -2.0"),
    (dict(weight=[0.0]), "weight of flow 0 is 0.0"),
    (dict(nbytes=[1.0, 2.0]), "one number per flow (1)"),
    (dict(routes=[[0.5]]), "whole resource ids"),
    (dict(routes=[0]), "whole resource ids"),
    (dict(capacity=["fast"]), "one number (bytes/us) per resource"),
    (dict(start_us=["soon"]), "start_us must be a number"),
])
def test_bad_input_is_one_line_error(kwargs, words):
    args = dict(capacity=[1.0], start_us=[0.0], nbytes=[1.0], routes=[[0]])
    args.update(kwargs)
    with pytest.raises(FabricError) as err:
        simulate(**args)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


# --- properties -------------------------------------------------------------------------------------------------


@st.composite
def _instances(draw, max_res=5, max_flows=6):
    nres = draw(st.integers(1, max_res))
    cap = [float(draw(st.integers(1, 8))) for _ in range(nres)]
    nflows = draw(st.integers(1, max_flows))
    routes = [sorted(draw(st.sets(st.integers(0, nres - 1), min_size=1, max_size=nres))) for _ in range(nflows)]
    start = [float(draw(st.integers(0, 6))) for _ in range(nflows)]
    size = [float(draw(st.integers(0, 40))) for _ in range(nflows)]
    lat = [float(draw(st.sampled_from([0, 0, 1, 2.5]))) for _ in range(nflows)]
    weight = [float(draw(st.sampled_from([1, 1, 2, 0.5]))) for _ in range(nflows)]
    return cap, start, size, routes, lat, weight


def _entries(routes):
    flow_of = np.repeat(np.arange(len(routes)), [len(r) for r in routes])
    return flow_of, np.concatenate([np.asarray(r, dtype=np.int64) for r in routes])


@settings(max_examples=300, deadline=None)
@given(_instances())
def test_rates_are_feasible_and_max_min_optimal(inst):
    cap, _, _, routes, _, weight = inst
    cap, w = np.array(cap), np.array(weight)
    flow_of, res = _entries(routes)
    rate = max_min_rates(cap, flow_of, res, w, len(routes))
    load = np.bincount(res, weights=rate[flow_of], minlength=len(cap))
    assert np.all(load <= cap * (1 + 1e-12))                      # no resource over capacity
    assert np.all(rate > 0)
    level = rate / w
    for f, route in enumerate(routes):
        # a bottleneck: saturated, and no flow there has a higher (weighted) level than f
        assert any(
            load[r] >= cap[r] * (1 - 1e-12) and all(level[g] <= level[f] * (1 + 1e-12)
                                                    for g in range(len(routes)) if r in routes[g])
            for r in route
        ), f"flow {f} has no bottleneck"
    exact = _ref_rates([Fraction(c) for c in cap], [set(r) for r in routes], [Fraction(x) for x in w],
                       range(len(routes)))
    assert rate.tolist() == pytest.approx([float(exact[f]) for f in range(len(routes))], rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(_instances())
def test_finish_times_match_the_exact_reference(inst):
    cap, start, size, routes, lat, weight = inst
    out: list = []
    fin = simulate(cap, start, size, routes, latency_us=lat, weight=weight, intervals=out)
    ref = _ref_simulate(cap, start, size, [set(r) for r in routes], lat, weight)
    assert fin.tolist() == pytest.approx(ref, rel=1e-9, abs=1e-9)
    flow_of, res = _entries(routes)
    for t0, t1, ids, rate in out:                                   # conservation at every moment
        assert t1 >= t0
        r = np.zeros(len(routes))
        r[ids] = rate
        load = np.bincount(res, weights=r[flow_of], minlength=len(cap))
        assert np.all(load <= np.array(cap) * (1 + 1e-12))
    moved = np.zeros(len(routes))
    for t0, t1, ids, rate in out:                                   # every byte is carried
        moved[ids] += rate * (t1 - t0)
    assert moved.tolist() == pytest.approx(size, rel=1e-9, abs=1e-9)


# --- the builder ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["ring:8", "ring:2", "torus:4x4", "torus:3x2x5", "torus:4^3"])
def test_torus_routes_follow_dimension_ordered_routing(spec):
    topo = parse_topology(spec)
    fab = Fabric(topo, load_profile("ideal"))
    rng = np.random.default_rng(0)
    src = rng.integers(0, topo.nodes, 50)
    dst = (src + rng.integers(1, topo.nodes, 50)) % topo.nodes
    fs = fab.flows(src, dst)
    for i, (a, b) in enumerate(zip(src.tolist(), dst.tolist())):
        hops = p2p_route(topo, a, b)
        names = [fab.resource_name(r) for r in fs.routes.route(i)]
        want = [f"{n}->{topo.neighbor(n, d, s)}/d{d}{'+' if s > 0 else '-'}" for n, d, s in hops]
        assert names == want
        assert fs.latency_us[i] == pytest.approx(len(hops) * fab.profile.link.latency_us)
    used = set(fab.used_resources().tolist())
    assert set(fs.routes.resources.tolist()) <= used
    assert len(used) == sum(1 for _ in topo.directed_links())


def test_ring_neighbour_shift_runs_every_flow_alone():
    prof = load_profile("ideal")
    fab = Fabric(parse_topology("ring:8"), prof)
    src = np.arange(8)
    fin = fab.simulate(src, (src + 1) % 8, 1 << 20)
    cap = prof.link.bandwidth_GBps * 1e3
    assert fin.tolist() == [prof.link.latency_us + (1 << 20) / cap] * 8


def test_switch_ports_are_shared_by_incast():
    prof = load_profile("ideal")
    fab = Fabric(parse_topology("switch:4"), prof)
    fs = fab.flows([1, 2, 3], [0, 0, 0])
    assert [fs.routes.route(i) for i in range(3)] == [[1, 4], [2, 4], [3, 4]]
    fin = fab.simulate([1, 2, 3], [0, 0, 0], 3000.0)
    cap = prof.link.bandwidth_GBps * 1e3
    alpha = prof.link.latency_us + prof.switch.latency_us
    assert fin.tolist() == [alpha + 3 * 3000.0 / cap] * 3


def test_builder_errors():
    prof = load_profile("ideal")
    with pytest.raises(FabricError, match="ranks per node"):
        Fabric(parse_topology("ring:4").with_ranks_per_node(2), prof)
    fab = Fabric(parse_topology("ring:4"), prof)
    with pytest.raises(FabricError, match="not between two different nodes"):
        fab.flows([0], [0])
    with pytest.raises(FabricError, match="as many destinations"):
        fab.flows([0, 1], [2])
    with pytest.raises(FabricError, match="source node ids must be whole numbers"):
        fab.flows([0.5], [2])
    with pytest.raises(FabricError, match="destination node ids must be whole numbers"):
        fab.flows([0], ["two"])
    assert fab.flows([1.0], [np.int32(3)]).src.tolist() == [1]          # whole floats and numpy ints are ids
    assert Routes.from_lists([[1, 2], [0]]).route(1) == [0]


def test_simgrid_platform_describes_the_same_fabric():
    # the platform the SimGrid check runs on (tests/unit/test_fabric_simgrid.py), checked without SimGrid
    import xml.etree.ElementTree as ET

    fab = Fabric(parse_topology("torus:4x2"), load_profile("ideal", ("link.latency_us=0.75",)))
    fs = fab.flows([0, 0, 5, 0], [3, 7, 2, 3])
    zone = ET.fromstring(fab.simgrid_platform(fs)).find("zone")
    links = {e.get("id"): e for e in zone.findall("link")}
    assert len(zone.findall("host")) == 8
    assert sorted(links) == sorted(f"r{r}" for r in fab.used_resources())
    for rid, e in links.items():
        assert float(e.get("bandwidth").removesuffix("Bps")) == fab.capacity[int(rid[1:])]
        assert float(e.get("latency").removesuffix("s")) == 0.75
    routes = {(e.get("src"), e.get("dst")): [c.get("id") for c in e] for e in zone.findall("route")}
    assert len(routes) == 3                                         # one per (src, dst) pair
    for i, (a, b) in enumerate(zip(fs.src.tolist(), fs.dst.tolist())):
        assert routes[(f"n{a}", f"n{b}")] == [f"r{r}" for r in fs.routes.route(i)]
    sw = Fabric(parse_topology("switch:3"), load_profile("ideal"))
    zone = ET.fromstring(sw.simgrid_platform(sw.flows([0], [2]))).find("zone")
    lat = {e.get("id"): float(e.get("latency").removesuffix("s")) for e in zone.findall("link")}
    assert lat["r0"] == sw.dim_latency_us[0] + sw.profile.switch.latency_us and lat["r5"] == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_medium_torus_case_matches_the_exact_reference(seed):
    # 30 flows on torus:3x3: many events and bottleneck layers, joins and leaves at once (integer times)
    fab = Fabric(parse_topology("torus:3x3"), load_profile("ideal", ("link.bandwidth_GBps=0.004",)))
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 9, 30)
    dst = (src + rng.integers(1, 9, 30)) % 9
    fs = fab.flows(src, dst)
    start = rng.integers(0, 20, 30).astype(float)
    size = rng.integers(1, 200, 30).astype(float)
    fin = simulate(fab.capacity, start, size, fs.routes, fs.latency_us)
    routes = [set(fs.routes.route(i)) for i in range(30)]
    ref = _ref_simulate(fab.capacity.tolist(), start.tolist(), size.tolist(), routes, fs.latency_us.tolist(), [1] * 30)
    assert fin.tolist() == pytest.approx(ref, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(_instances())
def test_join_level_is_the_new_flows_level(inst):
    # the level below which nothing changes when one flow joins is that flow's level in the new allocation
    from nicemu.nic.fabric import _join_level

    cap, _, _, routes, _, weight = inst
    cap, w = np.array(cap), np.array(weight)
    flow_of, res = _entries(routes)
    g = len(routes) - 1
    before = max_min_rates(cap, flow_of[flow_of != g], res[flow_of != g], w, len(routes))
    after = max_min_rates(cap, flow_of, res, w, len(routes))
    active = np.ones(len(routes), dtype=bool)
    level = _join_level(cap, flow_of, res, w, before, active, np.array([g]), len(routes))
    assert level == pytest.approx(after[g] / w[g], rel=1e-12)
