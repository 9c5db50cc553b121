"""Chains of calls on one fabric (collectives/model/chains.py) and the slack of the replay's dependencies
(nic/fabric_replay.py): a chain alone keeps its alone times, two chains that meet agree with
``run_concurrent``, and idle time absorbs delay exactly."""

from __future__ import annotations

import numpy as np
import pytest

from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.chains import Chains
from nicemu.collectives.model.concurrent import Call, run_concurrent
from nicemu.collectives.model.p2p_timing import p2p_time
from nicemu.errors import CollectiveError
from nicemu.nic.fabric import FabricError, Routes
from nicemu.nic.fabric_replay import Edges, replay
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology


def _pairs(flows, pairs, slack=None):
    src = np.array([p[0] for p in pairs], dtype=np.int64)
    dst = np.array([p[1] for p in pairs], dtype=np.int64)
    return Edges.from_pairs(flows, src, dst, None if slack is None else np.asarray(slack, dtype=float))


@pytest.mark.parametrize("slack, delay", [(0.0, 5.0), (2.0, 3.0), (5.0, 0.0), (7.0, 0.0)])
def test_slack_absorbs_delay(slack, delay):
    # flows 0 and 1 share a link ([0, 5] alone, each slowed by 5); flow 2 waits for flow 0 with slack
    out = replay(np.array([10.0, 10.0]), Routes.from_lists([[0], [0], [1]]), np.array([0.0, 0.0, 12.0]),
                 np.array([5.0, 5.0, 14.0]), np.full(3, 10.0), _pairs(3, [(0, 2)], [slack]), _pairs(3, []))
    assert out.end_delay[0] == 5.0
    assert out.start_delay[2] == delay and out.end_delay[2] == delay


def test_negative_slack_is_refused():
    with pytest.raises(FabricError, match="slack"):
        _pairs(2, [(0, 1)], [-1.0])


def _ring_call(topo, prof, algo, count=1 << 18):
    return call_schedule("allreduce", algo, topo, prof, count, 4)[0]


@pytest.mark.parametrize("profile", ["ideal", "400g-gen5"])
@pytest.mark.parametrize("algo", ["ring", "directreduce", "recursive-doubling"])
def test_two_chains_that_meet_agree_with_run_concurrent(profile, algo):
    topo, prof = parse_topology("ring:8"), load_profile(profile)
    sched = _ring_call(topo, prof, algo)
    nodes = np.arange(8)
    ref = run_concurrent([Call(sched, nodes, 4), Call(sched, nodes, 4)], topo, prof)
    ch = Chains(topo, prof)
    a = ch.collective(("x",), sched, nodes, 4)
    assert a.span_us == ref[0].alone_us
    ends = [ch.place(a, 0.0, ch.marker(0.0)) for _ in range(2)]
    delay = ch.run().delay[ends]
    assert delay == pytest.approx([ref[0].emulated_us - ref[0].alone_us] * 2, rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("algo", ["ring", "recursive-doubling"])
def test_a_chain_alone_keeps_its_alone_times(algo):
    # a pass of three calls with compute between them, then an idle wait, then another pass; recursive
    # doubling slows itself when replayed (its step model shares a link within a step), which must not count.
    # Its own replay ends its last host passes 20.6 µs late: a compute gap shorter than that would let them
    # overlap the next call's passes, which then counts (docs/model.md §21.7), so the gap here is longer
    topo, prof = parse_topology("switch:6") if algo != "ring" else parse_topology("ring:6"), load_profile("ideal")
    sched = _ring_call(topo, prof, algo, 1 << 16)
    ch = Chains(topo, prof)
    a = ch.collective(("x",), sched, np.arange(6), 4)
    t, at = 0.0, ch.marker(0.0)
    marks = [at]
    for _ in range(3):
        t += 7.0 if algo == "ring" else 25.0
        at = ch.place(a, t, at)
        t += a.span_us
        marks.append(at)
    marks.append(ch.marker(t + 100.0, [(at, 100.0)]))
    res = ch.run()
    assert res.delay[marks].tolist() == [0.0] * len(marks)


@pytest.mark.parametrize("gap", [0.0, 50.0, 1e9])
def test_idle_time_absorbs_what_another_chain_caused(gap):
    # chains A and B run the same ring AllReduce at 0 and slow each other by D; B then waits ``gap`` idle
    # (for an arrival) and runs it again, alone: it starts max(0, D - gap) late and ends as late
    topo, prof = parse_topology("ring:8"), load_profile("ideal")
    sched = _ring_call(topo, prof, "ring")
    ch = Chains(topo, prof)
    a = ch.collective(("x",), sched, np.arange(8), 4)
    first_a = ch.place(a, 0.0, ch.marker(0.0))
    first_b = ch.place(a, 0.0, ch.marker(0.0))
    wake = ch.marker(a.span_us + gap, [(first_b, gap)])
    second_b = ch.place(a, a.span_us + gap, wake)
    d = ch.run().delay
    big = d[first_a]
    assert big > 0 and d[first_b] == big
    assert d[second_b] == pytest.approx(max(0.0, big - gap), abs=1e-9)


def test_transfers_alone_match_their_p2p_time():
    for spec in ("ring:8", "torus:4x4"):
        topo = parse_topology(spec)
        for profile in ("ideal", "400g-gen5", "directreduce-paper"):
            prof = load_profile(profile)
            pairs = [(0, 3), (1, 5), (2, 6)]
            ch = Chains(topo, prof)
            for path in ("host", "nic"):
                a = ch.transfers((spec, path), pairs, 100_000, path)
                assert a.span_us == p2p_time(topo, prof, pairs, 100_000, path).emulated_us
                m = ch.marker(0.0)
                ch.place(a, 0.0, m)
            assert ch.run().slowed_flows > 0      # the two paths move the same pairs at once


@pytest.mark.parametrize("pcie,slowed", [(40.0, True), (150.0, False)])
def test_transfers_into_one_node_share_its_pcie_writes(pcie, slowed):
    """Two transfers into node 0 of ring:4 from both sides cross different links and different senders'
    PCIe reads; they meet only in node 0's DMA writes, which slow both when the PCIe is slower than their sum
    (2 x 50 GB/s here) and leave both alone times exact when it is faster."""
    topo, prof = parse_topology("ring:4"), load_profile("400g-gen5", [f"pcie.bandwidth_GBps={pcie}"])
    ch = Chains(topo, prof)
    ends = []
    for a, b in ((1, 0), (3, 0)):
        alone = ch.transfers((a, b), [(a, b)], 8 << 20, "nic")
        assert alone.span_us == p2p_time(topo, prof, [(a, b)], 8 << 20, "nic").emulated_us
        ends.append(ch.place(alone, 0.0, ch.marker(0.0)))
    res = ch.run()
    if slowed:
        assert res.slowed_flows > 0 and min(res.delay[ends]) > 0.0
    else:
        assert res.slowed_flows == 0 and res.delay[ends].tolist() == [0.0, 0.0]


def test_several_ranks_per_node_are_refused():
    with pytest.raises(CollectiveError, match="one rank per node"):
        Chains(parse_topology("ring:4").with_ranks_per_node(2), load_profile("ideal"))


@pytest.mark.parametrize("topology", ["switch:4", "ring:8"])
@pytest.mark.parametrize("algo", ["omniccl", "omniccl-cpu", "omnireduce"])
def test_sparse_calls_on_chains_keep_their_time_alone_and_agree_with_run_shared(algo, topology):
    # a sparse AllReduce's messages alone on a chain: its model time, no delay; two at once on the same nodes
    # delay each other as run_shared says (neither topology lets a call's own messages meet on a link)
    from nicemu.collectives.model.sparse_flows import SparseCall, run_shared, sparse_call_flows
    from nicemu.collectives.model.sparse_timing import model_sparse
    from nicemu.collectives.registry import sparse_config
    prof, topo = load_profile("400g-gen5"), parse_topology(topology)
    cfg = sparse_config(algo, 4, block_size=64)
    masks = np.random.default_rng(1).random((4, 2000)) < 0.2
    f = sparse_call_flows(cfg, masks, prof, 4)
    nodes = np.array([0, 1, 2, 3]) if topo.nodes == 4 else np.array([2, 3, 4, 5])
    ch = Chains(topo, prof)
    a = ch.sparse(("s",), f, nodes)
    assert a.span_us == model_sparse(cfg, masks, prof, 4).emulated_us
    one = ch.place(a, 3.0, ch.marker(0.0))
    assert ch.run().delay[one] == pytest.approx(0.0, abs=1e-9)
    ch.clear()
    ends = [ch.place(a, 0.0, ch.marker(0.0)) for _ in range(2)]
    delay = ch.run().delay[ends]
    _, ref = run_shared([], [SparseCall(f, nodes), SparseCall(f, nodes)], topo, prof)
    assert delay[0] > 0
    assert delay == pytest.approx([r.emulated_us - r.alone_us for r in ref], rel=1e-9, abs=1e-9)
