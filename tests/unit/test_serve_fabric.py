"""Moving a finished serving run by the shared fabric's delays (workloads/serve_fabric.py): tokens follow
their passes, a disaggregated request's first token its KV cache; a run with nothing to share is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology
from nicemu.workloads.batching import BatchingResult, IterationLog, RequestTiming
from nicemu.workloads.iteration_time import PassCalls
from nicemu.workloads.serve_fabric import InstanceRun, run_shared, shifted
from nicemu.workloads.traffic import TrafficRecord


def _run(prefilled=False):
    logs = [IterationLog(0, 10.0, 5.0, "prefill", 8, 0), IterationLog(1, 15.0, 2.0, "decode", 0, 1),
            IterationLog(2, 40.0, 2.0, "decode", 0, 1)]
    first = 12.0 if prefilled else 15.0
    req = RequestTiming(7, 10.0, 8, 3, [first, 17.0, 42.0], admitted_iteration=0)
    return BatchingResult([req], logs)


def test_tokens_follow_their_passes():
    inst = InstanceRun(_run(), [])
    out = shifted(inst, np.array([0.0, 1.5, 0.0]), np.array([1.5, 2.5, 0.25]))
    assert out.requests[0].token_us == [16.5, 19.5, 42.25]
    assert [(it.start_us, it.duration_us) for it in out.iterations] == [(10.0, 6.5), (16.5, 3.0), (40.0, 2.25)]
    assert inst.result.requests[0].token_us == [15.0, 17.0, 42.0]      # the run itself is left as it was


def test_a_decode_instance_s_first_token_is_the_kv_landing():
    inst = InstanceRun(_run(prefilled=True), [], prefilled=True)
    out = shifted(inst, np.zeros(3), np.array([0.0, 0.5, 0.0]), {7: 3.0})
    assert out.requests[0].token_us == [15.0, 17.5, 42.0]


def _pass(k, nodes, cost):
    rec = TrafficRecord(k, "decode", 0, "allreduce", 1 << 16, "ring", "attn_out", nodes)
    return PassCalls(k, 0.0, np.array([1.0]), np.array([cost]), [rec])


def test_instances_on_disjoint_rows_share_nothing():
    # two replicas on the rows of torus:2x4, passes at the same times: no call is replayed, every delay is 0
    from nicemu.collectives.model.chains import Chains
    from nicemu.workloads.serve_fabric import _alone
    topo, prof = parse_topology("torus:2x4"), load_profile("400g-gen5")
    cost = _alone(Chains(topo, prof), topo, prof, _pass(0, (0, 1, 2, 3), 0.0).records[0]).span_us
    runs = []
    for nodes in ((0, 1, 2, 3), (4, 5, 6, 7)):
        logs = [IterationLog(k, 100.0 * k, cost + 2.0, "decode", 0, 1) for k in range(3)]
        req = RequestTiming(nodes[0], 0.0, 4, 3, [100.0 * k + cost + 2.0 for k in range(3)], admitted_iteration=0)
        runs.append(InstanceRun(BatchingResult([req], logs), [_pass(k, nodes, cost) for k in range(3)]))
    out = run_shared(topo, prof, runs, [])
    assert out.replayed_calls == 0 and out.rounds == 0
    assert all(not d.any() for d in out.start_delay + out.end_delay)
    # the same passes on one ring: they overlap and slow each other
    ring = parse_topology("ring:8")
    runs2 = []
    for nodes in ((0, 2, 4, 6), (1, 3, 5, 7)):
        rec = _pass(0, nodes, 0.0).records[0]
        c = _alone(Chains(ring, prof), ring, prof, rec).span_us
        logs = [IterationLog(k, 100.0 * k, c + 2.0, "decode", 0, 1) for k in range(3)]
        req = RequestTiming(nodes[0], 0.0, 4, 3, [100.0 * k + c + 2.0 for k in range(3)], admitted_iteration=0)
        runs2.append(InstanceRun(BatchingResult([req], logs), [_pass(k, nodes, c) for k in range(3)]))
    out = run_shared(ring, prof, runs2, [])
    assert out.replayed_calls == 6 and out.slowed_flows > 0
    assert all(d.min() > 0 for d in out.end_delay)


def test_sparse_embedding_calls_share_the_fabric_only_when_their_messages_are_given():
    # two replicas on interleaved nodes of ring:8, each pass one OmNICCL embedding AllReduce at the same time: given
    # how a record's messages are made, the calls slow each other as two sparse calls do on the fabric
    # (sparse_flows.run_shared); without it they keep their alone times (the first-order default)
    from nicemu.collectives.model.chains import Chains
    from nicemu.collectives.model.sparse_flows import SparseCall, sparse_call_flows
    from nicemu.collectives.model.sparse_flows import run_shared as sparse_shared
    from nicemu.collectives.registry import sparse_config
    topo, prof = parse_topology("ring:8"), load_profile("400g-gen5")
    cfg = sparse_config("omniccl", 4, block_size=64)
    masks = np.random.default_rng(3).random((4, 1500)) < 0.25
    flows = sparse_call_flows(cfg, masks, prof, 2)
    made = []

    def sparse(rec):
        made.append(rec)
        return flows

    groups = ((0, 2, 4, 6), (1, 3, 5, 7))
    cost = Chains(topo, prof).sparse(("x",), flows, np.array(groups[0])).span_us
    runs = []
    for nodes in groups:
        recs = [TrafficRecord(k, "decode", 0, "allreduce", 1 << 14, "omniccl", "embedding", nodes) for k in range(2)]
        logs = [IterationLog(k, 100.0 * k, cost + 2.0, "decode", 0, 1) for k in range(2)]
        req = RequestTiming(nodes[0], 0.0, 4, 2, [100.0 * k + cost + 2.0 for k in range(2)], admitted_iteration=0)
        passes = [PassCalls(k, 0.0, np.array([1.0]), np.array([cost]), [recs[k]]) for k in range(2)]
        runs.append(InstanceRun(BatchingResult([req], logs), passes))
    off = run_shared(topo, prof, runs, [])
    assert off.replayed_calls == 0 and all(not d.any() for d in off.end_delay)
    on = run_shared(topo, prof, runs, [], sparse=sparse)
    assert on.replayed_calls == 4 and on.slowed_flows > 0
    assert len(made) == 2           # one call alone per record key (its nodes), built once, kept for both passes
    _, ref = sparse_shared([], [SparseCall(flows, np.array(g)) for g in groups], topo, prof)
    late = [r.emulated_us - r.alone_us for r in ref]
    assert late[0] > 0
    # interleaved, a call's own messages meet on links: the chains take its slowest node's delay net of its
    # own overlaps, run_shared each node's, 0.2% apart at most (docs/model.md §21.6, "Serve jobs")
    for c in range(2):
        assert on.end_delay[c][1] == pytest.approx(on.end_delay[c][0], rel=1e-9)   # the second pass alike
        assert on.end_delay[c] == pytest.approx([late[c]] * 2, rel=2e-3)
