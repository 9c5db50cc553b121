"""Moving a finished serving run by the shared fabric's delays (workloads/serve_fabric.py): tokens follow
their passes, a disaggregated request's first token its KV cache; a run with nothing to share is unchanged."""

from __future__ import annotations

import numpy as np

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
