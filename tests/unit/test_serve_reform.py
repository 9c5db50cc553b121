"""Batches re-formed under sharing (workloads/serve_fabric.py, ``reform``), against timelines written by hand.

Every pass costs the same alone, ``D = C1 + c + C2``: compute ``C1``, one AllReduce of ``c`` µs on the
instance's nodes, compute ``C2``. Two instances on interleaved nodes of ring:8 share links, so the passes
they run at the same time both end ``δ`` late (δ measured from the replay, then used by hand).
"""

from __future__ import annotations

import numpy as np
import pytest

from nicemu.collectives.model.chains import Chains
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology
from nicemu.workloads.batching import BatchingResult, run_batching
from nicemu.workloads.iteration_time import PassCalls
from nicemu.workloads.requests import Request
from nicemu.workloads.serve_fabric import (
    REFORM_TOL_US,
    Extras,
    InstanceRun,
    _alone,
    reform,
    run_on_shared_fabric,
    run_shared,
    shifted,
    unshared,
)
from nicemu.workloads.traffic import TrafficRecord

RING, PROFILE = parse_topology("ring:8"), load_profile("400g-gen5")
NBYTES, C1, C2 = 1 << 16, 20.0, 20.0
GROUPS = ((0, 2, 4, 6), (1, 3, 5, 7))     # every hop of one crosses a link of the other's


def _record(k: int, nodes) -> TrafficRecord:
    return TrafficRecord(k, "decode", 0, "allreduce", NBYTES, "ring", "attn_out", nodes)


COST = _alone(Chains(RING, PROFILE), RING, PROFILE, _record(0, GROUPS[0])).span_us
D = C1 + COST + C2


def _harness(requests_per_instance):
    """(serve_round, share) for ``reform``: one batcher per instance, each pass one call on its group."""
    def serve_round(extras: Extras | None):
        results, passes = [], {}
        for i, reqs in enumerate(requests_per_instance):
            got = passes.setdefault(i, [])

            def duration(it, i=i, got=got):
                got.append(PassCalls(it.index, it.swap_us, np.array([C1]), np.array([COST]),
                                     [_record(it.index, GROUPS[i])]))
                return D + (extras.of_pass(i, it.index) if extras is not None else 0.0)

            results.append(run_batching(reqs, duration))
        return results, passes

    def share(run, extras: Extras | None):
        results, passes = run
        merged = BatchingResult([r for res in results for r in res.requests],
                                [it for res in results for it in res.iterations])
        return run_on_shared_fabric(RING, PROFILE, merged if len(results) > 1 else results[0], passes,
                                    results if len(results) > 1 else None, extras=extras)
    return serve_round, share


def _delta() -> float:
    """What sharing adds to two passes that run together, one on each group."""
    serve_round, share = _harness([[Request(0, 0.0, 8, 1)], [Request(1, 0.0, 8, 1)]])
    _, timing, _ = share(serve_round(None), None)
    assert timing.end_delay[0][0] == timing.end_delay[1][0]     # the groups are symmetric on the ring
    return float(timing.end_delay[0][0])


def test_a_request_arriving_during_the_delay_joins_the_earlier_batch():
    delta = _delta()
    assert 0 < delta < D              # the arrival below falls between the alone and the shared end of pass 0
    t2 = D + delta / 2
    # instance 0: request 0 (2 tokens) at 0, request 2 (1 token) at t2; instance 1: request 1 at 0
    serve_round, share = _harness([[Request(0, 0.0, 8, 2), Request(2, t2, 8, 1)], [Request(1, 0.0, 8, 1)]])
    runs = reform(serve_round, share, 4)
    first_run, last_run = runs.first_run[0][0], runs.last_run[0][0]
    first, last = runs.first[0], runs.last[0]
    by_id = {r.id: r for r in first_run.requests}
    # first order: at D request 2 has not arrived, so pass 1 is request 0's decode alone and request 2 waits
    # for pass 2; sharing moves both by δ (no slack after pass 0): its first token at 3D + δ
    assert by_id[2].admitted_iteration == 2 and len(first_run.iterations) == 3
    ttft_first = next(r for r in first.requests if r.id == 2).token_us[0] - t2
    assert ttft_first == pytest.approx(2 * D + delta / 2, rel=1e-12)
    # re-formed: pass 0 now lasts D + δ, so request 2 (arrived at D + δ/2) joins pass 1 with request 0's decode
    by_id = {r.id: r for r in last_run.requests}
    assert by_id[2].admitted_iteration == 1 and len(last_run.iterations) == 2
    assert [it.start_us for it in last_run.iterations] == pytest.approx([0.0, D + delta], rel=1e-12)
    ttft_last = next(r for r in last.requests if r.id == 2).token_us[0] - t2
    assert ttft_last == pytest.approx(D + delta / 2, rel=1e-12)
    assert ttft_first - ttft_last == pytest.approx(D, rel=1e-12)
    # request 0 keeps its tokens: D + δ and 2D + δ in both
    for res in (first, last):
        assert next(r for r in res.requests if r.id == 0).token_us == pytest.approx([D + delta, 2 * D + delta],
                                                                                      rel=1e-12)
    # one re-formed round reaches the fixed point: its replay moves nothing it was batched on
    assert runs.rounds == 1 and runs.converged and runs.last[1].residual_us <= REFORM_TOL_US
    # round 0 moved pass 1 and 2 of instance 0 by δ against the idle timeline: its residual says so
    assert runs.first[1].residual_us == pytest.approx(delta, rel=1e-12)


def test_rounds_0_is_the_first_order_shift():
    delta = _delta()
    serve_round, share = _harness([[Request(0, 0.0, 8, 2), Request(2, D + delta / 2, 8, 1)],
                                   [Request(1, 0.0, 8, 1)]])
    runs = reform(serve_round, share, 0)
    assert runs.rounds == 0 and runs.last is runs.first and not runs.converged
    # the same as replaying the idle-fabric runs and shifting each (what serve did before re-forming)
    results, passes = serve_round(None)
    inst = [InstanceRun(r, passes[i]) for i, r in enumerate(results)]
    timing = run_shared(RING, PROFILE, inst, [])
    want = {r.id: r.token_us for x, s, e in zip(inst, timing.start_delay, timing.end_delay)
            for r in shifted(x, s, e).requests}
    assert {r.id: r.token_us for r in runs.last[0].requests} == want


def test_one_instance_alone_is_already_the_fixed_point():
    reqs = [Request(0, 0.0, 8, 3), Request(1, 5.0, 8, 2), Request(2, 2.5 * D, 8, 1)]
    serve_round, share = _harness([reqs])
    runs = reform(serve_round, share, 4)
    assert runs.rounds == 0 and runs.converged and runs.last[1].residual_us == 0.0
    idle = runs.first_run[0][0]
    assert [r.token_us for r in runs.last[0].requests] == [r.token_us for r in idle.requests]
    # a re-formed round with what round 0 added (nothing) serves and replays exactly the same
    extras = runs.first[1].extras()
    assert extras.passes == {} and extras.kv == {}
    again = share(serve_round(extras), extras)
    assert [r.token_us for r in again[0].requests] == [r.token_us for r in idle.requests]
    assert again[1].residual_us == 0.0


def test_unshared_takes_each_pass_back_to_its_alone_duration():
    serve_round, _ = _harness([[Request(0, 0.0, 8, 3)]])
    extras = Extras({(0, 0): 4.0, (0, 2): 1.5})
    res = serve_round(extras)[0][0]
    assert [it.duration_us for it in res.iterations] == pytest.approx([D + 4.0, D, D + 1.5], rel=1e-15)
    out = unshared(res, 0, extras)
    assert [it.duration_us for it in out.iterations] == pytest.approx([D, D, D], rel=1e-15)
    assert [it.start_us for it in out.iterations] == [it.start_us for it in res.iterations]
    assert out.requests[0].token_us == pytest.approx([D, 2 * D + 4.0, 3 * D + 4.0], rel=1e-15)
    # nothing to take back: the very same times
    same = unshared(res, 0, Extras())
    assert same.requests[0].token_us == res.requests[0].token_us
