"""Concurrent calls on a shared fabric (nic/fabric_replay.py, collectives/model/concurrent.py): the replay
against hand-computed timelines, one call alone against the model executor exactly, and several calls
against closed forms under ``ideal``."""

from __future__ import annotations

import numpy as np
import pytest

from nicemu.collectives.api.model import build_schedule, segment_elems
from nicemu.collectives.model.concurrent import (
    Call,
    _expand,
    _placed,
    _replay,
    call_flows,
    place,
    resource_name,
    run_concurrent,
)
from nicemu.collectives.model.executor import run_model
from nicemu.collectives.model.fabric import Fabric
from nicemu.errors import CollectiveError
from nicemu.nic.fabric import FabricError, Routes
from nicemu.nic.fabric_replay import Edges, replay
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

NONE = Edges.from_pairs(0, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def _edges(flows, pairs):
    src = np.array([p[0] for p in pairs], dtype=np.int64)
    dst = np.array([p[1] for p in pairs], dtype=np.int64)
    return Edges.from_pairs(flows, src, dst)


# --- the replay on hand-made flows --------------------------------------------------------------------------


def test_two_equal_flows_on_one_link_each_take_twice_as_long():
    out = replay(np.array([10.0]), Routes.from_lists([[0], [0]]), np.zeros(2), np.full(2, 5.0),
                 np.full(2, 10.0), _edges(2, []), _edges(2, []))
    assert out.end_delay.tolist() == [5.0, 5.0]
    assert out.start_delay.tolist() == [0.0, 0.0]
    assert out.slowed.all()


def test_a_flow_held_down_by_its_alone_rate_leaves_the_rest_to_the_other():
    # flow 0 ran alone at 2.5 bytes/µs (something else held it down); flow 1 at the full 10
    # sharing: flow 0 keeps 2.5, flow 1 gets 7.5 until flow 0 ends at 4 (10 bytes), then 10.
    out = replay(np.array([10.0]), Routes.from_lists([[0], [0]]), np.zeros(2), np.array([4.0, 3.0]),
                 np.array([2.5, 10.0]), _edges(2, []), _edges(2, []))
    assert out.end_delay[0] == 0.0 and not out.slowed[0]
    # flow 1 moves 30 bytes: 7.5 * 4 = 30, so it ends at 4.0 (alone: 3.0)
    assert out.end_delay[1] == pytest.approx(1.0, rel=1e-12)


def test_dependencies_keep_their_gaps():
    # flow 0 [0, 10] shares link 0 with flow 2 [0, 10]; flow 1 starts 2 µs after flow 0 ends (alone: [12, 20])
    # on link 1, and flow 3 starts with flow 0's start + 1 (a forwarded stream, alone [1, 11]) on link 1 too
    routes = Routes.from_lists([[0], [1], [0], [2]])
    out = replay(np.array([1.0, 1.0, 1.0]), routes, np.array([0.0, 12.0, 0.0, 1.0]),
                 np.array([10.0, 20.0, 10.0, 11.0]), np.ones(4), _edges(4, [(0, 1)]), _edges(4, [(0, 3)]))
    assert out.end_delay[0] == pytest.approx(10.0)       # shared with flow 2: 20 instead of 10
    assert out.start_delay[1] == pytest.approx(10.0)     # the gap of 2 µs is kept: starts at 22
    assert out.end_delay[1] == out.start_delay[1]        # alone on link 1 afterwards
    assert out.start_delay[3] == 0.0 and out.end_delay[3] == 0.0   # flow 0's start was not delayed


def test_empty_windows_take_no_time_and_pass_delays_on():
    routes = Routes.from_lists([[0], [0], [1], [1]])
    out = replay(np.array([1.0, 1.0]), routes, np.array([0.0, 0.0, 10.0, 11.0]), np.array([5.0, 5.0, 10.0, 12.0]),
                 np.ones(4), _edges(4, [(0, 2), (2, 3)]), _edges(4, []))
    assert out.end_delay[2] == pytest.approx(5.0)       # one-packet flow: delayed, but no time of its own
    assert out.end_delay[3] == pytest.approx(5.0)


def test_a_cycle_is_an_error():
    with pytest.raises(FabricError, match="cycle"):
        replay(np.array([1.0]), Routes.from_lists([[0], [0]]), np.zeros(2), np.ones(2), np.ones(2),
               _edges(2, [(0, 1), (1, 0)]), _edges(2, []))


# --- one call alone: exactly the model executor -------------------------------------------------------------

RINGS = ("ring", "directreduce", "ring-pipelined", "directreduce-pipelined")
ALGOS = (*RINGS, "recursive-doubling", "rabenseifner")


def _schedule(algo, topo, prof, nbytes, collective="allreduce"):
    return build_schedule(collective, algo, topo, nbytes // 4, prof.topology.bidirectional,
                          segment_elems(prof, 4, algo, collective, topo))


@pytest.mark.parametrize("spec", ["ring:5", "torus:3x4", "switch:6"])
@pytest.mark.parametrize("profile", ["ideal", "400g-gen5", "directreduce-paper"])
@pytest.mark.parametrize("algo", RINGS)
def test_a_ring_replayed_alone_is_never_slowed(spec, profile, algo):
    """The replay itself, not only the short cut: every flow keeps its alone rate, every delay is 0. (Routed
    algorithms are not: their step model shares a link only among one step's messages, §21.6.)"""
    topo, prof = parse_topology(spec), load_profile(profile)
    sched = _schedule(algo, topo, prof, 3 << 20)
    a = call_flows(sched, prof, 4)
    fab = Fabric(topo, prof)
    call = Call(sched, np.arange(topo.nodes), 4)
    delays, slowed = _replay([_expand(call, a, *_placed(fab, call, a))], fab)
    assert slowed == [0]
    assert not delays[0].any()
    assert np.array_equal(a.node_done, run_model(sched, prof, 4).node_done_us)


@pytest.mark.parametrize("algo", (*ALGOS, "tree"))
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather"])
def test_one_call_on_the_fabric_gives_exactly_its_alone_time(algo, collective):
    topo, prof = parse_topology("torus:4x3"), load_profile("400g-gen5")
    if collective != "allreduce" and algo in ("tree", "recursive-doubling"):
        pytest.skip(f"{algo} has no {collective}")
    sched = _schedule(algo, topo, prof, 12 * 4096 * 8, collective)
    (one,) = run_concurrent([Call(sched, np.arange(topo.nodes), 4)], topo, prof)
    alone = run_model(sched, prof, 4)
    assert one.emulated_us == alone.emulated_us
    assert np.array_equal(one.node_done_us, alone.node_done_us)
    assert one.slowdown_vs_alone == 1.0


def test_disjoint_rows_of_a_torus_keep_their_alone_times_exactly():
    topo, prof = parse_topology("torus:4x6"), load_profile("400g-gen5")
    calls = [Call(_schedule("directreduce", sub, prof, 6 << 20), nodes, 4) for sub, nodes in place(topo, prof, 4,
                                                                                                  "disjoint")]
    out = run_concurrent(calls, topo, prof)
    alone = run_model(calls[0].schedule, prof, 4).emulated_us
    assert [o.emulated_us for o in out] == [alone] * 4
    assert [o.slowed_flows for o in out] == [0] * 4


# --- several calls: closed forms under ideal ----------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 5, 8])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("algo", ["ring", "directreduce"])
def test_k_calls_on_the_same_ring_add_their_shared_stream_time(n, k, algo):
    """Under ``ideal`` the K calls' streams of a step start together and share each link equally: every one
    of the 2(N-1) steps takes (K-1)(B-p)/C longer (B the chunk, p the first packet, which the window does not
    hold). The ring's host passes of the N-1 reduce-scatter steps also start together and share the node's
    host cores (rate H): (K-1)B/H longer each. DirectReduce's NIC engine is free under ``ideal``."""
    topo, prof = parse_topology(f"ring:{n}"), load_profile("ideal")
    nbytes = n * 4096 * 64
    calls = [Call(_schedule(algo, sub, prof, nbytes), nodes, 4) for sub, nodes in place(topo, prof, k, "same")]
    out = run_concurrent(calls, topo, prof)
    chunk, packet, cap = nbytes // n, prof.nic.packet_bytes, prof.link.bandwidth_GBps * 1e3
    host = (n - 1) * chunk / (prof.host.reduce_GBps * 1e3) if algo == "ring" else 0.0
    expect = out[0].alone_us + (k - 1) * (2 * (n - 1) * (chunk - packet) / cap + host)
    assert [o.emulated_us for o in out] == pytest.approx([expect] * k, rel=1e-12)


@pytest.mark.parametrize("n,k", [(8, 2), (12, 3), (12, 4)])
def test_interleaved_rings_share_every_link(n, k):
    """Call j on nodes j, j+k, ...: each logical hop crosses k links (k latencies), and each link carries one
    hop of every call, so the k streams of a step share it: (k-1)(B-p)/C more per step than alone."""
    topo, prof = parse_topology(f"ring:{n}"), load_profile("ideal")
    groups = place(topo, prof, k, "interleaved")
    m = n // k
    assert [g[1].tolist() for g in groups] == [list(range(j, n, k)) for j in range(k)]
    assert groups[0][0].link_params(0, None).latency_us == k * prof.link.latency_us
    nbytes = m * 4096 * 16
    calls = [Call(_schedule("ring", sub, prof, nbytes), nodes, 4) for sub, nodes in groups]
    out = run_concurrent(calls, topo, prof)
    alone = run_model(calls[0].schedule, prof, 4).emulated_us
    chunk, packet, cap = nbytes // m, prof.nic.packet_bytes, prof.link.bandwidth_GBps * 1e3
    assert [o.emulated_us for o in out] == pytest.approx([alone + (k - 1) * 2 * (m - 1) * (chunk - packet) / cap] * k,
                                                         rel=1e-12)


_NODE_RATES = ("pcie.bandwidth_GBps", "nic.reduce_GBps", "host.reduce_GBps", "host.memory_GBps")


@pytest.mark.parametrize("algo,key,shared", [("directreduce", "nic.reduce_GBps", 15.0),
                                              ("ring", "pcie.bandwidth_GBps", 20.0),
                                              ("ring", "host.reduce_GBps", 20.0),
                                              ("ring", "host.memory_GBps", 40.0)])
def test_two_rings_through_one_node_share_its_resources(algo, key, shared):
    """A row ring and a column ring of torus:4x4 share no link, only node 0. One of its resources is finite
    (the others free, as in ``ideal``): its NIC engine (DirectReduce reduces every incoming chunk), its PCIe
    (the host ring reads every chunk it sends and writes every one it receives), its host cores (the ring's
    passes) or its DRAM. Finite, it slows both calls; free, both keep their alone times exactly."""
    topo = parse_topology("torus:4x4")
    row, col = parse_topology("ring:4"), parse_topology("ring:4")
    times = {}
    for rate in (shared, ".inf"):
        prof = load_profile("directreduce-paper", [f"{k}=.inf" for k in _NODE_RATES if k != key] + [f"{key}={rate}"])
        calls = [Call(_schedule(algo, row, prof, 4 << 20), np.arange(4), 4),
                 Call(_schedule(algo, col, prof, 4 << 20), np.arange(0, 16, 4), 4)]
        out = run_concurrent(calls, topo, prof)
        alone = run_model(calls[0].schedule, prof, 4).emulated_us
        times[rate] = [o.emulated_us / alone for o in out]
    assert min(times[shared]) > 1.01
    assert times[".inf"] == [1.0, 1.0]
    fab = Fabric(topo, load_profile("ideal"))
    assert resource_name(fab, len(fab.capacity) + 5 * 2 + 2) == "nic_reduce@2"


# --- placements -----------------------------------------------------------------------------------------------


def test_placements_and_their_errors():
    prof = load_profile("ideal")
    torus = parse_topology("torus:4x3x2")
    assert [g[1].tolist() for g in place(torus, prof, 4, "disjoint")] == [list(range(j * 6, j * 6 + 6))
                                                                         for j in range(4)]
    assert place(torus, prof, 12, "disjoint")[0][0].shape == (2,)
    assert [g[1].tolist() for g in place(parse_topology("switch:6"), prof, 2, "disjoint")] == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(CollectiveError, match="K in 4, 12"):
        place(torus, prof, 3, "disjoint")
    with pytest.raises(CollectiveError, match="no disjoint sub-rings"):
        place(parse_topology("ring:8"), prof, 2, "disjoint")
    with pytest.raises(CollectiveError, match="ring or a switch"):
        place(torus, prof, 2, "interleaved")
    with pytest.raises(CollectiveError, match="must divide"):
        place(parse_topology("ring:8"), prof, 3, "interleaved")
    with pytest.raises(CollectiveError, match="unknown placement"):
        place(torus, prof, 2, "mixed")
    with pytest.raises(CollectiveError, match="whole number >= 1"):
        place(torus, prof, 0, "same")


# --- start times and repeated calls (nicemu jobs) -------------------------------------------------------------


def test_repeated_calls_alone_add_up_and_calls_apart_in_time_do_not_meet():
    topo, prof = parse_topology("ring:6"), load_profile("400g-gen5")
    sched = _schedule("directreduce", topo, prof, 6 << 20)
    span = run_model(sched, prof, 4).emulated_us
    nodes = np.arange(6)
    (one,) = run_concurrent([Call(sched, nodes, 4, repeat=3, gap_us=10.0)], topo, prof)
    assert one.emulated_us == 2 * (span + 10.0) + span and one.slowdown_vs_alone == 1.0
    # the second call starts after the first has ended: they share every link, never at the same time
    a, b = run_concurrent([Call(sched, nodes, 4, repeat=2), Call(sched, nodes, 4, start_us=2 * span + 1.0)],
                          topo, prof)
    assert a.emulated_us == 2 * span and b.emulated_us == span


@pytest.mark.parametrize("reps", [1, 2, 5])
def test_repeated_calls_in_lock_step_share_every_iteration(reps):
    n, k = 5, 2
    topo, prof = parse_topology(f"ring:{n}"), load_profile("ideal")
    nbytes = n * 4096 * 32
    sched = _schedule("ring", topo, prof, nbytes)
    out = run_concurrent([Call(sched, np.arange(n), 4, repeat=reps) for _ in range(k)], topo, prof)
    span = run_model(sched, prof, 4).emulated_us
    chunk, packet, cap = nbytes // n, prof.nic.packet_bytes, prof.link.bandwidth_GBps * 1e3
    host = (n - 1) * chunk / (prof.host.reduce_GBps * 1e3)      # the reduce-scatter's host passes share cores
    expect = reps * (span + (k - 1) * (2 * (n - 1) * (chunk - packet) / cap + host))
    assert [o.emulated_us for o in out] == pytest.approx([expect] * k, rel=1e-12)
    assert out[0].alone_us == pytest.approx(reps * span, rel=1e-15)


def test_bad_repeats_and_starts_are_refused():
    topo, prof = parse_topology("ring:4"), load_profile("ideal")
    sched = _schedule("ring", topo, prof, 4 << 10)
    for bad in (dict(repeat=0), dict(repeat=1.5), dict(start_us=-1.0), dict(gap_us=float("nan"))):
        with pytest.raises(CollectiveError):
            run_concurrent([Call(sched, np.arange(4), 4, **bad)], topo, prof)


@pytest.mark.parametrize("seed", range(4))
def test_independent_flows_replay_as_the_checked_simulator_finishes_them(seed):
    """Without dependencies and with caps no resource can reach, the replay is plain max-min sharing: every
    flow ends when nic/fabric.py's simulate (checked against SimGrid and exact rationals) ends it."""
    from nicemu.nic.fabric import simulate
    rng = np.random.default_rng(seed)
    flows, resources = 60, 12
    cap = rng.uniform(1.0, 10.0, resources)
    routes = [sorted(rng.choice(resources, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(flows)]
    start = np.round(rng.uniform(0.0, 50.0, flows), 3)
    nbytes = np.round(rng.uniform(1.0, 200.0, flows), 3)
    want = simulate(cap, start, nbytes, routes)
    huge = 1e6                                   # a cap above every capacity: the flow is never held by it
    out = replay(cap, Routes.from_lists(routes), start, start + nbytes / huge, np.full(flows, huge),
                 _edges(flows, []), _edges(flows, []))
    assert np.allclose(start + nbytes / huge + out.end_delay, want, rtol=1e-9, atol=1e-9)


def test_work_flows_count_against_the_replays_size(monkeypatch):
    """The transfers are checked before timing; the flows with the receivers' work after. A limit between the
    two refuses the run in one line that names flows."""
    import nicemu.collectives.model.concurrent as concurrent
    topo, prof = parse_topology("ring:4"), load_profile("400g-gen5")
    sched = _schedule("ring", topo, prof, 4 << 20)
    a = call_flows(sched, prof, 4)
    k = int((a.slot < 0).sum())
    assert len(a.src) > 2 * k            # a DMA write and a host pass (and their DRAM) per received chunk
    monkeypatch.setattr(concurrent, "MAX_FLOWS", 2 * k)
    with pytest.raises(CollectiveError, match=r"make [\d,]+ flows \(transfers and their receivers' work"):
        run_concurrent([Call(sched, np.arange(4), 4)] * 2, topo, prof)
    monkeypatch.setattr(concurrent, "MAX_FLOWS", 2 * k - 1)
    with pytest.raises(CollectiveError, match=r"make [\d,]+ transfers, over"):
        run_concurrent([Call(sched, np.arange(4), 4)] * 2, topo, prof)


@pytest.mark.parametrize("profile", ["400g-gen5", "directreduce-paper"])
def test_work_flows_never_overlap_on_a_resource_within_a_call(profile):
    """Each node resource serves one stream at a time within a call (its busy-until clock), so a call's work
    flows on one resource are disjoint in time and none is faster than the resource."""
    from nicemu.collectives.model.concurrent import resource_capacity
    topo, prof = parse_topology("torus:4x4"), load_profile(profile)
    fab = Fabric(topo, prof)
    cap = resource_capacity(fab)
    for algo in ("ring", "directreduce", "ring-pipelined", "directreduce-pipelined"):
        sched = _schedule(algo, topo, prof, 8 << 20)
        a = call_flows(sched, prof, 4)
        w = np.flatnonzero(a.slot >= 0)
        assert len(w) and set(a.slot[w].tolist()) >= {1, 4}          # DMA writes and their DRAM traffic
        order = w[np.lexsort((a.first[w], a.slot[w], a.src[w]))]
        same = (a.src[order[1:]] == a.src[order[:-1]]) & (a.slot[order[1:]] == a.slot[order[:-1]])
        assert np.all(a.first[order[1:]][same] >= a.last[order[:-1]][same] - 1e-9 * a.last[order[:-1]][same])
        routes, rate = _placed(fab, Call(sched, np.arange(16), 4), a)
        rid = len(fab.capacity) + 5 * a.src[w] + a.slot[w]
        fin = np.isfinite(rate[w])      # the others load nothing (a host pass that only places data)
        assert np.all(rate[w][fin] <= cap[rid][fin])
        assert np.all(a.nbytes[w][~fin] / (a.last[w][~fin] - a.first[w][~fin]) > cap[rid][~fin])
        assert fin.sum() > len(w) // 2


@pytest.mark.parametrize("spec,k", [("ring:8", 2), ("ring:12", 3), ("ring:12", 4)])
def test_quiet_work_flows_replay_as_they_would_as_flows(spec, k, monkeypatch):
    """Calls on different nodes share links but no node resource: their work flows cannot be slowed, and
    replaying them as instant flows (node_work.quiet) gives the delays of replaying them as flows."""
    import nicemu.collectives.model.concurrent as concurrent
    topo, prof = parse_topology(spec), load_profile("400g-gen5")
    calls = [Call(_schedule("ring", sub, prof, 1 << 20), nodes, 4, start_us=3.0 * j)
             for j, (sub, nodes) in enumerate(place(topo, prof, k, "interleaved"))]
    quiet = run_concurrent(calls, topo, prof)
    monkeypatch.setattr(concurrent, "quiet", lambda parts, links: [p[2] for p in parts])
    flows = run_concurrent(calls, topo, prof)
    assert [q.emulated_us for q in quiet] == pytest.approx([f.emulated_us for f in flows], rel=1e-12)
    assert [q.slowed_flows for q in quiet] == [f.slowed_flows for f in flows]
    assert min(q.slowdown_vs_alone for q in quiet) > 1.0     # the calls do meet, on links


def test_a_host_pass_waits_for_the_dma_write_it_reduces():
    """Within a step group a node's services chain in the order the step model ran them: the ring's host pass
    starts after the DMA write of the chunk it reduces, so a write slowed by another call delays the pass."""
    topo, prof = parse_topology("ring:4"), load_profile("400g-gen5")
    a = call_flows(_schedule("ring", topo, prof, 4 << 20), prof, 4)
    host = np.flatnonzero(a.slot == 3)
    write = set(np.flatnonzero(a.slot == 1).tolist())
    after = {}
    for d, t in zip(*a.after_end):
        after.setdefault(int(t), set()).add(int(d))
    assert len(host) >= 4
    for h in host:
        waits = [d for d in after.get(int(h), ()) if d in write and a.src[d] == a.src[h]]
        assert waits and max(a.last[waits]) <= a.first[h], h
