"""Serving metrics and the iteration timer that ties compute and communication together."""

from pathlib import Path

import pytest

import nicemu.workloads
from nicemu.errors import WorkloadError
from nicemu.workloads.batching import BatchingResult, RequestTiming, run_batching
from nicemu.workloads.iteration_time import CommCost, IterationCost, IterationTimer
from nicemu.workloads.metrics import e2e_us, itl_us, request_rows, stats, summarize, tpot_us, ttft_us
from nicemu.workloads.requests import Request, load_trace

SAMPLE = Path(nicemu.workloads.__file__).parent / "data" / "sample_azure_conv.csv"


def timing(rid, arrival, tokens, inp=10):
    return RequestTiming(rid, arrival, inp, len(tokens), list(tokens))


def test_per_request_definitions():
    r = timing(0, 1000.0, [3000.0, 3500.0, 4500.0, 5000.0])
    assert ttft_us(r) == 2000.0
    assert tpot_us(r) == pytest.approx(2000.0 / 3)
    assert itl_us(r) == [500.0, 1000.0, 500.0]
    assert e2e_us(r) == 4000.0
    assert tpot_us(timing(1, 0.0, [7.0])) is None


def test_stats_mean_p50_p99():
    s = stats(list(range(1, 101)))
    assert s == {"mean": 50.5, "p50": 50.5, "p99": pytest.approx(99.01)}
    assert stats([]) == {"mean": None, "p50": None, "p99": None}


def test_summary_values_in_ms_and_throughput():
    reqs = [timing(0, 0.0, [1000.0, 2000.0, 3000.0], inp=100),
            timing(1, 500.0, [2500.0], inp=50),
            timing(2, 1000.0, [4000.0, 6000.0], inp=10)]
    s = summarize(BatchingResult(reqs, []))
    assert s["requests"] == 3
    assert s["ttft_ms_mean"] == pytest.approx((1000 + 2000 + 3000) / 3 / 1e3)
    assert s["ttft_ms_p50"] == pytest.approx(2.0)
    assert s["tpot_ms_mean"] == pytest.approx((1000 + 2000) / 2 / 1e3)   # 1-token request left out
    assert s["e2e_ms_p50"] == pytest.approx(3.0)
    assert s["duration_s"] == pytest.approx(6000e-6)
    assert s["throughput_tok_s"] == pytest.approx(6 / 6000e-6)
    assert s["total_tok_s"] == pytest.approx(166 / 6000e-6)
    assert s["requests_s"] == pytest.approx(3 / 6000e-6)
    assert "comm_share" not in s


def test_summary_with_costs():
    reqs = [timing(0, 0.0, [10.0])]
    costs = [IterationCost(0, 300.0, 100.0, 40.0, 0, 3), IterationCost(1, 500.0, 100.0, 0.0, 0, 3)]
    s = summarize(BatchingResult(reqs, []), costs)
    assert s["comm_share"] == pytest.approx(200 / 1000)
    assert s["host_comm_ms"] == pytest.approx(0.04)


def test_unfinished_and_empty_are_errors():
    with pytest.raises(WorkloadError, match="did not finish"):
        summarize(BatchingResult([RequestTiming(0, 0.0, 10, 3, [5.0])], []))
    with pytest.raises(WorkloadError, match="no requests"):
        summarize(BatchingResult([], []))


def test_request_rows():
    rows = request_rows(BatchingResult([timing(4, 1000.0, [3000.0, 5000.0])], []))
    assert rows == [{"id": 4, "arrival_ms": 1.0, "input_tokens": 10, "output_tokens": 2, "ttft_ms": 2.0,
                     "tpot_ms": 2.0, "e2e_ms": 4.0, "queue_ms": 0.0, "preemptions": 0,
                     "rejected": ""}]


# ---------------------------------------------------------------- iteration timer

def fake_comm(rec):
    """Stands in for the emulator: 5 us + 1 us per 10 kB, host busy only for 'ring'."""
    t = 5.0 + rec.bytes / 1e4
    return CommCost(t, host_busy_us=t / 2 if rec.algo == "ring" else 0.0, wire_bytes=rec.bytes)


def run_sample(algo, requests=None):
    model = nicemu.workloads.load_model("llama3-70b")
    par = nicemu.workloads.Parallelism(tp=8)
    seen = []
    timer = IterationTimer(model, nicemu.workloads.load_accelerator("h100"), par, fake_comm, algo=algo,
                           on_traffic=seen.append)
    res = run_batching(requests or load_trace(SAMPLE, limit=20), timer)
    return res, timer, seen


def test_iteration_timer_adds_compute_and_every_collective():
    res, timer, seen = run_sample("ring")
    assert len(timer.costs) == len(res.iterations) == len(seen)
    for cost, log, recs in zip(timer.costs, res.iterations, seen):
        assert cost.collectives == len(recs) == 161
        assert cost.comm_us == pytest.approx(sum(fake_comm(r).emulated_us for r in recs))
        assert log.duration_us == pytest.approx(cost.compute_us + cost.comm_us)
        assert cost.host_comm_us == pytest.approx(cost.comm_us / 2)
        assert all(r.bytes == log.tokens * 8192 * 2 for r in recs)


def test_sample_trace_end_to_end_is_deterministic_and_host_free_on_nic():
    res1, timer1, _ = run_sample("ring")
    res2, timer2, _ = run_sample("ring")
    a, b = summarize(res1, timer1.costs), summarize(res2, timer2.costs)
    assert a == b
    res, timer, _ = run_sample("directreduce")
    nic = summarize(res, timer.costs)
    assert nic["host_comm_ms"] == 0.0 and a["host_comm_ms"] > 0
    assert 0 < nic["comm_share"] < 1
    assert nic["requests"] == 20 and nic["ttft_ms_p99"] >= nic["ttft_ms_p50"] > 0


def test_timer_checks_the_deployment():
    with pytest.raises(WorkloadError, match="heads"):
        IterationTimer(nicemu.workloads.load_model("llama3-8b"), nicemu.workloads.load_accelerator("a100"),
                       nicemu.workloads.Parallelism(tp=5), fake_comm)


def test_faster_collectives_lower_ttft_and_tpot():
    reqs = [Request(i, i * 20_000.0, 600, 30) for i in range(20)]
    model, acc, par = nicemu.workloads.load_model("llama3-8b"), nicemu.workloads.load_accelerator("h100"), nicemu.workloads.Parallelism(8)
    out = {}
    for name, scale in (("slow", 1.0), ("fast", 0.75)):
        timer = IterationTimer(model, acc, par, lambda r, s=scale: CommCost(s * fake_comm(r).emulated_us))
        out[name] = summarize(run_batching(reqs, timer), timer.costs)
    assert out["fast"]["ttft_ms_mean"] < out["slow"]["ttft_ms_mean"]
    assert out["fast"]["tpot_ms_mean"] < out["slow"]["tpot_ms_mean"]
