"""Sparse calls on the shared fabric (collectives/model/sparse/messages.py, collectives/model/sparse_flows.py):
recording the messages changes no number, the messages add up to the call's wire bytes, a call alone keeps
its time exactly, and sharing slows calls, never speeds them up."""

from __future__ import annotations

import numpy as np
import pytest

from nicemu.collectives.api.model import build_schedule
from nicemu.collectives.model.concurrent import Call, run_concurrent
from nicemu.collectives.model.sparse.messages import RECORD, RESULT, RX_CREDIT
from nicemu.collectives.model.sparse_flows import SparseCall, run_shared, sparse_call_flows
from nicemu.collectives.model.sparse_timing import model_sparse, plan_sparse, sparse_time
from nicemu.collectives.registry import sparse_config
from nicemu.collectives.schedules.spot_protocol import CREDIT_BYTES
from nicemu.errors import CollectiveError
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

ALGOS = ("omniccl", "omniccl-cpu", "omnireduce")


def _masks(n: int, blocks: int, density: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, blocks)) < density


@pytest.mark.parametrize("profile", ["omniccl-paper", "400g-gen5", "ideal"])
@pytest.mark.parametrize("algo", ALGOS)
def test_recording_the_messages_changes_no_number(algo, profile):
    prof = load_profile(profile)
    for n, density in ((2, 0.3), (5, 0.1), (8, 0.6)):
        masks = _masks(n, 1500, density, n)
        cfg = sparse_config(algo, n, block_size=64)
        a = sparse_time(plan_sparse(cfg, masks), prof, 4)
        b = sparse_time(plan_sparse(cfg, masks), prof, 4, messages=True)
        assert a.messages is None and b.messages is not None
        assert a.emulated_us == b.emulated_us and np.array_equal(a.node_done_us, b.node_done_us)
        assert (a.host_busy_us, a.nic_busy_us, a.wire_bytes, a.framed_bytes, a.upstream_bytes) == \
               (b.host_busy_us, b.nic_busy_us, b.wire_bytes, b.framed_bytes, b.upstream_bytes)


@pytest.mark.parametrize("algo", ALGOS)
def test_messages_add_up_to_the_wire_bytes_and_hold_each_link_in_turn(algo):
    n = 5
    prof = load_profile("400g-gen5")
    cfg = sparse_config(algo, n, block_size=64)
    t = sparse_time(plan_sparse(cfg, _masks(n, 2000, 0.15, 3)), prof, 4, messages=True)
    m = t.messages
    # every reader returns a 16-byte Tx credit per result copy: the only bytes on the wire not recorded
    assert int(m.nbytes.sum()) + CREDIT_BYTES * int(np.count_nonzero(m.kind == RESULT)) == t.wire_bytes
    # one result copy per far worker and slot of every round
    plan = plan_sparse(cfg, _masks(n, 2000, 0.15, 3))
    far = n if cfg.aggregation == "dedicated" else n - 1
    assert np.count_nonzero(m.kind == RESULT) == far * sum(len(r.slots) for r in plan.rounds)
    assert np.all(m.src != m.dst)
    dedicated = cfg.aggregation == "dedicated"
    aggregators = m.dst[m.kind == RECORD]
    assert np.all(aggregators >= n) if dedicated else np.all(aggregators < n)
    assert np.all(m.src[m.kind != RECORD] >= n) == dedicated
    assert (np.count_nonzero(m.kind == RX_CREDIT) > 0) == cfg.credits
    # a message holds its receiver's link for its wire time; a link in serves one message at a time
    first = m.done_us - m.wire_us
    assert np.all(first >= 0) and np.all(m.done_us <= t.emulated_us)
    for end in np.unique(m.dst):
        mine = np.flatnonzero(m.dst == end)
        order = mine[np.argsort(m.done_us[mine], kind="stable")]
        assert np.all(first[order[1:]] >= m.done_us[order[:-1]] - 1e-9)


@pytest.mark.parametrize("topology", ["switch:4", "ring:4", "switch:6"])
@pytest.mark.parametrize("algo", ALGOS)
def test_a_sparse_call_alone_keeps_its_time_exactly(algo, topology):
    prof, topo = load_profile("400g-gen5"), parse_topology(topology)
    cfg = sparse_config(algo, 4, block_size=64)
    masks = _masks(4, 2000, 0.2, 1)
    f = sparse_call_flows(cfg, masks, prof, 4)
    alone = model_sparse(cfg, masks, prof, 4)
    nodes = np.array([0, 1, 2, 3]) if topo.nodes == 4 else np.array([5, 0, 3, 1])
    _, (one,) = run_shared([], [SparseCall(f, nodes, start_us=7.5)], topo, prof)
    assert f.timing.emulated_us == alone.emulated_us
    assert one.emulated_us == one.alone_us == alone.emulated_us
    assert np.array_equal(one.node_done_us, alone.node_done_us) and one.wire_bytes == alone.wire_bytes


@pytest.mark.parametrize("profile", ["ideal", "400g-gen5"])
@pytest.mark.parametrize("algo", ALGOS)
def test_two_sparse_calls_on_the_same_nodes_are_slowed_never_sped_up(algo, profile):
    prof, topo = load_profile(profile), parse_topology("switch:4")
    cfg = sparse_config(algo, 4, block_size=64)
    f = sparse_call_flows(cfg, _masks(4, 2000, 0.3, 2), prof, 4)
    g = sparse_call_flows(cfg, _masks(4, 2000, 0.3, 5), prof, 4)
    nodes = np.arange(4)
    _, shared = run_shared([], [SparseCall(f, nodes), SparseCall(g, nodes, start_us=2.0)], topo, prof)
    for t, a in zip(shared, (f, g)):
        assert t.alone_us == a.timing.emulated_us
        assert np.all(t.node_done_us >= a.timing.node_done_us)
        assert t.slowed_flows > 0
    if profile == "ideal":      # only links cost time: two calls sharing every port are well slower
        assert min(t.slowdown_vs_alone for t in shared) > 1.2


def test_sparse_calls_on_disjoint_nodes_of_a_switch_keep_their_times():
    prof, topo = load_profile("ideal"), parse_topology("switch:8")
    cfg = sparse_config("omnireduce", 4, block_size=64)     # its dedicated aggregators have ports of their own
    f = sparse_call_flows(cfg, _masks(4, 1000, 0.3, 2), prof, 4)
    _, shared = run_shared([], [SparseCall(f, np.arange(4)), SparseCall(f, np.arange(4, 8))], topo, prof)
    for t in shared:
        assert t.emulated_us == f.timing.emulated_us and t.slowed_flows == 0


def test_dense_calls_alone_are_run_concurrent_and_a_sparse_call_slows_them():
    prof, topo = load_profile("ideal"), parse_topology("switch:4")
    sched = build_schedule("allreduce", "ring", topo, 1 << 16)
    calls = [Call(sched, np.arange(4), 4), Call(sched, np.arange(4), 4, start_us=3.0)]
    ref = run_concurrent(calls, topo, prof)
    dense, sparse = run_shared(calls, [], topo, prof)
    assert sparse == [] and [t.emulated_us for t in dense] == [t.emulated_us for t in ref]
    cfg = sparse_config("omniccl", 4, block_size=64)
    f = sparse_call_flows(cfg, _masks(4, 4000, 0.5, 4), prof, 4)
    # far later, it shares ports but not time: nothing moves
    late, (e,) = run_shared(calls, [SparseCall(f, np.arange(4), start_us=1e6)], topo, prof)
    assert [t.emulated_us for t in late] == [t.emulated_us for t in ref] and e.emulated_us == e.alone_us
    both, (e,) = run_shared(calls, [SparseCall(f, np.arange(4), start_us=1.0)], topo, prof)
    assert all(b.emulated_us >= r.emulated_us for b, r in zip(both, ref))
    assert max(b.emulated_us / r.emulated_us for b, r in zip(both, ref)) > 1.05
    assert e.emulated_us > 1.05 * e.alone_us


def test_a_sparse_call_needs_distinct_nodes_of_the_fabric():
    prof, topo = load_profile("ideal"), parse_topology("ring:4")
    f = sparse_call_flows(sparse_config("omniccl", 4), _masks(4, 100, 0.5), prof, 4)
    for nodes in (np.array([0, 1, 2, 2]), np.array([0, 1, 2, 4]), np.arange(3)):
        with pytest.raises(CollectiveError, match="needs 4 distinct nodes of ring:4"):
            run_shared([], [SparseCall(f, nodes)], topo, prof)
