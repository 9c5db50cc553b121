"""Per-link and per-resource telemetry (nic/telemetry.py) and the Chrome trace (nic/trace.py), model executor.

Consistency with the rest of the timing on every dense algorithm, collective and topology kind (the
links' bytes add up to ``wire_bytes``, busy times never exceed the call, the busiest host and NIC equal
``host_busy_us`` and ``nic_busy_us``, and watching changes no time), closed forms for the ring, an
independent hop-by-hop count of routed transfers, and the trace-event format.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nicemu.collectives import build_schedule, model_time, segment_elems
from nicemu.collectives.api.checks import trace_mask
from nicemu.collectives.model.executor import run_model
from nicemu.collectives.registry import REGISTRY, is_sparse
from nicemu.errors import CollectiveError
from nicemu.nic.profile import load_profile
from nicemu.nic.telemetry import LINK, READ, RESOURCES, WRITE
from nicemu.nic.trace import write_trace
from nicemu.topologies import parse_topology
from tests.trace_format import check_trace_format

TOPOLOGIES = ["ring:8", "ring:5", "torus:3x4", "torus:2x2x3", "switch:6"]
PROFILES = ["ideal", "directreduce-paper", "400g-gen5"]
DENSE = [a for a, e in REGISTRY.items() if not is_sparse(a) and e.scheduled]


def cases():
    out = []
    for algo in DENSE:
        for coll in REGISTRY[algo].collectives:
            for topo in TOPOLOGIES:
                out.append((algo, coll, topo))
    return out


def schedule_of(algo, coll, topo, profile, count, per_node=1):
    t = parse_topology(topo).with_ranks_per_node(per_node)
    if coll == "alltoall":
        count = count // t.nodes * t.nodes
    return build_schedule(coll, algo, t, count, profile.topology.bidirectional, segment_elems(profile, 4))


def check_consistent(plain, watched):
    st = watched.telemetry
    assert watched.emulated_us == plain.emulated_us
    np.testing.assert_array_equal(watched.node_done_us, plain.node_done_us)
    assert int(st.link_bytes.sum()) == plain.wire_bytes
    assert int(round(st.link_framed.sum())) == plain.framed_bytes
    span = plain.emulated_us
    assert st.link_busy_us.max(initial=0.0) <= span * (1 + 1e-12)
    assert st.resource_busy_us.max(initial=0.0) <= span * (1 + 1e-12)
    host, nic = RESOURCES.index("host"), RESOURCES.index("nic")
    assert st.resource_busy_us[host].max() == pytest.approx(plain.host_busy_us, rel=1e-12, abs=1e-12)
    assert st.resource_busy_us[nic].max() == pytest.approx(plain.nic_busy_us, rel=1e-12, abs=1e-12)
    links = st.link_table()
    assert np.all((links["utilization"] >= 0) & (links["utilization"] <= 1))
    assert int(links["bytes"].sum()) == plain.wire_bytes
    res = st.resource_table()
    assert np.all((res["utilization"] >= 0) & (res["utilization"] <= 1))


@pytest.mark.parametrize("algo, coll, topo", cases())
@pytest.mark.parametrize("profile_name", PROFILES)
def test_links_add_up_to_wire_bytes(algo, coll, topo, profile_name):
    profile = load_profile(profile_name)
    try:
        schedule = schedule_of(algo, coll, topo, profile, 6000)
    except CollectiveError:
        pytest.skip(f"{algo} does not run {coll} on {topo}")
    plain = run_model(schedule, profile, 4)
    check_consistent(plain, run_model(schedule, profile, 4, telemetry=True))


@pytest.mark.parametrize("algo", ["ring", "directreduce", "rabenseifner", "tree", "ring-pipelined"])
@pytest.mark.parametrize("per_node", [2, 3])
def test_ranks_per_node_links(algo, per_node):
    profile = load_profile("directreduce-paper")
    schedule = schedule_of(algo, "allreduce", "torus:2x3", profile, 6 * 1024, per_node)
    plain = run_model(schedule, profile, 4)
    check_consistent(plain, run_model(schedule, profile, 4, telemetry=True))


def test_faults_and_stragglers_keep_the_sums():
    profile = load_profile("directreduce-paper")
    t = model_time("allreduce", "ring", "ring:6", profile, 1 << 16, faults="drop=1e-3,seed=3",
                   stragglers="2:3")
    w = model_time("allreduce", "ring", "ring:6", profile, 1 << 16, faults="drop=1e-3,seed=3",
                   stragglers="2:3", telemetry=True)
    check_consistent(t, w)


def test_ring_closed_form():
    """Unidirectional ring AllReduce on ring:N: every +1 link carries 2(N-1) chunks of M/N, busy at β."""
    profile = load_profile("ideal")
    n, count = 8, 8 * 4096
    t = model_time("allreduce", "ring", f"ring:{n}", profile, count, telemetry=True)
    st = t.telemetry
    bidir = profile.topology.bidirectional
    per_link = 2 * (n - 1) * count * 4 // n
    if bidir:
        np.testing.assert_array_equal(st.link_bytes[:, 0, :].sum(axis=1), per_link)
    else:
        np.testing.assert_array_equal(st.link_bytes[:, 0, 0], per_link)
        np.testing.assert_array_equal(st.link_bytes[:, 0, 1], 0)
    beta = 1.0 / (profile.link.bandwidth_GBps * 1e3)
    np.testing.assert_allclose(st.link_busy_us, st.link_bytes * beta, rtol=1e-15)


def hop_count(topology, src, dst, nbytes):
    """Links crossed by src -> dst with dimension-ordered shortest routing (ties go +1), counted by
    walking one hop at a time with Torus.neighbor (independent of the vectorised code)."""
    out = np.zeros((topology.nodes, topology.ndim, 2))
    for s, d, b in zip(src.tolist(), dst.tolist(), nbytes.tolist()):
        here = s
        for dim, k in enumerate(topology.shape):
            want = int(topology.ring_position(d, dim))
            while int(topology.ring_position(here, dim)) != want:
                delta = (want - int(topology.ring_position(here, dim))) % k
                step = 1 if delta <= k - delta else -1
                out[here, dim, 0 if step > 0 else 1] += b
                here = int(topology.neighbor(here, dim, step))
    return out


@pytest.mark.parametrize("algo", ["recursive-doubling", "rabenseifner", "tree"])
@pytest.mark.parametrize("topo", ["ring:8", "ring:7", "torus:3x4", "torus:2x2x2"])
def test_routed_links_hop_by_hop(algo, topo):
    profile = load_profile("ideal")
    topology = parse_topology(topo)
    schedule = build_schedule("allreduce", algo, topology, 1200, profile.topology.bidirectional)
    want = np.zeros((topology.nodes, topology.ndim, 2))
    for step in schedule.steps():
        want += hop_count(topology, step.src, step.dst, step.count * 4)
    got = run_model(schedule, profile, 4, telemetry=True).telemetry.link_bytes
    np.testing.assert_array_equal(got, want)


def test_switch_ports():
    """On a switch each node has one port (slot 0): a transfer counts once, on its sender's port."""
    profile = load_profile("ideal")
    schedule = build_schedule("allreduce", "recursive-doubling", parse_topology("switch:6"), 600, False)
    st = run_model(schedule, profile, 4, telemetry=True).telemetry
    want = np.zeros(6)
    for step in schedule.steps():
        np.add.at(want, step.src, step.count * 4)
    np.testing.assert_array_equal(st.link_bytes[:, 0, 0], want)
    assert not st.link_bytes[:, 0, 1].any()
    table = st.link_table()
    assert set(table["dst"].tolist()) == {-1} and len(table["src"]) == 6


def test_summary_names_the_hottest_links():
    profile = load_profile("directreduce-paper")
    st = model_time("allreduce", "rabenseifner", "torus:3x4", profile, 12 * 256, telemetry=True).telemetry
    util = st.utilization(st.link_busy_us)
    for s in st.summary():
        slot = 0 if s["dir"] > 0 else 1
        u = util[:, s["dim"], slot]
        assert s["util_max"] == pytest.approx(u.max()) and s["util_min"] == pytest.approx(u.min())
        assert s["bytes"] == int(st.link_bytes[:, s["dim"], slot].sum())
        if s["hottest"]:
            assert s["hottest"][0]["utilization"] == pytest.approx(u.max())


# ---- the trace --------------------------------------------------------------------------------------


def traced(algo, topo="ring:8", size=1 << 18, nodes="0-3", profile="directreduce-paper"):
    return model_time("allreduce", algo, topo, load_profile(profile), size // 4, trace_nodes=nodes)


def test_trace_shows_the_nic_overlapping_the_link_and_the_host_idle(tmp_path):
    """DirectReduce: the NIC engine works while the link streams and the host does nothing; the host
    ring: the host reduces between transfers, never while its incoming chunk is still on the link."""
    dr, ring = traced("directreduce"), traced("ring")
    path = tmp_path / "t.json"
    write_trace(str(path), [{"label": "directreduce 256K", "algo": "directreduce", "bytes": 1 << 18,
                             "stats": dr.telemetry},
                            {"label": "ring 256K", "algo": "ring", "bytes": 1 << 18, "stats": ring.telemetry}])
    doc = json.loads(path.read_text())
    check_trace_format(doc)
    pnames = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "process_name"}
    assert sorted(pnames.values()) == sorted([f"{a} 256K · node {n}" for a in ("directreduce", "ring")
                                              for n in range(4)])
    ev = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    for e in ev:
        assert {"step", "bytes", "algo", "phase"} <= set(e["args"])
    dr_ev = [e for e in ev if pnames[e["pid"]].startswith("directreduce")]
    assert not [e for e in dr_ev if e["cat"] == "host"]
    nic = [e for e in dr_ev if e["cat"] == "nic" and pnames[e["pid"]].endswith("node 1")]
    link_in = [e for e in dr_ev if e["cat"] == "link" and pnames[e["pid"]].endswith("node 0")]
    assert nic and link_in
    overlap = sum(max(0.0, min(a["ts"] + a["dur"], b["ts"] + b["dur"]) - max(a["ts"], b["ts"]))
                  for a in nic for b in link_in)
    assert overlap > 0.5 * sum(e["dur"] for e in nic)
    ring_ev = [e for e in ev if pnames[e["pid"]] == "ring 256K · node 1"]
    host = [e for e in ring_ev if e["cat"] == "host"]
    writes = [e for e in ring_ev if e["cat"] == "pcie_write"]
    assert len(host) == 14 and len(writes) == 14
    for h in host:      # every pass starts after the PCIe write of its chunk has ended
        assert any(w["ts"] + w["dur"] <= h["ts"] + 1e-9 and w["args"]["step"] == h["args"]["step"] for w in writes)


def test_trace_events_match_the_chunks():
    t = traced("ring", nodes="all")
    ev = t.telemetry.events
    steps = ev["steps"]
    assert len(steps) == 14
    for kind, node, step, side, nbytes in zip(ev["kind"], ev["node"], ev["step"], ev["side"], ev["bytes"]):
        chunk = steps[step]["send" if side == 0 else "recv"][int(node)]
        if kind in (READ, LINK, WRITE):     # PCIe read, link, PCIe write carry the whole chunk
            assert nbytes == chunk[1]


def test_trace_nodes_limit_the_events():
    every = traced("ring", nodes="all").telemetry.events
    some = traced("ring", nodes="2,5").telemetry.events
    assert set(some["node"].tolist()) == {2, 5}
    keep = np.isin(every["node"], [2, 5])
    np.testing.assert_array_equal(np.sort(every["start"][keep]), np.sort(some["start"]))


@pytest.mark.parametrize("spec, nodes, want", [(None, 20, list(range(8))), ("0-2,7", 10, [0, 1, 2, 7]),
                                               ("all", 3, [0, 1, 2]), ([4, 1], 5, [1, 4]), ("3", 4, [3])])
def test_trace_mask(spec, nodes, want):
    assert np.flatnonzero(trace_mask(spec, nodes)).tolist() == want


@pytest.mark.parametrize("spec, words", [("0-x", "not a node"), ("5-2", "backwards"), ("9", "outside 0..7"),
                                         ("", "not a node"), ([], "empty")])
def test_trace_mask_errors(spec, words):
    with pytest.raises(CollectiveError, match=words):
        trace_mask(spec, 8)
