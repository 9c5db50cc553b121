"""KV restore from host memory (workloads/kv_restore.py): load, recompute and partial recomputation.

Checked against closed forms (load is bytes over PCIe; the layer pipeline in its PCIe-bound and
accelerator-bound regimes), against an independent event-by-event walk of the pipeline, and by
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


def walk(layers: int, act: float, kv: float, gpu: float) -> float:
    """The pipeline event by event: one PCIe queue, one accelerator queue."""
    pcie_free, gpu_free = 0.0, 0.0
    for _ in range(layers):
        act_landed = pcie_free + act
        pcie_free = act_landed + kv
        if gpu > 0:
            gpu_free = max(gpu_free, act_landed) + gpu
    return max(pcie_free, gpu_free)


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


def test_recompute_is_a_prefill_without_lm_head():
    r = restore("recompute", OPT, A100, 512, 3, 32.0)
    it = iteration_compute(OPT, A100, make_batch([(512, 0)] * 3, []))
    assert r.time_us == it.layers * it.layer_us + it.embedding.time_us
    assert (r.pcie_bytes, r.split) == (0.0, 512)


@pytest.mark.parametrize("act,kv,gpu", [(1.0, 2.0, 0.5), (1.0, 2.0, 3.0), (1.0, 0.0, 2.5), (0.0, 4.0, 0.0)])
def test_pipeline_closed_forms(act, kv, gpu):
    L = 7
    got = float(pipeline_us(L, np.array([act]), np.array([kv]), np.array([gpu]))[0])
    assert got == pytest.approx(walk(L, act, kv, gpu), rel=1e-12)
    if gpu == 0:
        want = L * (act + kv)
    elif gpu <= act + kv:        # PCIe-bound: the accelerator finishes the last layer after its activations land
        want = max(L * (act + kv), (L - 1) * (act + kv) + act + gpu)
    else:                         # accelerator-bound: it starts after the first activations and never waits
        want = act + L * gpu
    assert got == pytest.approx(want, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(0, 50)), min_size=1,
                                    max_size=6))
def test_pipeline_equals_the_event_walk(layers, cases):
    act, kv, gpu = (np.array(c) for c in zip(*cases))
    got = pipeline_us(layers, act, kv, gpu)
    for i, (a, k, g) in enumerate(cases):
        assert got[i] == pytest.approx(walk(layers, a, k, g), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("model", ["OPT-6.7B", "OPT-13B", "OPT-30B", "Llama-3-8B"])
@pytest.mark.parametrize("gbps", [8.0, 32.0, 128.0])
def test_partial_picks_the_best_split_and_beats_both_baselines(model, gbps):
    m, s, batch = find_preset(model), 300, 8
    best = restore("partial", m, A100, s, batch, gbps)
    every = [restore("partial", m, A100, s, batch, gbps, split=l).time_us for l in range(s + 1)]
    assert best.time_us == min(every) and best.split == every.index(min(every))
    assert best.time_us <= restore("load", m, A100, s, batch, gbps).time_us
    assert best.time_us < restore("recompute", m, A100, s, batch, gbps).time_us
    assert restore("partial", m, A100, s, batch, gbps, split=0).time_us == restore("load", m, A100, s, batch,
                                                                                      gbps).time_us


def test_a_faster_pcie_recomputes_fewer_tokens():
    splits = [restore("partial", find_preset("OPT-30B"), A100, 2048, 16, g).split for g in (16, 32, 64, 128)]
    assert splits == sorted(splits, reverse=True) and splits[0] > splits[-1]


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
