"""Data-parallel replicas (workloads/replicas.py): round-robin placement, each replica alone on its share."""

from __future__ import annotations

import pytest

from nicemu.workloads.batching import Batcher, BatchingConfig
from nicemu.workloads.iteration_time import IterationCost
from nicemu.workloads.metrics import e2e_us
from nicemu.workloads.replicas import place, serve_replicas
from nicemu.workloads.requests import Request


class FakeTimer:
    """A pass costs 40 + 3 * tokens; every replica its own."""

    def __init__(self) -> None:
        self.costs: list[IterationCost] = []

    def __call__(self, it) -> float:
        t = 40.0 + 3.0 * it.batch.tokens
        self.costs.append(IterationCost(it.index, t, 0.0, 0.0, 0, 0))
        return t


def test_each_replica_serves_its_share_alone():
    reqs = [Request(i, 100.0 * (i // 2), 30 + 17 * i, 1 + i % 4) for i in range(9)]
    where = place(reqs, 3)
    assert [where[r.id] for r in reqs] == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    result, costs, split = serve_replicas(reqs, 3, lambda i: FakeTimer(), BatchingConfig(token_budget=64))
    for k in range(3):
        alone = Batcher(BatchingConfig(token_budget=64)).run([r for r in reqs if where[r.id] == k], FakeTimer())
        for r in alone.requests:
            assert result.requests[r.id].token_us == r.token_us
    assert [r.id for r in result.requests] == list(range(9))
    assert len(costs) == len(result.iterations)
    mean_e2e = sum(e2e_us(r) for r in result.requests) / 9 / 1e3
    assert sum(split.values()) == pytest.approx(mean_e2e, rel=1e-12)


def test_one_replica_is_the_plain_batcher():
    reqs = [Request(i, 50.0 * i, 100, 3) for i in range(5)]
    result, _, _ = serve_replicas(reqs, 1, lambda i: FakeTimer())
    alone = Batcher().run(reqs, FakeTimer())
    assert [r.token_us for r in result.requests] == [r.token_us for r in alone.requests]


def test_replicas_of_a_disaggregated_deployment():
    """--replicas 2 --disaggregated 1:2: request k goes to replica k mod 2, and each replica serves its share
    exactly as a lone 1:2 deployment does, on instances 0-2 and 3-5 (its KV transfers between its own)."""
    from nicemu.workloads.disaggregation import serve_disaggregated
    from nicemu.workloads.iteration_time import CommCost
    from nicemu.workloads.replicas import serve_replicas_disaggregated
    from nicemu.workloads.traffic import TrafficRecord

    def kv_records(prompt, source, target):
        return [TrafficRecord(-1, "prefill", -1, "p2p", prompt * 10, "p2p-nic", "kv_cache", (source, target))]

    calls: list = []

    def kv_time(recs):
        calls.append(recs[0].nodes)
        return [CommCost(0.25 * r.bytes / 10) for r in recs]

    reqs = [Request(i, 100.0 * (i // 2), 30 + 17 * i, 1 + i % 4) for i in range(9)]
    cfg = BatchingConfig(token_budget=64)
    dis, parts = serve_replicas_disaggregated(reqs, 2, 1, 2, lambda i: FakeTimer(), kv_records, kv_time, cfg)
    assert {nodes for nodes in calls} == {(0, 1), (0, 2), (3, 4), (3, 5)}
    assert len(parts) == 2 and len(dis.prefill) == 2 and len(dis.decode) == 4
    for k in range(2):
        mine = [r for r in reqs if r.id % 2 == k]
        alone = serve_disaggregated(mine, 1, 2, lambda i: FakeTimer(), kv_records, kv_time, cfg)
        for r in alone.result.requests:
            assert dis.result.requests[r.id].token_us == r.token_us
            i, j = alone.placement[r.id]
            assert dis.placement[r.id] == (k + i, 2 * k + j) and dis.kv_us[r.id] == alone.kv_us[r.id]
    assert [r.id for r in dis.result.requests] == list(range(9))
    assert len(dis.costs) == len(dis.result.iterations) == sum(len(p.costs) for p in parts)
    mean_e2e = sum(e2e_us(r) for r in dis.result.requests) / 9 / 1e3
    assert sum(dis.split_ms().values()) == pytest.approx(mean_e2e, rel=1e-12)
