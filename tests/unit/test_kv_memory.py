"""Paged KV-cache memory (workloads/kv_memory.py) and the batcher's admission, preemption and rejection."""

import pytest

from nicemu.errors import WorkloadError
from nicemu.workloads import load_accelerator, load_model
from nicemu.workloads.batch import Restore
from nicemu.workloads.batching import BatchingConfig, run_batching
from nicemu.workloads.kv_memory import (
    KvPlan,
    blocks_for,
    plan_kv,
    rejection,
    stage_kv_bytes_per_token,
    stage_weight_bytes,
)
from nicemu.workloads.metrics import kv_summary, request_rows, summarize
from nicemu.workloads.parallelism import Parallelism
from nicemu.workloads.requests import Request

H100 = load_accelerator("H100-SXM")
LLAMA3_70B = load_model("llama3-70b")


class Recorder:
    """A duration callback that records every batch; duration = 100 us + 1 us per token."""

    def __init__(self):
        self.iterations = []

    def __call__(self, it):
        self.iterations.append(it)
        return 100.0 + it.batch.tokens


def plan(blocks, block_tokens=4, swap_latency_us=0.0, swap_us_per_block=0.0):
    """A cache of ``blocks`` blocks, built directly (the batcher only reads blocks, sizes and swap times)."""
    return KvPlan(blocks, block_tokens, 80e9, 0.9, 0, 1000, 8000, swap_latency_us, swap_us_per_block)


def test_llama3_70b_block_arithmetic_by_hand():
    par = Parallelism(tp=8)
    # 80 layers x 2 (K, V) x 8 KV heads / TP 8 = 1 head x head_dim 128 x 2 bytes
    assert stage_kv_bytes_per_token(LLAMA3_70B, par) == [80 * 2 * 1 * 128 * 2] == [40_960]
    # per layer: Q, O 8192 x 8192 / 8 each; K, V 8192 x 128 (one KV head) each; MLP 3 x 8192 x 28672 / 8
    layer = 2 * 8192 * 8192 // 8 + 2 * 8192 * 128 + 3 * 8192 * 28672 // 8
    weights = 2 * (80 * layer + 2 * 128256 * 8192 // 8)       # embedding and LM head, vocabulary-parallel
    assert stage_weight_bytes(LLAMA3_70B, par) == [weights] == [17_638_096_896]
    kv = plan_kv(LLAMA3_70B, H100, par)
    assert kv.blocks == int((0.9 * 80e9 - weights) // (16 * 40_960)) == 82_949
    assert kv.capacity_tokens == 82_949 * 16 and kv.block_bytes == 16 * 40_960
    assert kv.instance_block_bytes == 8 * 16 * 40_960
    assert kv.watermark_blocks == 829 and kv.admissible_blocks == 82_949 - 829


def test_gqa_differs_from_multi_head_and_kv_heads_replicate_beyond_tp():
    llama2 = load_model("llama2-7b")             # 32 KV heads: multi-head
    assert stage_kv_bytes_per_token(llama2, Parallelism(tp=8)) == [32 * 2 * 4 * 128 * 2]
    assert stage_kv_bytes_per_token(LLAMA3_70B, Parallelism(tp=1)) == [80 * 2 * 8 * 128 * 2]
    # TP 16 > 8 KV heads: each rank keeps one head, so per-rank KV does not halve again
    assert stage_kv_bytes_per_token(LLAMA3_70B, Parallelism(tp=16)) == [80 * 2 * 1 * 128 * 2]


def test_pipeline_stages_split_layers_and_vocabulary():
    par = Parallelism(tp=4, pp=3)                # 80 layers: 27, 27, 26
    layer = 2 * 8192 * 8192 // 4 + 2 * 8192 * 2 * 128 + 3 * 8192 * 28672 // 4
    vocab = 128256 * 8192 // 4
    assert stage_weight_bytes(LLAMA3_70B, par) == [2 * (27 * layer + vocab), 2 * 27 * layer,
                                                   2 * (26 * layer + vocab)]
    assert stage_kv_bytes_per_token(LLAMA3_70B, par) == [27 * 2 * 2 * 128 * 2] * 2 + [26 * 2 * 2 * 128 * 2]
    kv = plan_kv(LLAMA3_70B, H100, par)
    weights = stage_weight_bytes(LLAMA3_70B, par)
    per_token = stage_kv_bytes_per_token(LLAMA3_70B, par)
    assert kv.blocks == min(int((72e9 - w) // (16 * t)) for w, t in zip(weights, per_token))


def test_swap_time_from_pcie():
    kv = plan_kv(LLAMA3_70B, H100, Parallelism(tp=8), pcie_GBps=25.0, pcie_latency_us=0.25)
    assert kv.swap_us_per_block == pytest.approx(655_360 / 25e3)
    assert kv.swap_us(10) == 0.25 + 10 * kv.swap_us_per_block and kv.swap_us(0) == 0.0


@pytest.mark.parametrize("kwargs, match", [
    ({"utilization": 0.0}, "must be in \\(0, 1\\]"),
    ({"utilization": 1.5}, "must be in \\(0, 1\\]"),
    ({"block_tokens": 0}, "--kv-block-tokens 0"),
    ({"utilization": 0.2}, "weights take 17.64 GB per accelerator"),
    ({"utilization": 0.2205, "block_tokens": 4096}, "no KV block of 4096 tokens fits"),
])
def test_bad_memory_settings(kwargs, match):
    with pytest.raises(WorkloadError, match=match):
        plan_kv(LLAMA3_70B, H100, Parallelism(tp=8), **kwargs)


def test_model_that_does_not_fit():
    with pytest.raises(WorkloadError, match="raise --tp or --pp"):
        plan_kv(load_model("llama3.1-405b"), H100, Parallelism(tp=1))


def test_admission_keeps_the_watermark_free():
    # 200 blocks of 4 tokens, watermark int(0.01 x 200) = 2. A takes 190 blocks (760 tokens).
    for prompt, admitted_with_a in ((32, True), (36, False)):    # 8 blocks leave 2 free; 9 would leave 1
        rec = Recorder()
        reqs = [Request(0, 0.0, 760, 1), Request(1, 0.0, prompt, 1)]
        run_batching(reqs, rec, BatchingConfig(token_budget=4096, chunk_tokens=4096, kv=plan(200)))
        first = {c.request_id for c in rec.iterations[0].batch.prefills}
        assert first == ({0, 1} if admitted_with_a else {0})


def test_newest_running_request_is_preempted_and_recomputed():
    # 10 blocks of 4 tokens, no watermark; three prompts of 8 tokens (2 blocks), 10 output tokens each.
    reqs = [Request(i, 0.0, 8, 10) for i in range(3)]
    rec = Recorder()
    res = run_batching(reqs, rec, BatchingConfig(kv=plan(10)))
    a, b, c = res.requests
    assert (a.preemptions, b.preemptions, c.preemptions) == (0, 0, 1)
    # iteration 5: sequences reach 13 tokens (4 blocks); A takes the last free block, B needs one, so C
    # (the newest) drops its 3 blocks and waits at the front of the queue
    assert [log.preempted for log in res.iterations] == [0] * 5 + [1] + [0] * 9
    assert [d.request_id for d in rec.iterations[5].batch.decodes] == [0, 1]
    # A and B finish at iteration 9; C comes back with prompt + its 5 tokens as one prefill, then decodes
    assert [(ch.request_id, ch.tokens, ch.context_tokens) for ch in rec.iterations[10].batch.prefills] == [(2, 13, 0)]
    assert [d.context_tokens for it in rec.iterations[11:] for d in it.batch.decodes] == [13, 14, 15, 16]
    assert all(len(r.token_us) == 10 for r in res.requests) and len(res.iterations) == 15
    assert max(log.kv_blocks_used for log in res.iterations) == 10
    assert sum(log.swapped_blocks for log in res.iterations) == 0
    # C waited from the start of iteration 5 to the start of iteration 10
    assert c.queue_us == rec.iterations[10].start_us - rec.iterations[5].start_us and a.queue_us == 0.0


def test_swap_moves_blocks_and_charges_pcie_time():
    reqs = [Request(i, 0.0, 8, 10) for i in range(3)]
    rec = Recorder()
    res = run_batching(reqs, rec, BatchingConfig(kv=plan(10, swap_latency_us=7.0, swap_us_per_block=3.0),
                                                 preempt="swap"))
    logs = res.iterations
    # out at iteration 5 (3 blocks), in at iteration 10 (3 blocks, plus one new for the 13th token)
    assert [(log.index, log.swapped_blocks, log.swap_us) for log in logs if log.swapped_blocks] == [
        (5, 3, 7.0 + 9.0), (10, 3, 7.0 + 9.0)]
    assert logs[5].duration_us == 100.0 + 2 + 16.0          # two decodes plus the swap-out
    assert logs[10].duration_us == 100.0 + 1 + 16.0         # C decodes right away: no recompute
    assert not rec.iterations[10].batch.prefills
    assert [d.context_tokens for it in rec.iterations[10:] for d in it.batch.decodes] == [12, 13, 14, 15, 16]
    assert len(logs) == 15 and all(len(r.token_us) == 10 for r in res.requests)
    kv = kv_summary(res)
    assert kv["preemptions"] == 1 and kv["swapped_blocks"] == 6 and kv["swapped_bytes"] == 6 * 8000
    assert kv["swap_ms"] == 2 * 16.0 / 1e3 and kv["kv_peak_fraction"] == 1.0


def test_a_request_preempts_itself_when_it_is_the_newest():
    # 4 blocks: A (4 tokens, 1 block) and B (8 tokens, 2 blocks); at iteration 1 A grows to 2 blocks, B
    # needs a third and is itself the newest running request
    res = run_batching([Request(0, 0.0, 4, 3), Request(1, 0.0, 8, 3)], Recorder(), BatchingConfig(kv=plan(4)))
    assert [r.preemptions for r in res.requests] == [0, 1]
    assert [log.decodes for log in res.iterations[:2]] == [0, 1]
    assert all(r.done for r in res.requests)


def test_rejection_reasons():
    kv = plan(100, block_tokens=16)                      # watermark 1: 99 admissible blocks
    assert rejection(kv, 99 * 16, 1) is None
    assert "prompt of 1585 tokens needs 100 KV blocks, more than the 99" in rejection(kv, 99 * 16 + 1, 1)
    assert rejection(kv, 16, 99 * 16 - 16 + 1) is None   # 16 + 1568 = 1584 tokens: 99 blocks
    assert "16 + 1569 tokens need 100 KV blocks" in rejection(kv, 16, 99 * 16 - 16 + 2)
    assert blocks_for(17, 16) == 2 and blocks_for(16, 16) == 1


def test_rejected_requests_are_counted_listed_and_not_served():
    reqs = [Request(0, 0.0, 20, 5), Request(1, 0.0, 2000, 5), Request(2, 0.001, 30, 3000)]
    res = run_batching(reqs, Recorder(), BatchingConfig(kv=plan(100, block_tokens=16)))
    assert [r.rejected is None for r in res.requests] == [True, False, False]
    assert res.requests[0].done and not res.requests[1].token_us
    rec = summarize(res) | kv_summary(res)
    assert rec["requests"] == 1 and rec["rejected"] == 2
    rows = request_rows(res)
    assert [row["rejected"] == "" for row in rows] == [True, False, False]
    assert rows[1]["ttft_ms"] is None and "prompt of 2000 tokens" in rows[1]["rejected"]


def test_all_rejected_neither_crashes_nor_hangs():
    res = run_batching([Request(0, 0.0, 5000, 5)], Recorder(), BatchingConfig(kv=plan(10)))
    assert res.iterations == []
    rec = summarize(res, []) | kv_summary(res)
    assert rec["requests"] == 0 and rec["rejected"] == 1 and rec["ttft_ms_mean"] is None


def test_unlimited_cache_gives_the_same_batches():
    reqs = [Request(i, i * 100.0, 300 + 37 * i, 20 + i) for i in range(12)]
    base, paged = Recorder(), Recorder()
    a = run_batching(reqs, base, BatchingConfig(token_budget=512, chunk_tokens=128))
    b = run_batching(reqs, paged, BatchingConfig(token_budget=512, chunk_tokens=128, kv=plan(100_000)))
    assert [it.batch for it in base.iterations] == [it.batch for it in paged.iterations]
    assert [r.token_us for r in a.requests] == [r.token_us for r in b.requests]


def test_preemption_under_load_serves_every_token():
    """Many requests through a tight cache, both modes: every request finishes with all its tokens, each
    prompt token is prefilled once plus once per recomputed token, and the cache never overflows."""
    reqs = [Request(i, i * 50.0, 20 + (i * 7) % 60, 5 + (i * 11) % 40) for i in range(40)]
    for mode in ("recompute", "swap"):
        rec = Recorder()
        res = run_batching(reqs, rec, BatchingConfig(token_budget=256, chunk_tokens=64, kv=plan(60),
                                                     preempt=mode))
        assert all(r.done and len(r.token_us) == r.output_tokens for r in res.requests)
        assert sum(r.preemptions for r in res.requests) > 0
        assert max(log.kv_blocks_used for log in res.iterations) <= 60
        prefilled = sum(ch.tokens for it in rec.iterations for ch in it.batch.prefills)
        decoded = sum(len(it.batch.decodes) for it in rec.iterations)
        assert decoded + sum(1 for it in rec.iterations for ch in it.batch.prefills if ch.completes_prompt) == \
            sum(r.output_tokens for r in reqs)
        if mode == "swap":
            assert prefilled == sum(r.input_tokens for r in reqs)
        else:
            assert prefilled > sum(r.input_tokens for r in reqs)


@pytest.mark.parametrize("mode, b_prefilled", [("recompute", 24 + 28), ("swap", 28)])
def test_a_request_preempted_mid_prefill(mode, b_prefilled):
    # 10 blocks of 4 tokens, chunks of 4: A (8-token prompt, 20 outputs) and B (28 tokens, 7 blocks) are
    # admitted together (9 blocks). A's first token comes at iteration 1; at iteration 6 its decode needs a
    # 4th block and B, the newest, goes with 24 of its 28 prompt tokens done: recompute starts its prompt
    # again once A has finished, swap resumes it at token 24.
    reqs = [Request(0, 0.0, 8, 20), Request(1, 0.0, 28, 2)]
    rec = Recorder()
    res = run_batching(reqs, rec, BatchingConfig(chunk_tokens=4, kv=plan(10, swap_us_per_block=1.0),
                                                 preempt=mode))
    assert [log.preempted for log in res.iterations[:7]] == [0] * 6 + [1]
    chunks = [(ch.tokens, ch.context_tokens) for it in rec.iterations for ch in it.batch.prefills if ch.request_id == 1]
    assert sum(t for t, _ in chunks) == b_prefilled
    assert chunks[6][1] == (0 if mode == "recompute" else 24)     # where B's first chunk after preemption starts
    b = res.requests[1]
    assert b.preemptions == 1 and b.done and b.first_token_us > res.requests[0].finish_us
    assert sum(log.swapped_blocks for log in res.iterations) == (14 if mode == "swap" else 0)


def test_disaggregated_instances_each_have_their_cache():
    """Prefill and decode instances batch against their own 4 blocks of 4 tokens. A (8-token prompt) and
    B (4 tokens) prefill together (3 blocks) and finish at 50 + 2 x 12 = 74 us; their KV lands at 76 and
    75 us (0.25 us per token). On the decode side a request holds its prompt plus its first token: B takes
    2 blocks and A, needing 3, waits until B has finished. C (40 tokens) can never fit and is rejected."""
    from nicemu.workloads.disaggregation import serve_disaggregated
    from nicemu.workloads.iteration_time import CommCost, IterationCost
    from nicemu.workloads.traffic import TrafficRecord

    class Timer:
        def __init__(self):
            self.costs = []

        def __call__(self, it):
            self.costs.append(IterationCost(it.index, 50.0 + 2 * it.batch.tokens, 0.0, 0.0, 0, 0))
            return 50.0 + 2 * it.batch.tokens

    def kv_records(prompt, source, target):
        return [TrafficRecord(-1, "prefill", -1, "p2p", prompt, "p2p-nic", "kv_cache", (source, target))]

    reqs = [Request(0, 0.0, 8, 3), Request(1, 0.0, 4, 3), Request(2, 0.0, 40, 2)]
    dis = serve_disaggregated(reqs, 1, 1, lambda i: Timer(), kv_records,
                              lambda recs: [CommCost(0.25 * r.bytes) for r in recs], BatchingConfig(kv=plan(4)))
    a, b, c = dis.result.requests
    assert "prompt of 40 tokens needs 10 KV blocks" in c.rejected and 2 not in dis.kv_us
    assert a.done and b.done and dis.kv_us == {0: 2.0, 1: 1.0}
    dec = dis.decode[0]
    assert [log.kv_blocks_used for log in dec.iterations] == [2, 2, 3, 3]
    starts = [log.start_us for log in dec.iterations]
    assert starts == [75.0, 127.0, 179.0, 231.0]
    assert a.queue_us == 179.0 - 76.0 and b.queue_us == 0.0
    assert kv_summary(dis.result)["rejected"] == 1


class SwapInRecorder(Recorder):
    """As Recorder, and brings the pass's swap-ins back itself (swap_in="partial") at 5 us a token."""

    def __call__(self, it):
        it.swap_in_us = 5.0 * it.batch.swap_in_tokens
        return super().__call__(it) + it.swap_in_us


def test_partial_swap_in_goes_through_the_pass():
    """The scenario of test_swap_moves_blocks_and_charges_pcie_time with swap_in="partial": the swap-out is
    unchanged; at iteration 10 no synchronous swap-in, the pass lists C's 12 tokens of KV (8 prompt tokens and 4
    of its 5 outputs: the 5th has no KV yet) and what bringing them back adds is logged as swap time."""
    reqs = [Request(i, 0.0, 8, 10) for i in range(3)]
    rec = SwapInRecorder()
    res = run_batching(reqs, rec, BatchingConfig(kv=plan(10, swap_latency_us=7.0, swap_us_per_block=3.0),
                                                 preempt="swap", swap_in="partial"))
    logs = res.iterations
    assert [(log.index, log.swapped_blocks, log.swap_us) for log in logs if log.swapped_blocks] == [
        (5, 3, 7.0 + 9.0), (10, 3, 5.0 * 12)]
    assert [it.batch.swap_ins for it in rec.iterations if it.batch.swap_ins] == [(Restore(2, 12),)]
    assert rec.iterations[10].swap_us == 0.0
    assert logs[10].duration_us == 100.0 + 1 + 60.0
    assert [d.context_tokens for it in rec.iterations[10:] for d in it.batch.decodes] == [12, 13, 14, 15, 16]
    assert kv_summary(res)["swap_ms"] == (16.0 + 60.0) / 1e3
    # a request swapped out mid-prefill (test_a_request_preempted_mid_prefill's B, 24 of its 28 prompt tokens
    # done) brings back the 24 tokens it had prefilled, and resumes its prompt at token 24
    rec = SwapInRecorder()
    res = run_batching([Request(0, 0.0, 8, 20), Request(1, 0.0, 28, 2)], rec,
                       BatchingConfig(chunk_tokens=4, kv=plan(10, swap_us_per_block=1.0), preempt="swap",
                                      swap_in="partial"))
    back = [it for it in rec.iterations if it.batch.swap_ins]
    assert [it.batch.swap_ins for it in back] == [(Restore(1, 24),)] and back[0].swap_in_us == 5.0 * 24
    assert [(ch.tokens, ch.context_tokens) for ch in back[0].batch.prefills if ch.request_id == 1] == [(4, 24)]
    assert all(r.done for r in res.requests)


def test_swap_in_mode_is_checked():
    with pytest.raises(WorkloadError, match="swap-in fetch"):
        BatchingConfig(swap_in="fetch")
