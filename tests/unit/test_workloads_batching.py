"""Continuous batching with chunked prefill (workloads/batching.py)."""

import pytest

from nicemu.errors import WorkloadError
from nicemu.workloads.batching import Batcher, BatchingConfig, run_batching
from nicemu.workloads.requests import Request, synthetic_requests


class Recorder:
    """A duration callback that records every batch; duration = 100 us + 1 us per token."""

    def __init__(self):
        self.iterations = []

    def __call__(self, it):
        self.iterations.append(it)
        return 100.0 + it.batch.tokens


def test_single_request_chunks_then_decodes():
    rec = Recorder()
    res = run_batching([Request(0, 0.0, 1200, 4)], rec)
    chunks = [(c.tokens, c.context_tokens, c.completes_prompt) for it in rec.iterations for c in it.batch.prefills]
    assert chunks == [(512, 0, False), (512, 512, False), (176, 1024, True)]
    decodes = [d.context_tokens for it in rec.iterations for d in it.batch.decodes]
    assert decodes == [1200, 1201, 1202]          # cached tokens before each decode step
    r = res.requests[0]
    assert r.first_token_us == 612 + 612 + 276
    assert len(r.token_us) == 4 and r.finish_us == 1500 + 3 * 101
    assert [log.phase for log in res.iterations] == ["prefill"] * 3 + ["decode"] * 3


def test_budget_respected_and_decodes_first():
    reqs = synthetic_requests(60, 50.0, "uniform:100:3000", "uniform:1:50", seed=2)
    cfg = BatchingConfig(token_budget=1024, chunk_tokens=256)
    rec = Recorder()
    res = Batcher(cfg).run(reqs, rec)
    assert all(r.done for r in res.requests)
    seen_decode_with_prefill = False
    for it in rec.iterations:
        b = it.batch
        assert 0 < b.tokens <= 1024
        assert all(c.tokens <= 256 for c in b.prefills)
        seen_decode_with_prefill |= b.phase == "mixed"
    assert seen_decode_with_prefill
    # every prompt token prefilled exactly once, every output token after the first decoded once
    total_prefill = sum(it.batch.prefill_tokens for it in rec.iterations)
    total_decodes = sum(len(it.batch.decodes) for it in rec.iterations)
    assert total_prefill == sum(r.input_tokens for r in reqs)
    assert total_decodes == sum(r.output_tokens - 1 for r in reqs)


def test_chunks_continue_before_new_admissions_fcfs():
    reqs = [Request(0, 0.0, 1000, 2), Request(1, 0.0, 1000, 2)]
    rec = Recorder()
    run_batching(reqs, rec, BatchingConfig(token_budget=600, chunk_tokens=512))
    first = [(c.request_id, c.tokens) for c in rec.iterations[0].batch.prefills]
    second = [(c.request_id, c.tokens) for c in rec.iterations[1].batch.prefills]
    assert first == [(0, 512), (1, 88)]
    assert second == [(0, 488), (1, 112)]


def test_decode_budget_leaves_room_accounting():
    # 3 decoding requests, budget 4: only 1 prefill token fits next to the 3 decodes
    reqs = [Request(i, 0.0, 1, 10) for i in range(3)] + [Request(3, 0.0, 50, 1)]
    rec = Recorder()
    run_batching(reqs, rec, BatchingConfig(token_budget=4, chunk_tokens=512, max_running=4))
    it = rec.iterations[1]
    assert len(it.batch.decodes) == 3 and [c.tokens for c in it.batch.prefills] == [1]


def test_max_running_admission():
    reqs = [Request(i, 0.0, 10, 5) for i in range(6)]
    rec = Recorder()
    run_batching(reqs, rec, BatchingConfig(max_running=2))
    assert all(len(it.batch.prefills) + len(it.batch.decodes) <= 2 for it in rec.iterations)


def test_idle_gap_jumps_to_next_arrival():
    res = run_batching([Request(0, 0.0, 10, 1), Request(1, 5e6, 10, 1)], lambda it: 1000.0)
    assert res.requests[0].first_token_us == 1000.0
    assert res.requests[1].first_token_us == 5e6 + 1000.0
    assert [log.start_us for log in res.iterations] == [0.0, 5e6]
    assert res.end_us == 5e6 + 1000.0


def test_arrival_during_iteration_waits_for_next_iteration():
    res = run_batching([Request(0, 0.0, 10, 3), Request(1, 50.0, 10, 1)], lambda it: 100.0)
    assert res.requests[1].first_token_us == 200.0     # admitted at t=100, prefilled in the 2nd iteration


def test_single_output_token_finishes_at_prefill():
    res = run_batching([Request(0, 0.0, 700, 1)], lambda it: 10.0)
    r = res.requests[0]
    assert r.done and r.first_token_us == r.finish_us == 20.0


def test_deterministic():
    reqs = synthetic_requests(80, 20.0, "lognormal:1155:0.8", "lognormal:211:0.8", seed=5)
    a = run_batching(reqs, Recorder())
    b = run_batching(reqs, Recorder())
    assert [r.token_us for r in a.requests] == [r.token_us for r in b.requests]
    assert a.iterations == b.iterations


def test_bad_duration_and_bad_config():
    with pytest.raises(WorkloadError, match="duration"):
        run_batching([Request(0, 0.0, 10, 2)], lambda it: -1.0)
    with pytest.raises(WorkloadError, match="duration"):
        run_batching([Request(0, 0.0, 10, 2)], lambda it: float("nan"))
    with pytest.raises(WorkloadError, match="token_budget"):
        BatchingConfig(token_budget=0)
    with pytest.raises(WorkloadError, match="unique"):
        run_batching([Request(0, 0.0, 10, 2), Request(0, 1.0, 10, 2)], lambda it: 1.0)
    with pytest.raises(WorkloadError, match=">= 1"):
        run_batching([Request(0, 0.0, 0, 2)], lambda it: 1.0)


def test_empty_request_list():
    res = run_batching([], lambda it: 1.0)
    assert res.requests == [] and res.iterations == [] and res.end_us == 0.0


def test_a_reused_prefix_is_restored_at_admission_not_prefilled():
    from nicemu.workloads.batch import Restore
    seen = []

    def dur(it):
        seen.append(it.batch)
        return 10.0
    res = Batcher(BatchingConfig(chunk_tokens=64)).run([Request(0, 0.0, 200, 2, cached_tokens=150)], dur)
    assert seen[0].restores == (Restore(0, 150),) and seen[0].prefill_tokens == 50
    assert seen[0].prefills[0].context_tokens == 150 and seen[0].restore_tokens == 150
    assert [b.restores for b in seen[1:]] == [()] and res.requests[0].token_us == [10.0, 20.0]
    with pytest.raises(WorkloadError, match="reused prefix of 200 tokens"):
        Batcher().run([Request(0, 0.0, 200, 2, cached_tokens=200)], dur)
