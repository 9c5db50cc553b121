"""Tensor and pipeline parallelism in ``nicemu train`` (workloads/train_layout.py, workloads/train_pipeline.py,
nicemu/train_parallel.py): the tp-dp-pp layout, the TP AllReduces, the 1F1B schedule against its closed
forms, and T = P = M = 1 against the data-parallel path."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from nicemu.errors import UsageError
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology
from nicemu.train import iteration as dp_iteration
from nicemu.train_parallel import check, iteration
from nicemu.workloads.accelerators import load_accelerator
from nicemu.workloads.models import find_preset
from nicemu.workloads.train_layout import Layout, group_topology
from nicemu.workloads.train_pipeline import one_f_one_b, op_order, stage_work
from nicemu.workloads.training import plan, tensors

TINY = {"hidden_size": 64, "num_hidden_layers": 8, "num_attention_heads": 4, "intermediate_size": 256,
        "vocab_size": 512, "model_type": "llama"}


class Comm:
    size, rank = 1, 0


def options(tmp_path, **change) -> argparse.Namespace:
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    base = dict(tp=2, pp=2, dp=None, micro_batches=None, algo="ring", grad_dtype="float32", topology="ring:8",
                global_batch=8, seq_len=32, bucket_mb=0.25, executor="model", model=str(cfg),
                accelerator="H100-SXM", profile="400g-gen5", overrides=[], json=None)
    return argparse.Namespace(**{**base, **change})


def test_layout_numbers_tp_then_dp_then_pp():
    lay = Layout(2, 3, 2)
    assert lay.nodes == 12
    assert lay.tp_group(0, 0) == (0, 1) and lay.tp_group(1, 2) == (10, 11)
    assert lay.dp_group(0, 1) == (1, 3, 5) and lay.dp_group(1, 0) == (6, 8, 10)
    assert lay.stage_pairs(0) == [(0, 6), (1, 7), (2, 8), (3, 9), (4, 10), (5, 11)]
    tp = sorted(n for s in range(2) for d in range(3) for n in lay.tp_group(s, d))
    dp = sorted(n for s in range(2) for t in range(2) for n in lay.dp_group(s, t))
    assert tp == dp == list(range(12))          # each kind of group partitions the nodes


def test_group_topologies():
    prof = load_profile("400g-gen5")
    r8 = parse_topology("ring:8")
    assert group_topology(r8, (0, 1), prof).name == "ring:2"
    strided = group_topology(r8, (1, 3, 5, 7), prof)          # every other node: two links per hop
    assert strided.nodes == 4 and strided.dim_links[0].latency_us == 2 * prof.link.latency_us
    t42 = parse_topology("torus:4x2")
    sub = group_topology(t42, (1, 3, 5, 7), prof)             # TP 2 = the last dimension: DP rings on dim 0
    assert sub.shape == (4,) and sub.dim_links == t42.dim_links[:1]
    assert group_topology(parse_topology("switch:8"), (0, 2, 4, 6), prof).name == "switch:4"
    assert group_topology(r8, tuple(range(8)), prof) is r8


@pytest.mark.parametrize("stages", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("micro", [1, 2, 3, 5, 8, 16])
def test_1f1b_uniform_stages_give_the_textbook_bubble(stages, micro):
    """Equal stages, no communication: (M + P - 1)(f + b), every stage idle (P - 1)/(M + P - 1) of it."""
    f, b = 1.5, 3.0
    t = one_f_one_b([f] * stages, [b] * stages, [0.0] * (stages - 1), [0.0] * (stages - 1), micro)
    assert t.end_us == (micro + stages - 1) * (f + b)
    busy = micro * (f + b)
    assert 1 - busy / t.end_us == pytest.approx((stages - 1) / (micro + stages - 1), abs=1e-15)
    assert (t.f_end - t.f_start == f).all() and (t.b_end - t.b_start == b).all()


@pytest.mark.parametrize("stages", [2, 3, 5])
def test_1f1b_one_micro_batch_crosses_every_boundary_twice(stages):
    c = 0.25
    t = one_f_one_b([1.0] * stages, [2.0] * stages, [c] * (stages - 1), [c] * (stages - 1), 1)
    assert t.end_us == stages * 3.0 + 2 * (stages - 1) * c


def test_1f1b_order_and_dependencies():
    p, m = 4, 6
    for s in range(p):
        ops = op_order(s, p, m)
        assert sorted(ops) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
        assert ops[:p - s - 1] == [("F", i) for i in range(p - s - 1)]           # warm-up forwards
        assert all(ops.index(("F", i)) < ops.index(("B", i)) for i in range(m))
    t = one_f_one_b([1.0, 1.1, 0.9, 1.2], [2.0, 2.3, 1.9, 2.4], [0.1] * 3, [0.2] * 3, m)
    assert (t.f_start[1:] >= t.f_end[:-1] + 0.1 - 1e-12).all()
    assert (t.b_start[:-1] >= t.b_end[1:] + 0.2 - 1e-12).all()
    assert (t.b_start[-1] >= t.f_end[-1]).all()
    for s in range(p):                          # a stage runs one operation at a time
        spans = sorted(zip(np.r_[t.f_start[s], t.b_start[s]], np.r_[t.f_end[s], t.b_end[s]]))
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_bubble_comes_out_of_the_schedule_under_ideal(tmp_path):
    """Communication made negligible (free links and host reduction): the iteration is the 1F1B critical
    path of the stages' compute. The last stage (with the LM head) is the slowest, the first (embedding)
    a little slower than the middle ones; then 1F1B takes sum(f_s + b_s) + (M - 1) max(f_s + b_s)."""
    free = ["link.latency_us=0", "link.bandwidth_GBps=1e15", "host.reduce_GBps=1e15"]
    algos, su = check(options(tmp_path, pp=4, topology="ring:8", global_batch=16, profile="ideal",
                              overrides=free, algo="ring"), Comm())
    m = su.micro_batches
    assert su.layout.dp == 1 and m == 16
    per = [w.forward_compute_us + w.backward_compute_us for w in su.work]
    assert per[-1] == max(per) and per[0] > per[1] == per[2]
    closed = sum(per) + (m - 1) * max(per)
    rec, _ = iteration("ring", su)
    assert rec["compute_us"] == m * max(per)
    assert rec["compute_us"] + rec["bubble_us"] == pytest.approx(closed, rel=1e-12)
    assert rec["iteration_us"] == pytest.approx(closed, rel=1e-9)
    assert rec["bubble_fraction"] == pytest.approx(1 - m * max(per) / closed, rel=1e-12)
    assert 0 < rec["tp_exposed_us"] < 1e-6 * closed and 0 < rec["pp_exposed_us"] < 1e-6 * closed


def test_tp_allreduces_count_size_and_time(tmp_path):
    """2 per layer forward and 2 backward on each stage, one more for the embedding (first stage, forward)
    and one for the LM head (last stage, backward), micro-batch tokens x hidden x 2 bytes each; each
    costs its alone time on the critical path."""
    _, su = check(options(tmp_path, tp=2, pp=2, micro_batches=2), Comm())
    assert [(w.tp_forward, w.tp_backward) for w in su.work] == [(9, 8), (8, 9)]
    assert su.act_bytes == (8 // (2 * 2)) * 32 * 64 * 2
    rec, parts = iteration("ring", su)
    assert rec["tp_allreduces"] == [2 * 17, 2 * 17]
    for w, t in zip(su.work, parts.tp_us):
        assert t > 0
        assert w.forward_us(t) == w.forward_compute_us + w.tp_forward * t
    _, one = check(options(tmp_path, tp=1, pp=2, dp=4, micro_batches=2), Comm())
    assert [(w.tp_forward, w.tp_backward) for w in one.work] == [(0, 0), (0, 0)]
    assert iteration("ring", one)[0]["tp_exposed_us"] == 0.0


def test_compute_per_rank_divides_by_tp():
    m, acc = find_preset("llama3-8b"), load_accelerator("H100-SXM")
    one = stage_work(m, acc, Layout(1, 1, 1), 1, 4096)[0]
    two = stage_work(m, acc, Layout(2, 1, 1), 1, 4096)[0]
    assert two.layer_forward_us / one.layer_forward_us == pytest.approx(0.5, rel=1e-12)   # all compute-bound


def test_stage_shards_add_up_to_the_model():
    m, acc = find_preset("llama3-8b"), load_accelerator("H100-SXM")
    lay = Layout(2, 1, 4)
    work = stage_work(m, acc, lay, 1, 128)
    norms = (2 * m.layers + 1) * m.hidden                    # replicated on both TP ranks
    held = sum(t.elems for w in work for t in w.tensors)
    assert lay.tp * held == sum(t.elems for t in tensors(m)) + (lay.tp - 1) * norms
    for w in work:
        bs = w.buckets(5.0, 4)
        ready = [b.ready_us for b in bs]
        assert ready == sorted(ready) and ready[-1] == pytest.approx(w.backward_us(5.0), rel=1e-12)
        assert sum(b.elems for b in bs) == sum(t.elems for t in w.tensors)


def test_one_stage_one_tp_rank_matches_the_data_parallel_path(tmp_path):
    """T = P = M = 1 through the parallel code gives the data-parallel iteration (which the CLI runs)."""
    _, su = check(options(tmp_path, tp=1, pp=1, micro_batches=1, topology="ring:4", algo="directreduce"),
                  Comm())
    rec, _ = iteration("directreduce", su)
    p = plan(su.model, su.acc, 2, 32, 4, int(0.25 * 2**20))
    old = dp_iteration("directreduce", p, parse_topology("ring:4"), su.profile, 4)
    for key in ("iteration_us", "compute_us", "exposed_us", "iteration_no_sharing_us", "iteration_one_stream_us",
                "comm_us", "slowest_bucket_slowdown"):
        assert rec[key] == pytest.approx(old[key], rel=1e-12), key
    assert rec["buckets"] == old["buckets"] and rec["bubble_us"] == 0.0


def test_dp_groups_of_all_stages_share_the_fabric(tmp_path):
    """On ring:8 with TP 2, the DP groups are interleaved and cross each other's links."""
    _, su = check(options(tmp_path, tp=2, pp=1, micro_batches=1, global_batch=8), Comm())
    rec, _ = iteration("ring", su)
    assert rec["slowest_bucket_slowdown"] > 1.0
    assert rec["iteration_no_sharing_us"] <= rec["iteration_us"]
    assert rec["dp_exposed_us"] == rec["iteration_us"] - rec["pipeline_us"]


@pytest.mark.parametrize("change, words", [
    (dict(pp=3, topology="ring:6"), "8 layers"),
    (dict(tp=8, pp=1), "heads"),
    (dict(global_batch=7), "--global-batch 7"),
    (dict(micro_batches=3), "--micro-batches 3"),
    (dict(tp=3), "divide"),
    (dict(dp=3), "TP x DP x PP"),
    (dict(micro_batches=0), "--micro-batches 0"),
    (dict(algo="omniccl"), "dense"),
])
def test_bad_parallel_options_fail_in_one_line(tmp_path, change, words):
    with pytest.raises(UsageError) as info:
        check(options(tmp_path, **change), Comm())
    assert words in str(info.value) and "\n" not in str(info.value)


def test_tp_allreduces_sit_on_the_critical_path_at_their_closed_form(tmp_path):
    """TP 2 alone on ring:2 under ``ideal``: the iteration is the compute plus 4 AllReduces per layer and 2
    more (embedding, LM head), each the ring's 2α + nβ + (n/2)γ."""
    _, su = check(options(tmp_path, tp=2, pp=1, topology="ring:2", global_batch=2, profile="ideal",
                          algo="ring"), Comm())
    n = su.act_bytes
    prof = su.profile
    one = 2 * prof.link.latency_us + n / (prof.link.bandwidth_GBps * 1e3) + n / 2 / (prof.host.reduce_GBps * 1e3)
    rec, parts = iteration("ring", su)
    assert parts.tp_us == [pytest.approx(one, rel=1e-12)]
    layers = su.model.layers
    assert rec["iteration_us"] == pytest.approx(rec["compute_us"] + (4 * layers + 2) * one, rel=1e-12)
    assert rec["tp_exposed_us"] == pytest.approx((4 * layers + 2) * one, rel=1e-9)


def test_pipeline_transfers_at_their_closed_form(tmp_path):
    """PP 2 alone on ring:2 under ``ideal``, one micro-batch: activations forward and gradients back, each
    one hop, α + nβ (docs/model.md §14), on the critical path between the stages."""
    _, su = check(options(tmp_path, tp=1, pp=2, topology="ring:2", global_batch=1, profile="ideal",
                          algo="ring"), Comm())
    prof = su.profile
    hop = prof.link.latency_us + su.act_bytes / (prof.link.bandwidth_GBps * 1e3)
    rec, parts = iteration("ring", su)
    assert parts.to_next_us == [pytest.approx(hop, rel=1e-12)] and parts.to_prev_us == parts.to_next_us
    total = sum(w.forward_compute_us + w.backward_compute_us for w in su.work)
    assert rec["iteration_us"] == pytest.approx(total + 2 * hop, rel=1e-12)
    assert rec["pp_exposed_us"] == pytest.approx(2 * hop, rel=1e-9) and su.micro_batches == 1


def test_default_micro_batches_follow_megatron(tmp_path):
    """One sequence per micro-batch with PP (Megatron-LM's micro-batch size 1), the whole share without."""
    assert check(options(tmp_path, pp=2, global_batch=16), Comm())[1].micro_batches == 8     # 16 / DP 2
    _, su = check(options(tmp_path, pp=1, global_batch=16), Comm())
    assert (su.micro_batches, su.micro_seqs) == (1, 4)                                        # 16 / DP 4
    with pytest.raises(UsageError, match="--global-batch 3 does not split over 2"):
        check(options(tmp_path, pp=2, global_batch=3), Comm())
