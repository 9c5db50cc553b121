"""The shared-fabric model (nic/fabric.py) against SimGrid's flow model, an independent max-min solver.

tests/simgrid/flows.cpp runs the same flows as S4U communications on a platform generated from the same
topology and profile by ``Fabric.simgrid_platform`` (one SimGrid link per fabric resource, one route per
flow). SimGrid runs its CM02 network model with its corrections off: latency and bandwidth factors 1, no
cross traffic (a flow does not load the reverse path), no TCP window bound (TCP-gamma 0), weight-S 0. That is max-min fair sharing in
which a flow pays its route latency before it starts to share, as ours does, with one difference kept in
view: CM02 weighs a flow with latency L by 1/L (RTT unfairness), so the comparisons with unequal latencies
give our model the same weights. Bandwidths are written in bytes/us and latencies in us, so SimGrid's
seconds read as microseconds.

Skipped when g++, pkg-config or SimGrid (libsimgrid-dev) is missing; see docs/testing.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nicemu.collectives.model.fabric import Fabric
from nicemu.nic.fabric import simulate
from nicemu.nic.profile import load_profile
from nicemu.studies.fabric_bench import compile_simgrid, make_case, run_model, run_simgrid, simgrid_flags
from nicemu.topologies import parse_topology

#: relative agreement asked of the two solvers: both work in double precision (SimGrid's precision settings
#: are tightened, nicemu/studies/fabric_bench.py); the worst measured is 1.0e-15 (docs/model.md §21)
RTOL = 1e-9


@pytest.fixture(scope="module")
def flows_exe(tmp_path_factory) -> Path:
    flags = simgrid_flags()
    if flags is None:
        pytest.skip("SimGrid check needs g++, pkg-config and SimGrid (apt-get install libsimgrid-dev)")
    return compile_simgrid(tmp_path_factory.mktemp("simgrid") / "flows", flags)


def _compare(exe, tmp_path, spec, src, dst, start, size, latency=True, overrides=(), unweighted=None):
    fabric = Fabric(parse_topology(spec), load_profile("ideal", overrides))
    fs = fabric.flows(src, dst)
    lat = fs.latency_us if latency else np.zeros(len(fs.src))
    weight = np.where(lat > 0, 1.0 / np.where(lat > 0, lat, 1.0), 1.0)     # CM02's 1/latency weights
    ours = simulate(fabric.capacity, start, size, fs.routes, lat, weight)
    theirs, _ = run_simgrid(exe, tmp_path, fabric, fs, start, size, latency)
    rel = np.abs(ours - theirs) / np.abs(theirs)
    assert rel.max() <= RTOL, f"worst flow {rel.argmax()}: ours {ours[rel.argmax()]!r}, SimGrid {theirs[rel.argmax()]!r}"
    if unweighted is not None:   # with unequal latencies CM02's 1/latency weights matter (RTT unfairness)
        plain = simulate(fabric.capacity, start, size, fs.routes, lat)
        assert (np.abs(plain - theirs).max() > 0.1 * theirs.max()) == unweighted
    return ours, theirs


def test_shared_link_incast_on_a_switch(flows_exe, tmp_path):
    # three senders into one receive port, different sizes and start times
    ours, _ = _compare(flows_exe, tmp_path, "switch:4", [1, 2, 3], [0, 0, 0], [0.0, 3.0, 7.5],
                       [1 << 20, 300_000, 777_777])
    assert len(set(ours.tolist())) == 3


def test_shared_link_on_a_ring(flows_exe, tmp_path):
    # flows of 1 and 2 hops share link 1->2; equal latencies per hop count
    _compare(flows_exe, tmp_path, "ring:8", [1, 0, 1, 2], [2, 2, 3, 3], [0.0, 0.0, 2.0, 5.0],
             [400_000, 900_000, 250_000, 123_456])


@pytest.mark.parametrize("latency", [False, True])
def test_parking_lot(flows_exe, tmp_path, latency):
    # a long flow over 4 links (0 -> 4) and one short flow on each of them
    _compare(flows_exe, tmp_path, "ring:10", [0, 0, 1, 2, 3], [4, 1, 2, 3, 4], 0.0,
             [1_000_000, 200_000, 400_000, 600_000, 800_000], latency=latency, unweighted=latency)


def test_torus_rows(flows_exe, tmp_path):
    # every node of a 16x8 torus sends 3 hops along its row (dimension 1), plus random cross traffic
    rng = np.random.default_rng(7)
    topo = parse_topology("torus:16x8")
    src = np.arange(topo.nodes)
    dst = topo.neighbor(src, 1, 3)
    xs = rng.integers(0, topo.nodes, 64)
    xd = (xs + rng.integers(1, topo.nodes, 64)) % topo.nodes
    src, dst = np.concatenate([src, xs]), np.concatenate([dst, xd])
    size = rng.integers(1, 1 << 20, len(src))
    start = np.round(rng.uniform(0, 50, len(src)), 3)
    _compare(flows_exe, tmp_path, "torus:16x8", src, dst, start, size)


def test_random_flows_on_a_3d_torus(flows_exe, tmp_path):
    rng = np.random.default_rng(11)
    n = 64
    src = rng.integers(0, n, 256)
    dst = (src + rng.integers(1, n, 256)) % n
    _compare(flows_exe, tmp_path, "torus:4x4x4", src, dst, np.round(rng.uniform(0, 100, 256), 2),
             rng.integers(0, 1 << 20, 256), overrides=("link.bandwidth_GBps=25",))


@pytest.mark.parametrize("pattern", ["burst", "random-sizes", "random-arrivals"])
def test_bench_patterns_on_an_8_cubed_torus(flows_exe, tmp_path, pattern):
    # 512 flows to random destinations (the patterns of scripts/bench_fabric.py, at 1/8 of its scale)
    case = make_case(pattern, "torus:8^3", 512, seed=3)
    ours, _ = run_model(case, weighted=True)
    theirs, _ = run_simgrid(flows_exe, tmp_path, case.fabric, case.flows, case.start_us, case.nbytes)
    assert np.max(np.abs(ours - theirs) / theirs) <= RTOL
