"""KV restore from host memory (workloads/kv_restore.py): load, recompute and partial recomputation.

Checked against closed forms (load is bytes over PCIe; the layer pipeline in its PCIe-bound and
accelerator-bound regimes, with and without the decode step it overlaps), against an independent event-by-event walk of the pipeline, and by
brute force over every split.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nicemu.errors import WorkloadError
from nicemu.workloads.accelerators import load_accelerator
from nicemu.workloads.batch import make_batch
from nicemu.workloads.compute import iteration_compute
from nicemu.workloads.kv_restore import (
    activation_bytes_per_token,
    kv_bytes_per_token_layer,
    pipeline_us,
    recompute_kv_us,
    restore,
)
from nicemu.workloads.models import find_preset

A100 = load_accelerator("A100-80G")
OPT = find_preset("OPT-6.7B")
LLAMA = find_preset("Llama-3-70B")


def walk(layers: int, act: float, kv: float, gpu: float, decode: float = 0.0, start: float = 0.0):
    """The pipeline event by event: one PCIe queue, one accelerator queue; (restore done, decode done)."""
    pcie_free, gpu_free, recomputed = 0.0, start, 0.0
    for _ in range(layers):
        act_landed = pcie_free + act
        pcie_free = act_landed + kv
        if gpu > 0:
            recomputed = gpu_free = max(gpu_free, act_landed) + gpu
        if decode:
            gpu_free = max(gpu_free, pcie_free) + decode
    return max(pcie_free, recomputed), gpu_free


def test_bytes_per_token_follow_the_shape():
    assert activation_bytes_per_token(OPT) == 4096 * 2
    assert kv_bytes_per_token_layer(OPT) == 2 * 4096 * 2                   # multi-head: K and V are 2x the input
    assert kv_bytes_per_token_layer(LLAMA) == 2 * 8 * 128 * 2               # GQA: 8 KV heads of 128
    assert LLAMA.kv_bytes_per_token() == 80 * kv_bytes_per_token_layer(LLAMA)


def test_load_is_every_layers_kv_over_pcie():
    r = restore("load", OPT, A100, 1000, 4, 32.0)
    nbytes = 32 * 4 * 1000 * 2 * 4096 * 2
    assert (r.split, r.pcie_bytes, r.compute_us) == (0, nbytes, 0.0)
    assert r.time_us == r.pcie_us == nbytes / 32e3


def test_load_overlaps_the_decode_layer_by_layer():
    # PCIe-bound: the last layer's decode starts when its KV lands; then the LM head
    s, batch = 1000, 4
    r = restore("load", OPT, A100, s, batch, 32.0)
    step = iteration_compute(OPT, A100, make_batch([], [s] * batch))
    per_layer = batch * s * 2 * 4096 * 2 / 32e3
    assert step.layer_us < per_layer
    assert r.step_us == pytest.approx(32 * per_layer + step.layer_us + step.lm_head.time_us, rel=1e-12)
    # accelerator-bound (a very fast PCIe): the decode never waits after the first layer's KV
    fast = restore("load", OPT, A100, s, batch, 1e6)
    first = per_layer * 32.0 / 1e6
    assert fast.step_us == pytest.approx(max(step.embedding.time_us, first) + 32 * step.layer_us
                                         + step.lm_head.time_us, rel=1e-12)


def test_recompute_is_a_prefill_without_lm_head_then_the_step():
    r = restore("recompute", OPT, A100, 512, 3, 32.0)
    it = iteration_compute(OPT, A100, make_batch([(512, 0)] * 3, []))
    step = iteration_compute(OPT, A100, make_batch([], [512] * 3))
    assert r.time_us == it.layers * it.layer_us + it.embedding.time_us
    assert r.step_us == r.time_us + step.total_us
    assert (r.pcie_bytes, r.split) == (0.0, 512)


@pytest.mark.parametrize("act,kv,gpu", [(1.0, 2.0, 0.5), (1.0, 2.0, 3.0), (1.0, 0.0, 2.5), (0.0, 4.0, 0.0)])
def test_pipeline_closed_forms(act, kv, gpu):
    L = 7
    done, _ = pipeline_us(L, np.array([act]), np.array([kv]), np.array([gpu]))
    got = float(done[0])
    assert got == pytest.approx(walk(L, act, kv, gpu)[0], rel=1e-12)
    if gpu == 0:
        want = L * (act + kv)
    elif gpu <= act + kv:        # PCIe-bound: the accelerator finishes the last layer after its activations land
        want = max(L * (act + kv), (L - 1) * (act + kv) + act + gpu)
    else:                         # accelerator-bound: it starts after the first activations and never waits
        want = act + L * gpu
    assert got == pytest.approx(want, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(0, 50)), min_size=1,
                                    max_size=6), st.floats(0, 50), st.floats(0, 5))
def test_pipeline_equals_the_event_walk(layers, cases, decode, start):
    act, kv, gpu = (np.array(c) for c in zip(*cases))
    done, last = pipeline_us(layers, act, kv, gpu, decode, start)
    for i, (a, k, g) in enumerate(cases):
        want_done, want_last = walk(layers, a, k, g, decode, start)
        assert done[i] == pytest.approx(want_done, rel=1e-12, abs=1e-12)
        assert last[i] == pytest.approx(want_last, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("model", ["OPT-6.7B", "OPT-13B", "OPT-30B", "Llama-3-8B"])
@pytest.mark.parametrize("gbps", [8.0, 32.0, 128.0])
def test_partial_picks_the_best_split_and_beats_both_baselines(model, gbps):
    m, s, batch = find_preset(model), 300, 8
    best = restore("partial", m, A100, s, batch, gbps)
    every = [restore("partial", m, A100, s, batch, gbps, split=k).step_us for k in range(s + 1)]
    assert best.step_us == min(every) and best.split == every.index(min(every))
    assert best.step_us <= restore("load", m, A100, s, batch, gbps).step_us
    assert best.step_us < restore("recompute", m, A100, s, batch, gbps).step_us
    assert restore("partial", m, A100, s, batch, gbps, split=0).step_us == restore("load", m, A100, s, batch,
                                                                                      gbps).step_us


def test_a_faster_pcie_recomputes_fewer_tokens():
    splits = [restore("partial", find_preset("OPT-30B"), A100, 2048, 16, g).split for g in (16, 32, 64, 128)]
    assert splits == sorted(splits, reverse=True) and splits[0] > splits[-1]


def test_longer_sequences_recompute_a_larger_fraction():
    # the decode step's fixed weight reads share the accelerator with recomputation
    fractions = [restore("partial", find_preset("OPT-30B"), A100, s, 8, 32.0).split / s for s in (256, 1024, 4096)]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]


def test_recompute_kv_roofline_and_zero_rows():
    t = recompute_kv_us(OPT, A100, np.array([0, 1, 100000]))
    assert t[0] == 0.0
    weights = 2 * 4096 * 2 * 4096                                         # W_K and W_V, bf16
    assert t[1] == pytest.approx(weights / A100.bytes_per_us, rel=1e-3)    # one token: reading the weights
    assert t[2] == pytest.approx(2 * 100000 * 4096 * 2 * 4096 / A100.flops_per_us, rel=1e-12)   # GEMM-bound


@pytest.mark.parametrize("args,message", [
    (("fetch", 10, 1, 32.0), "unknown KV restore method 'fetch'"),
    (("load", -1, 1, 32.0), "tokens >= 0 and batch >= 1"),
    (("load", 10, 0, 32.0), "tokens >= 0 and batch >= 1"),
    (("partial", 10, 1, 0.0), "PCIe bandwidth must be > 0"),
])
def test_bad_input(args, message):
    method, tokens, batch, gbps = args
    with pytest.raises(WorkloadError, match=message):
        restore(method, OPT, A100, tokens, batch, gbps)
    with pytest.raises(WorkloadError, match="split 11 is outside 0..10"):
        restore("partial", OPT, A100, 10, 1, 32.0, split=11)


def test_gqa_models_send_no_activations():
    # Llama-3-70B: a token's layer input (8,192 values) is larger than its K and V (2 x 8 x 128)
    r = restore("partial", LLAMA, A100, 1024, 8, 32.0)
    assert r.split == 0 and r.step_us == restore("load", LLAMA, A100, 1024, 8, 32.0).step_us


def test_committed_page_is_current(tmp_path):
    """docs/results/kv_restore.{md,json} are what scripts/kv_restore.py writes today."""
    from pathlib import Path

    from nicemu.studies import kv_restore

    results = Path(__file__).resolve().parents[2] / "docs" / "results"
    kv_restore.reproduce(str(tmp_path / "kv_restore"), command="python scripts/kv_restore.py --out docs/results/kv_restore")
    for suffix in (".md", ".json", ".csv"):
        assert (tmp_path / f"kv_restore{suffix}").read_text() == (results / f"kv_restore{suffix}").read_text()


# ---------------------------------------------------------------- a restore inside a serving pass (--prefix-reuse)

def test_restore_in_pass_closed_forms():
    from nicemu.workloads.kv_restore import restore_in_pass
    L, s, w = OPT.layers, 300, OPT.kv_width
    K = s * 2 * w * 2 / 32e3                   # one layer's KV over 32 GB/s, in us
    slow = restore_in_pass("load", OPT, A100, s, 32 * 0.5 * K, 32.0)           # the pass: half a transfer per layer
    assert slow.split == 0 and slow.step_us == pytest.approx(L * K + 0.5 * K, rel=1e-12)   # PCIe-bound
    fast = restore_in_pass("load", OPT, A100, s, 32 * 3 * K, 32.0)              # compute-bound: waits for layer 0
    assert fast.step_us == pytest.approx(K + 32 * 3 * K, rel=1e-12)
    busy = restore_in_pass("load", OPT, A100, s, 32 * 0.5 * K, 32.0, pcie_busy_us=32 * K)   # NIC DMA: +K per layer
    assert busy.step_us == pytest.approx(L * 2 * K + 0.5 * K, rel=1e-12) and busy.pcie_us == slow.pcie_us
    assert restore_in_pass("load", OPT, A100, 0, 1234.5, 32.0).step_us == pytest.approx(1234.5, rel=1e-12)


def test_restore_in_pass_partial_needs_activations_smaller_than_the_ranks_kv():
    from nicemu.workloads.kv_restore import restore_in_pass
    whole = restore_in_pass("partial", OPT, A100, 2048, 5000.0, 32.0)                       # TP 1: h < 2w
    assert whole.split > 0 and whole.step_us < restore_in_pass("load", OPT, A100, 2048, 5000.0, 32.0).step_us
    # TP 4: every rank needs the whole activations but holds a quarter of the KV, so nothing is recomputed
    share = restore_in_pass("partial", OPT, A100, 2048, 5000.0, 32.0, kv_width=OPT.kv_width // 4)
    assert share.split == 0
    with pytest.raises(WorkloadError, match="load or partial"):
        restore_in_pass("recompute", OPT, A100, 10, 1.0, 32.0)


# ---------------------------------------------------------------- pipeline stages (--pp > 1): a restore per stage

def test_restore_over_two_stages_by_hand():
    """OPT-6.7B's 32 layers on two stages of 16; a layer's KV takes K over PCIe, the pass D = K/2 per layer.
    One stage (PP 1) is PCIe-bound: 32K + D. With two stages, each loads its own 16 layers from time 0 over
    its own PCIe: stage 0 is PCIe-bound and ends at 16K + D; stage 1 starts then, with every one of its
    layers landed by 16K, so it runs compute-bound: 16K + D + 16D."""
    from nicemu.workloads.kv_restore import restore_in_pass
    s, w = 300, OPT.kv_width
    K = s * 2 * w * 2 / 32e3
    D = 0.5 * K
    one = restore_in_pass("load", OPT, A100, s, 32 * D, 32.0)
    assert one.step_us == pytest.approx(32 * K + D, rel=1e-12)
    two = restore_in_pass("load", OPT, A100, s, 32 * D, 32.0, pcie_busy_us=[0.0, 0.0], stage_layers=[16, 16])
    assert two.step_us == pytest.approx(16 * K + 17 * D, rel=1e-12)
    assert two.pcie_us == pytest.approx(one.pcie_us, rel=1e-12) and two.pcie_bytes == one.pcie_bytes
    assert two.time_us == pytest.approx(16 * K, rel=1e-12) and two.splits == (0, 0)
    # the NIC's reads on stage 0 only (16K spread over its 16 layers): stage 0 ends at 32K + D, and stage 1
    # then runs its 16 layers back to back
    busy = restore_in_pass("load", OPT, A100, s, 32 * D, 32.0, pcie_busy_us=[16 * K, 0.0], stage_layers=[16, 16])
    assert busy.step_us == pytest.approx(32 * K + 17 * D, rel=1e-12)
    # on stage 1 instead, they delay nothing: its KV (2K per layer) is in by 32K, before its turn
    late = restore_in_pass("load", OPT, A100, s, 32 * D, 32.0, pcie_busy_us=[0.0, 16 * K], stage_layers=[16, 16])
    assert late.step_us == pytest.approx(32 * K + D, rel=1e-12)
    # one stage given explicitly is the default
    assert restore_in_pass("load", OPT, A100, s, 32 * D, 32.0, pcie_busy_us=[0.0], stage_layers=[32]) == one


def test_partial_over_stages_is_each_stage_walked_in_turn_and_the_best_pair_of_splits():
    """Every stage takes its own l, given when the stage before it ended: checked against the event walk
    stage after stage, and against the best of every pair (l0, l1) by brute force."""
    from nicemu.workloads.kv_restore import _best_split, restore_in_pass
    s, pass_us, gbps, stages = 40, 300.0, 16.0, [24, 16]
    model = find_preset("OPT-13B")
    layers = model.layers
    assert sum(stages) == layers
    got = restore_in_pass("partial", model, A100, s, pass_us, gbps, pcie_busy_us=[300.0, 0.0], stage_layers=stages)
    assert len(got.splits) == 2 and got.split == got.splits[0]
    act, kv = activation_bytes_per_token(model), kv_bytes_per_token_layer(model)
    start = 0.0
    for n, busy, split in zip(stages, (300.0, 0.0), got.splits):
        a, k = split * act / (gbps * 1e3), (s - split) * kv / (gbps * 1e3) + busy / n
        start = walk(n, a, k, float(recompute_kv_us(model, A100, split)), pass_us / layers, start)[1]
    assert got.step_us == pytest.approx(start, rel=1e-12)
    cand = np.arange(s + 1, dtype=np.float64)
    best = min(_best_split("partial", model, A100, s, 1, cand, gbps * 1e3, model.kv_width, pass_us / layers,
                           _best_split("partial", model, A100, s, 1, np.array([float(l0)]), gbps * 1e3,
                                       model.kv_width, pass_us / layers, 0.0, 0.0, 300.0, 2, stages[0]).step_us,
                           0.0, 0.0, 2, stages[1]).step_us for l0 in range(s + 1))
    assert got.step_us == pytest.approx(best, rel=1e-12)
    load = restore_in_pass("load", model, A100, s, pass_us, gbps, pcie_busy_us=[300.0, 0.0], stage_layers=stages)
    assert got.splits[0] > 0 and got.step_us < load.step_us      # stage 0, behind the NIC's reads, recomputes


def test_restore_over_stages_bad_input():
    from nicemu.workloads.kv_restore import restore_in_pass
    with pytest.raises(WorkloadError, match="each stage's layers"):
        restore_in_pass("load", OPT, A100, 10, 1.0, 32.0, pcie_busy_us=[0.0, 0.0], stage_layers=[16, 15])
    with pytest.raises(WorkloadError, match="one PCIe busy time per stage"):
        restore_in_pass("load", OPT, A100, 10, 1.0, 32.0, pcie_busy_us=0.0, stage_layers=[16, 16])
