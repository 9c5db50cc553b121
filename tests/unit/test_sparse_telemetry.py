"""Telemetry of the spot protocol (collectives/model/sparse/telemetry.py): the ports add up to the call's
wire and framed bytes, busy times match the Timing's, telemetry changes no time, and the traced
endpoints' events are consistent (no overlap on a track, bytes matching the per-resource counts)."""

import json

import numpy as np
import pytest

from nicemu.collectives import model_sparse, plan_sparse, sparse_config, time_sparse_plan
from nicemu.collectives.registry import names
from nicemu.collectives.schedules.spot_protocol import CREDIT_BYTES
from nicemu.nic.profile import load_profile
from nicemu.nic.telemetry import HOST, KINDS, LINK, NIC, READ, RX_SPOT, TX_SPOT, WRITE

SPARSE = names(kind="sparse")
PAPER = load_profile("omniccl-paper")
FRAMED = load_profile("omniccl-paper", ["link.header_bytes=64", "nic.packet_bytes=512"])
SMALL = {"block_size": 4, "aggregators": 2, "spots": 2, "spot_blocks": 2, "tx_spots": 1}


def masks_of(nodes: int, density: float, blocks: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + nodes).random((nodes, blocks)) < density


def check_totals(t, s, threads=1):
    """The ports add up to wire and framed bytes; busy never exceeds the span (a host's: the span times
    its threads, whose busy time it sums, as ``host_busy_us`` does); max busy is the Timing's."""
    assert s.link_bytes.sum() == t.wire_bytes
    assert s.link_framed.sum() == t.framed_bytes
    assert s.resource_busy_us[HOST].max() == t.host_busy_us
    assert s.resource_busy_us[NIC].max() == t.nic_busy_us
    assert s.switched and s.ndim == 1 and not s.link_bytes[:, 0, 1].any()
    assert (s.link_busy_us <= t.emulated_us).all()
    others = [k for k in range(len(s.resource_busy_us)) if k != HOST]
    assert (s.resource_busy_us[others] <= t.emulated_us).all()
    assert (s.resource_busy_us[HOST] <= t.emulated_us * threads).all()
    for table in (s.link_table(), s.resource_table()):
        assert ((table["utilization"] >= 0) & (table["utilization"] <= 1)).all()
    assert (s.resource_bytes >= 0).all() and (s.resource_busy_us >= 0).all()


@pytest.mark.parametrize("profile", [PAPER, FRAMED], ids=["plain", "headers"])
@pytest.mark.parametrize("options", [{}, SMALL], ids=["default", "small"])
@pytest.mark.parametrize("nodes", [2, 3, 5])
@pytest.mark.parametrize("algo", SPARSE)
def test_ports_add_up_and_times_do_not_change(algo, nodes, options, profile):
    cfg = sparse_config(algo, nodes, **{k: min(v, nodes) if k == "aggregators" else v for k, v in options.items()})
    for density in (1.0, 0.5, 0.1, 0.0):
        masks = masks_of(nodes, density)
        plain = model_sparse(cfg, masks, profile, 4)
        watched = model_sparse(cfg, masks, profile, 4, telemetry=True)
        traced = model_sparse(cfg, masks, profile, 4, trace_nodes="all")
        assert plain.telemetry is None and watched.telemetry.events is None
        for t in (watched, traced):
            assert t.emulated_us == plain.emulated_us and np.array_equal(t.node_done_us, plain.node_done_us)
            assert (t.wire_bytes, t.framed_bytes, t.host_busy_us, t.nic_busy_us) == \
                (plain.wire_bytes, plain.framed_bytes, plain.host_busy_us, plain.nic_busy_us)
            check_totals(t, t.telemetry, cfg.host_threads)
        ws, ts = watched.telemetry, traced.telemetry
        for name in ("link_bytes", "link_framed", "link_busy_us", "resource_bytes", "resource_busy_us"):
            assert np.array_equal(getattr(ws, name), getattr(ts, name)), name
        endpoints = nodes + (cfg.aggregators or nodes if cfg.aggregation == "dedicated" else 0)
        assert ws.nodes == endpoints


def test_link_busy_is_framed_bytes_times_the_link_rate():
    t = model_sparse("omniccl", masks_of(4, 0.5), FRAMED, 4, telemetry=True)
    s = t.telemetry
    beta = 1e-3 / FRAMED.link.bandwidth_GBps
    assert np.allclose(s.link_busy_us[:, 0, 0], s.link_framed[:, 0, 0] * beta, rtol=1e-12, atol=0)
    assert s.link_framed.sum() > s.link_bytes.sum()


@pytest.mark.parametrize("algo", SPARSE)
def test_faults_stragglers_and_spill(algo):
    masks = masks_of(5, 0.4, blocks=40)
    profile = load_profile("omniccl-paper", ["nic.memory_KiB=1"])
    cfg = sparse_config(algo, 5, block_size=8, spot_blocks=2, spots=4)
    for kw in ({"faults": "drop=0.05,corrupt=0.02,seed=3"}, {"stragglers": "1:3.5"},
               {"faults": "drop=0.1,seed=1", "stragglers": {0: 2.0, 4: 1.5}}):
        plain = model_sparse(cfg, masks, profile, 4, **kw)
        traced = model_sparse(cfg, masks, profile, 4, trace_nodes="0-4", **kw)
        assert traced.emulated_us == plain.emulated_us and traced.nic_busy_us == plain.nic_busy_us
        check_totals(traced, traced.telemetry, cfg.host_threads)
        check_events(traced.telemetry)
    if algo == "omniccl":
        assert plain.spilled and traced.telemetry.resource_bytes[WRITE].sum() > 0


def test_a_host_with_threads_sums_their_busy_time_each_thread_fits_the_span():
    """OmniReduce's aggregators run 8 threads: ``host_busy_us`` (and the host resource) adds them up,
    so it may exceed the span; each thread's events (its own track) fit in it."""
    masks = np.random.default_rng(5).random((7, 300)) < 0.9
    t = model_sparse("omnireduce", masks, PAPER, 4, stragglers={2: 2.5}, trace_nodes="all")
    s = t.telemetry
    assert s.resource_busy_us[HOST].max() == t.host_busy_us > t.emulated_us
    ev = s.events
    host = ev["kind"] == HOST
    per_thread = np.zeros((s.nodes, 8))
    np.add.at(per_thread, (ev["node"][host], ev["lane"][host]), ev["end"][host] - ev["start"][host])
    assert per_thread.max() <= t.emulated_us
    assert np.allclose(per_thread.sum(axis=1), s.resource_busy_us[HOST], rtol=1e-9, atol=1e-9)


def test_time_sparse_plan_takes_telemetry_too():
    masks = masks_of(4, 0.3)
    plan = plan_sparse("omnireduce", masks)
    a = time_sparse_plan(plan, PAPER, 4, telemetry=True)
    b = model_sparse("omnireduce", masks, PAPER, 4, telemetry=True)
    assert a.emulated_us == b.emulated_us
    assert np.array_equal(a.telemetry.link_bytes, b.telemetry.link_bytes)
    assert np.array_equal(a.telemetry.resource_busy_us, b.telemetry.resource_busy_us)


def check_events(s):
    """Durations >= 0 and no two events of one track (endpoint, kind, lane) overlap."""
    ev = s.events
    assert (ev["end"] >= ev["start"]).all() and np.isfinite(ev["start"]).all()
    key = ev["node"] * 1_000_000 + ev["kind"] * 100_000 + ev["lane"]
    order = np.lexsort((ev["start"], key))
    k, st, en = key[order], ev["start"][order], ev["end"][order]
    same = k[1:] == k[:-1]
    assert (st[1:][same] >= en[:-1][same]).all(), "two events of one track overlap"
    assert len(ev["steps"]) > 0 and set(np.unique(ev["side"]).tolist()) <= {0, 1}
    assert ev["step"].max() < len(ev["steps"])


def credits_back(algo: str, cfg, masks) -> np.ndarray:
    """Tx credits each worker returns: one per slot of every round it does not aggregate (not traced)."""
    plan = plan_sparse(cfg, masks)
    n = masks.shape[0]
    out = np.zeros(n)
    for r in plan.rounds:
        out += len(r.slots)
        if cfg.aggregation != "dedicated":
            out -= np.bincount(plan.layout.aggregator_node[plan.layout.slot_agg[r.slots]], minlength=n)
    return out * CREDIT_BYTES


@pytest.mark.parametrize("algo", SPARSE)
@pytest.mark.parametrize("options", [{}, SMALL], ids=["default", "small"])
def test_trace_events_match_the_counts(algo, options):
    nodes = 4
    cfg = sparse_config(algo, nodes, **options)
    masks = masks_of(nodes, 0.5, blocks=30)
    t = model_sparse(cfg, masks, PAPER, 4, trace_nodes="all")
    s = t.telemetry
    check_events(s)
    ev = s.events
    per = {kind: np.bincount(ev["node"][ev["kind"] == kind], weights=ev["bytes"][ev["kind"] == kind],
                             minlength=s.nodes) for kind in range(len(KINDS))}
    # every message on a port is an event, but the Tx credits the workers return (not queued on the link)
    back = np.zeros(s.nodes)
    back[:nodes] = credits_back(algo, cfg, masks)
    assert np.array_equal(per[LINK] + back, s.link_bytes[:, 0, 0])
    # the NIC engine's passes and a worker's DMA reads of its records are all events
    assert np.array_equal(per[NIC], s.resource_bytes[NIC])
    if cfg.aggregation == "nic":
        assert np.array_equal(per[READ], s.resource_bytes[READ])
        assert np.array_equal(per[WRITE], s.resource_bytes[WRITE])
    assert (np.bincount(ev["kind"], minlength=len(KINDS))[[LINK, READ, WRITE, RX_SPOT, TX_SPOT]] > 0).all()
    # each Rx spot of every round is one event: rounds x active slots with records
    assert np.count_nonzero(ev["kind"] == RX_SPOT) <= sum(n["slots"] for n in ev["steps"])


def test_partial_trace_keeps_only_traced_endpoints_and_writes_a_chrome_trace(tmp_path):
    masks = masks_of(6, 0.5, blocks=30)
    t = model_sparse("omnireduce", masks, PAPER, 4, trace_nodes=[1, 4])
    ev = t.telemetry.events
    # dedicated aggregator a (endpoint 6 + a) is traced with node a
    assert set(np.unique(ev["node"]).tolist()) == {1, 4, 7, 10}
    path = tmp_path / "t.json"
    count = t.telemetry.write_trace(str(path), "omnireduce 120", "omnireduce", 120)
    doc = json.loads(path.read_text())["traceEvents"]
    assert count == len(ev["kind"]) == sum(1 for e in doc if e["ph"] == "X")
    tracks = {e["args"]["name"] for e in doc if e.get("name") == "thread_name"}
    assert {"link -> switch", "PCIe read (host to NIC)", "PCIe write (NIC to host)"} <= tracks
    assert all(any(n.startswith(p) for n in tracks) for p in ("host CPU", "Rx spot ", "Tx spot "))
    names_ = {e["name"].rsplit(" ", 1)[0] for e in doc if e["ph"] == "X"}
    assert names_ == {"upstream round", "downstream round"}


def test_bench_writes_link_stats_and_trace_for_sparse(tmp_path, capsys):
    from nicemu.cli import main
    stats, trace = tmp_path / "x.json", tmp_path / "t.json"
    assert main(["bench", "--executor", "model", "--topology", "ring:4", "--algo", "omniccl,omnireduce",
                 "--sizes", "16K", "--density", "0.5", "--link-stats", str(stats), "--link-summary",
                 "--trace", str(trace), "--json", str(tmp_path / "r.json")]) == 0
    recs = json.loads((tmp_path / "r.json").read_text())
    links = json.loads(stats.read_text())
    assert [e["algo"] for e in links] == ["omniccl", "omnireduce"]
    for rec, entry in zip(recs, links):
        assert sum(link["bytes"] for link in entry["links"]) == rec["wire_bytes"]
        assert all(link["dst"] == -1 and 0 <= link["utilization"] <= 1 for link in entry["links"])
    assert len(links[1]["links"]) == 8          # 4 workers + 4 dedicated aggregators
    assert any(e["ph"] == "X" for e in json.loads(trace.read_text())["traceEvents"])
    assert "links d0 +1" in capsys.readouterr().out
