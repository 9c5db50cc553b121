"""Disaggregated prefill/decode (workloads/disaggregation.py) against hand-computed timelines.

A fake iteration timer makes every pass cost ``A + B * tokens`` and the KV transfer a fixed time per
prompt token, so each request's timeline can be written down by hand.
"""

from __future__ import annotations

import pytest

from nicemu.workloads.batching import Batcher, BatchingConfig
from nicemu.workloads.disaggregation import place, serve_disaggregated
from nicemu.workloads.iteration_time import CommCost, IterationCost
from nicemu.workloads.metrics import e2e_us, slo_metrics, summarize
from nicemu.workloads.requests import Request
from nicemu.workloads.traffic import TrafficRecord

A, B, KV_PER_TOKEN = 50.0, 2.0, 0.25


class FakeTimer:
    """A pass costs A + B * tokens; remembers which instance ran it."""

    def __init__(self, instance: int, log: list) -> None:
        self.instance, self.log, self.costs = instance, log, []

    def __call__(self, it) -> float:
        t = A + B * it.batch.tokens
        self.log.append((self.instance, it.index, it.batch.tokens))
        self.costs.append(IterationCost(it.index, t, 0.0, 0.0, 0, 0))
        return t


def run(requests, prefill=1, decode=1, config=None):
    log: list = []
    kv_calls: list = []

    def kv_records(prompt, source, target):
        return [TrafficRecord(-1, "prefill", -1, "p2p", prompt * 10, "p2p-nic", "kv_cache", (source, target))]

    def kv_time(recs):
        kv_calls.append(recs[0].nodes)
        return [CommCost(KV_PER_TOKEN * r.bytes / 10) for r in recs]

    dis = serve_disaggregated(requests, prefill, decode, lambda i: FakeTimer(i, log), kv_records, kv_time,
                              config or BatchingConfig())
    return dis, log, kv_calls


def test_one_request_timeline():
    dis, log, kv = run([Request(0, 1000.0, 100, 4)])
    prefill = A + B * 100
    land = 1000.0 + prefill + KV_PER_TOKEN * 100
    r = dis.result.requests[0]
    assert r.token_us == pytest.approx([land, land + A + B, land + 2 * (A + B), land + 3 * (A + B)], rel=1e-15)
    assert log == [(0, 0, 100), (1, 0, 1), (1, 1, 1), (1, 2, 1)]     # instance 1 only decodes
    assert kv == [(0, 1)] and dis.kv_us == {0: KV_PER_TOKEN * 100} and dis.kv_bytes == {0: 1000}
    m = summarize(dis.result, dis.costs)
    assert m["ttft_ms_mean"] == pytest.approx((prefill + KV_PER_TOKEN * 100) / 1e3, rel=1e-12)
    assert m["tpot_ms_mean"] == pytest.approx((A + B) / 1e3, rel=1e-12)
    assert m["iterations"] == 4


def test_kv_extra_delays_the_decode_side_only():
    # serve --fabric shared re-forming its batches: a transfer slowed by sharing lands later, its own time stays
    log: list = []

    def kv_records(prompt, source, target):
        return [TrafficRecord(-1, "prefill", -1, "p2p", prompt * 10, "p2p-nic", "kv_cache", (source, target))]

    dis = serve_disaggregated([Request(0, 1000.0, 100, 2)], 1, 1, lambda i: FakeTimer(i, log), kv_records,
                              lambda recs: [CommCost(KV_PER_TOKEN * r.bytes / 10) for r in recs], BatchingConfig(),
                              kv_extra={0: 7.0})
    land = 1000.0 + A + B * 100 + KV_PER_TOKEN * 100 + 7.0
    assert dis.result.requests[0].token_us == pytest.approx([land, land + A + B], rel=1e-15)
    assert dis.kv_us == {0: KV_PER_TOKEN * 100} and dis.prefill_done_us == {0: 1000.0 + A + B * 100}


def test_prefill_instances_work_in_parallel_and_decode_batches_together():
    reqs = [Request(0, 0.0, 100, 3), Request(1, 0.0, 300, 3)]
    dis, log, kv = run(reqs, prefill=2, decode=1)
    assert place(reqs, 2, 1) == {0: (0, 0), 1: (1, 0)}
    done = {0: A + B * 100, 1: A + B * 300}                       # each alone on its prefill instance
    assert dis.prefill_done_us == pytest.approx(done, rel=1e-15)
    land = {i: done[i] + KV_PER_TOKEN * reqs[i].input_tokens for i in (0, 1)}
    assert kv == [(0, 2), (1, 2)]                                  # decode instance 2 receives both
    assert [r.token_us[0] for r in dis.result.requests] == pytest.approx([land[0], land[1]], rel=1e-15)
    # request 0 decodes alone until request 1 lands, then they share passes
    dec = [e for e in log if e[0] == 2]
    assert dec[0] == (2, 0, 1)
    assert all(tokens <= 2 for _, _, tokens in dec)


def test_a_one_token_output_ends_when_its_kv_lands():
    dis, log, _ = run([Request(0, 0.0, 64, 1)])
    assert dis.result.requests[0].token_us == pytest.approx([A + B * 64 + KV_PER_TOKEN * 64], rel=1e-15)
    assert [e for e in log if e[0] == 1] == []                    # nothing to decode
    assert dis.split_ms()["decode"] == 0.0


def test_split_adds_up_to_the_mean_end_to_end_latency():
    reqs = [Request(i, 300.0 * i, 50 + 37 * i, 1 + i % 5) for i in range(12)]
    dis, _, _ = run(reqs, prefill=2, decode=3, config=BatchingConfig(token_budget=128, chunk_tokens=64))
    split = dis.split_ms()
    mean_e2e = sum(e2e_us(r) for r in dis.result.requests) / len(reqs) / 1e3
    assert sum(split.values()) == pytest.approx(mean_e2e, rel=1e-12)
    assert split["KV transfer"] == pytest.approx(sum(KV_PER_TOKEN * r.input_tokens for r in reqs) / 12 / 1e3)
    assert {d for _, d in dis.placement.values()} == {0, 1, 2}


def test_prefilled_arrivals_decode_from_their_first_pass():
    res = Batcher().run([Request(0, 10.0, 500, 3), Request(1, 10.0, 20, 1)], lambda it: 7.0, prefilled=True)
    r0, r1 = res.requests
    assert r0.token_us == [10.0, 17.0, 24.0] and r0.admitted_iteration == 0
    assert r1.token_us == [10.0] and len(res.iterations) == 2
    assert all(it.prefill_tokens == 0 for it in res.iterations)


def test_slo_metrics():
    res = Batcher().run([Request(0, 0.0, 10, 3), Request(1, 0.0, 10, 1), Request(2, 0.0, 10, 2)],
                        lambda it: 1000.0 * it.batch.tokens)
    # pass 0 prefills all 30 tokens (30 ms): every first token at 30 ms; then 2 decodes (2 ms), 1 decode (1 ms)
    assert [r.token_us for r in res.requests] == [[30e3, 32e3, 33e3], [30e3], [30e3, 32e3]]
    assert slo_metrics(res, None, None) == {}
    got = slo_metrics(res, 30.0, 1.6)        # request 0: TPOT 1.5 ms; request 2: 2 ms
    assert got["slo_attainment"] == pytest.approx(2 / 3) and got["goodput_req_s"] == pytest.approx(2 / 0.033)
    assert slo_metrics(res, 29.9, None)["slo_attainment"] == 0.0
