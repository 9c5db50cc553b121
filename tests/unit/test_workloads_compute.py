"""Accelerator presets and the roofline compute model (workloads/compute.py)."""

import pytest

from nicemu.errors import WorkloadError
from nicemu.workloads.accelerators import ACCELERATORS, Accelerator, load_accelerator
from nicemu.workloads.batch import Batch, Decode, PrefillChunk, make_batch
from nicemu.workloads.compute import expected_experts_hit, iteration_compute, iteration_compute_us
from nicemu.workloads.models import PRESETS
from nicemu.workloads.parallelism import Parallelism

H100 = ACCELERATORS["H100-SXM"]
A100 = ACCELERATORS["A100-80G"]
L8 = PRESETS["Llama-3-8B"]
L2 = PRESETS["Llama-2-7B"]
L70 = PRESETS["Llama-3-70B"]
MIX = PRESETS["Mixtral-8x7B"]


def test_accelerator_datasheet_values():
    assert (A100.peak_bf16_flops, A100.hbm_GBps) == (312e12, 2039.0)
    assert (H100.peak_bf16_flops, H100.hbm_GBps) == (989e12, 3350.0)
    assert H100.flops_per_us == 989e6 and H100.bytes_per_us == 3.35e6


@pytest.mark.parametrize("alias, name", [("h100", "H100-SXM"), ("H100-SXM", "H100-SXM"), ("a100", "A100-80G"),
                                         ("a100_80g", "A100-80G")])
def test_accelerator_aliases(alias, name):
    assert load_accelerator(alias).name == name


def test_unknown_accelerator_and_bad_values():
    with pytest.raises(WorkloadError, match="A100-80G, H100-SXM"):
        load_accelerator("tpu")
    with pytest.raises(WorkloadError, match="efficiency"):
        Accelerator("x", 1.0, 1.0, 1.0, flops_efficiency=1.5)


def test_prefill_gemms_are_compute_bound_and_decode_gemms_memory_bound():
    pre = iteration_compute(L8, H100, make_batch([(2048, 0)]), Parallelism(1))
    dec = iteration_compute(L8, H100, make_batch([], [1000] * 16), Parallelism(1))
    for op in ("qkv", "o_proj", "mlp_up", "mlp_down"):
        assert next(o for o in pre.layer_ops if o.name == op).bound == "compute"
        assert next(o for o in dec.layer_ops if o.name == op).bound == "memory"
    assert next(o for o in dec.layer_ops if o.name == "attention_decode").bound == "memory"


def test_qkv_gemm_formula_with_gqa():
    tokens, tp = 1000, 2
    res = iteration_compute(L8, H100, make_batch([(tokens, 0)]), Parallelism(tp))
    qkv = res.layer_ops[0]
    cols = 4096 / tp + 2 * (8 // tp) * 128
    assert qkv.flops == 2 * tokens * 4096 * cols
    assert qkv.bytes == 2 * (4096 * cols + tokens * 4096 + tokens * cols)
    assert qkv.time_us == pytest.approx(max(qkv.flops / 989e6, qkv.bytes / 3.35e6))


def test_prefill_flops_are_two_times_active_params_times_tokens():
    """Summed over layers and ranks, GEMM FLOPs = 2 * per-layer params * tokens (attention excluded)."""
    tokens, tp = 512, 4
    for model in (L8, L70, MIX):
        res = iteration_compute(model, H100, make_batch([(tokens, 0)]), Parallelism(tp))
        gemm_flops = sum(o.flops for o in res.layer_ops if not o.name.startswith("attention"))
        router = 2 * tokens * model.router_params           # replicated, not sharded
        sharded = gemm_flops - (router if model.is_moe else 0)
        expected = 2 * tokens * (model.active_layer_params - model.router_params)
        assert sharded * tp == pytest.approx(expected, rel=1e-12)


def test_decode_reads_the_weights_once_per_rank():
    """Batch of one decode: GEMM bytes ~ layer weights / TP (activations are tiny)."""
    tp = 8
    res = iteration_compute(L70, H100, make_batch([], [0]), Parallelism(tp))
    weight_bytes = sum(o.bytes for o in res.layer_ops if not o.name.startswith("attention"))
    assert weight_bytes == pytest.approx(2 * L70.layer_params / tp, rel=1e-3)
    # memory-bound: the layer time is bytes / bandwidth
    assert res.layer_us == pytest.approx(sum(o.bytes for o in res.layer_ops) / 3.35e6, rel=1e-9)


def test_decode_attention_reads_the_kv_cache_and_grows_with_context():
    short = iteration_compute(L8, H100, make_batch([], [1000]))
    long = iteration_compute(L8, H100, make_batch([], [9000]))
    def kv_bytes(ctx):      # KV read of ctx + 1 tokens, plus new K/V written, Q read and output written
        return 2 * (2 * 8 * 128 * (ctx + 1)) + 2 * (2 * 8 * 128 + 2 * 32 * 128)

    att_short = next(o for o in short.layer_ops if o.name == "attention_decode")
    att_long = next(o for o in long.layer_ops if o.name == "attention_decode")
    assert (att_short.bytes, att_long.bytes) == (kv_bytes(1000), kv_bytes(9000))
    assert att_long.time_us == pytest.approx(kv_bytes(9000) / 3.35e6)   # memory-bound
    assert att_long.time_us / att_short.time_us > 8.9


def test_gqa_reads_four_times_less_kv_than_mha():
    """Llama-3-8B (8 KV heads) vs Llama-2-7B (32 KV heads): same head count and head_dim."""
    ctx = 4096
    b3 = next(o for o in iteration_compute(L8, H100, make_batch([], [ctx])).layer_ops if o.name == "attention_decode")
    b2 = next(o for o in iteration_compute(L2, H100, make_batch([], [ctx])).layer_ops if o.name == "attention_decode")
    assert b3.flops == b2.flops
    kv3, kv2 = 2 * 8 * 128 * (ctx + 1) * 2, 2 * 32 * 128 * (ctx + 1) * 2
    assert kv2 / kv3 == 4
    assert b2.bytes - b3.bytes == pytest.approx((kv2 - kv3) + 2 * 2 * (32 - 8) * 128)


def test_prefill_attention_counts_causal_pairs_with_prior_context():
    c, p = 512, 1024
    res = iteration_compute(L8, H100, Batch((PrefillChunk(0, c, p),)), Parallelism(2))
    att = next(o for o in res.layer_ops if o.name == "attention_prefill")
    pairs = c * p + c * (c + 1) / 2
    assert att.flops == 4 * 128 * 16 * pairs
    assert att.bytes == 2 * (2 * 4 * 128 * (p + c) + 2 * 4 * 128 * c + 2 * 16 * 128 * c)


def test_mixed_batch_times_prefill_and_decode_attention_separately():
    res = iteration_compute(L8, H100, make_batch([(256, 0)], [500, 700]))
    names = [o.name for o in res.layer_ops]
    assert names == ["qkv", "attention_prefill", "attention_decode", "o_proj", "mlp_up", "mlp_down"]


def test_moe_touches_only_top_k_experts():
    one = iteration_compute(MIX, H100, make_batch([], [100]), Parallelism(1))
    up = next(o for o in one.layer_ops if o.name == "mlp_up")
    assert up.flops == 2 * 2 * 4096 * 2 * 14336          # 1 token x top-2 experts, gate+up
    assert expected_experts_hit(8, 2, 1) == pytest.approx(2.0)
    assert expected_experts_hit(8, 2, 10_000) == pytest.approx(8.0)
    assert expected_experts_hit(8, 2, 0) == 0.0
    big = iteration_compute(MIX, H100, make_batch([], [100] * 64), Parallelism(1))
    up_big = next(o for o in big.layer_ops if o.name == "mlp_up")
    assert up_big.bytes > 3.5 * up.bytes                  # all 8 experts read, not 2


def test_expert_parallel_has_same_flops_per_rank_as_tp_sharded_experts():
    b = make_batch([(512, 0)])
    tp = iteration_compute(MIX, H100, b, Parallelism(8))
    ep = iteration_compute(MIX, H100, b, Parallelism(8, ep=8))
    f = {o.name: o.flops for o in tp.layer_ops}
    g = {o.name: o.flops for o in ep.layer_ops}
    assert f == pytest.approx(g)


def test_tp_divides_per_rank_time():
    b = make_batch([(4096, 0)])
    t1 = iteration_compute(L70, H100, b, Parallelism(1)).layer_us
    t8 = iteration_compute(L70, H100, b, Parallelism(8)).layer_us
    assert 7 < t1 / t8 <= 8.001


def test_h100_faster_than_a100():
    b = make_batch([(2048, 0)], [2000] * 32)
    assert iteration_compute(L70, H100, b, Parallelism(8)).total_us < iteration_compute(L70, A100, b, Parallelism(8)).total_us


def test_stage_split_and_head():
    b = make_batch([(100, 0)], [10, 20])
    res = iteration_compute(L8, H100, b, Parallelism(2, pp=4))
    stages = res.stage_us(Parallelism(2, pp=4))
    assert len(stages) == 4 and sum(stages) == pytest.approx(res.total_us)
    assert stages[0] - stages[1] == pytest.approx(res.embedding.time_us)
    # LM head only for sampled tokens: 1 finishing prompt + 2 decodes
    assert res.lm_head.flops == 2 * 3 * 4096 * 128256 / 2


def test_lm_head_skipped_for_unfinished_prompt_chunk():
    b = Batch((PrefillChunk(0, 512, 0, completes_prompt=False),))
    assert iteration_compute(L8, H100, b).lm_head.time_us == 0
    assert b.sampled_tokens == 0


def test_empty_batch_costs_nothing():
    res = iteration_compute(L8, H100, Batch())
    assert res.total_us == 0 and res.layer_ops == ()


def test_plain_number_interface():
    us = iteration_compute_us(L8, H100, [(512, 0), (100, 512)], [1000, 2000], Parallelism(2))
    b = Batch((PrefillChunk(0, 512, 0), PrefillChunk(1, 100, 512)), (Decode(2, 1000), Decode(3, 2000)))
    assert us == iteration_compute(L8, H100, b, Parallelism(2)).total_us > 0


def test_efficiency_derates():
    slow = Accelerator("half", 989e12, 3350.0, 80.0, flops_efficiency=0.5, hbm_efficiency=0.5)
    b = make_batch([(2048, 0)], [100] * 8)
    assert iteration_compute(L8, slow, b).total_us == pytest.approx(2 * iteration_compute(L8, H100, b).total_us)
