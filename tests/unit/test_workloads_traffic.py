"""Collectives per iteration: counted and sized against the formulas of docs/model.md (serving)."""

import csv

import pytest

from nicemu.workloads.batch import Batch, PrefillChunk, make_batch
from nicemu.workloads.models import PRESETS
from nicemu.workloads.parallelism import Parallelism
from nicemu.workloads.traffic import (
    TRAFFIC_COLUMNS,
    TrafficCsv,
    count_by,
    iteration_traffic,
    kv_transfer_bytes,
    kv_transfer_records,
    write_traffic_csv,
)

L8 = PRESETS["Llama-3-8B"]
L70 = PRESETS["Llama-3-70B"]
MIX = PRESETS["Mixtral-8x7B"]


def test_llama3_8b_tp8_counts_and_sizes():
    batch = make_batch([(512, 0), (300, 100)], [1000] * 40)      # 852 tokens
    recs = iteration_traffic(7, batch, L8, Parallelism(tp=8))
    tokens = 512 + 300 + 40
    layer = [r for r in recs if r.layer >= 0]
    emb = [r for r in recs if r.layer == -1]
    assert len(layer) == 2 * 32 == 64 and len(emb) == 1
    assert all(r.collective == "allreduce" and r.bytes == tokens * 4096 * 2 for r in recs)
    assert emb[0].phase == "embedding" and emb[0].what == "embedding"
    assert {r.phase for r in layer} == {"mixed"}
    assert count_by(layer, "what") == {("attn_out",): 32, ("mlp_out",): 32}
    assert sorted({r.layer for r in layer}) == list(range(32))
    assert all(r.iteration == 7 and r.nodes == tuple(range(8)) and r.algo == "ring" for r in recs)
    # issue order: embedding first, then per layer attn_out before mlp_out
    assert [r.what for r in recs[:5]] == ["embedding", "attn_out", "mlp_out", "attn_out", "mlp_out"]


@pytest.mark.parametrize("tokens", [1, 17, 2048])
def test_llama3_70b_tp8_per_iteration(tokens):
    recs = iteration_traffic(0, make_batch([], [10] * tokens), L70, Parallelism(tp=8))
    assert count_by(recs, "collective") == {("allreduce",): 2 * 80 + 1}
    assert {r.bytes for r in recs} == {tokens * 8192 * 2}
    assert {r.phase for r in recs if r.layer >= 0} == {"decode"}


def test_phase_labels():
    assert {r.phase for r in iteration_traffic(0, make_batch([(64, 0)]), L8, Parallelism(2)) if r.layer >= 0} == {"prefill"}
    assert {r.phase for r in iteration_traffic(0, make_batch([], [5]), L8, Parallelism(2)) if r.layer >= 0} == {"decode"}


def test_no_tensor_parallel_no_allreduce():
    assert iteration_traffic(0, make_batch([(128, 0)]), L8, Parallelism(tp=1)) == []
    assert iteration_traffic(0, Batch(), L8, Parallelism(tp=8)) == []


def test_bytes_per_element():
    recs = iteration_traffic(0, make_batch([(10, 0)]), L8, Parallelism(tp=2), dtype_bytes=4)
    assert {r.bytes for r in recs} == {10 * 4096 * 4}


def test_algorithms_per_collective_kind():
    recs = iteration_traffic(0, make_batch([(10, 0)]), L8, Parallelism(tp=4), algo="directreduce",
                             embedding_algo="omniccl")
    assert {r.algo for r in recs if r.layer == -1} == {"omniccl"}
    assert {r.algo for r in recs if r.layer >= 0} == {"directreduce"}


def test_pipeline_parallel_tp4_pp2():
    par = Parallelism(tp=4, pp=2)
    tokens = 100
    recs = iteration_traffic(0, make_batch([(tokens, 0)]), L8, par)
    assert count_by(recs, "collective") == {("allreduce",): 64 + 1, ("p2p",): 1}
    p2p = next(r for r in recs if r.collective == "p2p")
    assert p2p.bytes == tokens * 4096 * 2 and p2p.layer == 15 and p2p.what == "activations"
    assert p2p.nodes == (0, 1, 2, 3, 4, 5, 6, 7)
    stage0 = [r for r in recs if r.collective == "allreduce" and 0 <= r.layer < 16]
    stage1 = [r for r in recs if r.collective == "allreduce" and r.layer >= 16]
    assert len(stage0) == len(stage1) == 32
    assert {r.nodes for r in stage0} == {(0, 1, 2, 3)} and {r.nodes for r in stage1} == {(4, 5, 6, 7)}
    emb = next(r for r in recs if r.what == "embedding")
    assert emb.nodes == (0, 1, 2, 3)
    # the transfer sits between layer 15's and layer 16's collectives
    i = recs.index(p2p)
    assert recs[i - 1].layer == 15 and recs[i + 1].layer == 16


def test_pipeline_only_pp4():
    recs = iteration_traffic(0, make_batch([], [1] * 8), L70, Parallelism(tp=1, pp=4))
    assert [(r.collective, r.layer) for r in recs] == [("p2p", 19), ("p2p", 39), ("p2p", 59)]
    assert {r.bytes for r in recs} == {8 * 8192 * 2}


def test_mixtral_expert_parallel_all_to_all():
    tokens = 96
    recs = iteration_traffic(0, make_batch([(tokens, 0)]), MIX, Parallelism(tp=8, ep=8), alltoall_algo="a2a-nic")
    counts = count_by(recs, "collective", "what")
    assert counts == {("allreduce", "embedding"): 1, ("allreduce", "attn_out"): 32,
                      ("alltoall", "dispatch"): 32, ("alltoall", "combine"): 32}
    a2a = [r for r in recs if r.collective == "alltoall"]
    assert {r.bytes for r in a2a} == {tokens * 2 * 4096 * 2}        # tokens * top_k * hidden * bytes
    assert {r.algo for r in a2a} == {"a2a-nic"}
    order = [r.what for r in recs if r.layer == 0]
    assert order == ["attn_out", "dispatch", "combine"]


def test_mixtral_without_ep_uses_two_allreduces_per_layer():
    recs = iteration_traffic(0, make_batch([(8, 0)]), MIX, Parallelism(tp=8))
    assert count_by(recs, "collective") == {("allreduce",): 65}


def test_disaggregated_kv_cache_transfer():
    par = Parallelism(tp=4, prefill_instances=1, decode_instances=1)
    batch = Batch((PrefillChunk(0, 512, 0, completes_prompt=False), PrefillChunk(1, 200, 1000, True),
                   PrefillChunk(2, 30, 0, True)))
    recs = iteration_traffic(3, batch, L8, par)
    assert not [r for r in recs if r.what == "kv_cache"]          # the transfer is not part of the pass
    assert {r.nodes for r in recs} == {(0, 1, 2, 3)} and count_by(recs, "collective")[("allreduce",)] == 65
    kv = kv_transfer_records(1200, L8, par, 0, 1, "p2p-host")
    # each of the 4 ranks holds 8 / 4 = 2 KV heads of 128 for all 32 layers
    assert [r.bytes for r in kv] == [2 * 32 * 2 * 128 * 1200 * 2]
    assert 4 * kv[0].bytes == kv_transfer_bytes(1200, L8)
    assert kv[0].nodes == tuple(range(8)) and (kv[0].collective, kv[0].what, kv[0].algo) == ("p2p", "kv_cache",
                                                                                          "p2p-host")
    # the decode instance runs on nodes 4..7
    dec = iteration_traffic(4, make_batch([], [10]), L8, par, instance=1)
    assert {r.nodes for r in dec} == {(4, 5, 6, 7)}


def test_kv_transfer_shards_follow_stages_and_instances():
    # 32 layers over 3 stages: 11, 11, 10; TP 2 (4 KV heads each); prefill instance 1 -> decode instance 2
    par = Parallelism(tp=2, pp=3, prefill_instances=2, decode_instances=1)
    kv = kv_transfer_records(100, L8, par, 1, 2)
    per_layer = 2 * 4 * 128 * 100 * 2
    assert [(r.bytes, r.nodes) for r in kv] == [(11 * per_layer, (6, 7, 8, 9, 12, 13, 14, 15)),
                                                (10 * per_layer, (10, 11, 16, 17))]
    assert sum(r.bytes * len(r.nodes) // 2 for r in kv) == kv_transfer_bytes(100, L8)


def test_traffic_csv(tmp_path):
    recs = iteration_traffic(0, make_batch([(4, 0)]), L8, Parallelism(tp=2))
    path = tmp_path / "traffic.csv"
    write_traffic_csv(path, recs)
    rows = list(csv.reader(path.open()))
    assert tuple(rows[0]) == TRAFFIC_COLUMNS == ("iteration", "phase", "layer", "collective", "bytes", "algo")
    assert rows[1] == ["0", "embedding", "-1", "allreduce", str(4 * 4096 * 2), "ring"]
    assert len(rows) == 1 + 65
    with TrafficCsv(tmp_path / "stream.csv") as out:
        out.write(recs)
        out.write(recs)
    assert len((tmp_path / "stream.csv").read_text().splitlines()) == 1 + 130
