"""``nicemu serve`` with a KV cache small enough to preempt: counts add up, both preemption modes, a
rejected request, and the executors agree exactly."""

from __future__ import annotations

import csv
import json

import pytest

from nicemu.workloads import Parallelism, load_model
from nicemu.workloads.kv_memory import stage_kv_bytes_per_token, stage_weight_bytes

pytestmark = pytest.mark.e2e

#: (arrival s, prompt tokens, output tokens): eight requests that outgrow 20 blocks of 16 tokens, and one
#: prompt of 400 tokens (25 blocks) that can never be admitted
REQUESTS = [(0.0, 40, 40), (0.0, 50, 60), (0.001, 60, 30), (0.001, 45, 50), (0.002, 70, 45),
            (0.002, 400, 5), (0.003, 30, 60), (0.003, 55, 35), (0.004, 65, 40)]
TRACE = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t},{i},{o}\n" for t, i, o in REQUESTS)
BLOCKS = 20
MODEL, PAR = load_model("llama2-7b"), Parallelism(tp=4, pp=2)
KV_PER_TOKEN = stage_kv_bytes_per_token(MODEL, PAR)[0]          # 16 layers x 2 x 8 heads x 128 x 2 B
#: HBM share that leaves room for BLOCKS blocks (and half a block) beside the weights of the 80 GB H100
UTILIZATION = (max(stage_weight_bytes(MODEL, PAR)) + (BLOCKS + 0.5) * 16 * KV_PER_TOKEN) / 80e9
ARGS = ["serve", "--model", "llama2-7b", "--tp", "4", "--pp", "2", "--topology", "torus:2x4", "--arrivals",
        "trace.csv", "--chunk", "64", "--token-budget", "256", "--algo", "ring,directreduce",
        "--gpu-memory-utilization", repr(UTILIZATION)]
SKIP = {"wall_s", "executor", "ranks", "real_data", "real_data_calls", "checked_elements", "wrong",
        "traced_iterations"}


def _run(nicemu, tmp_path, args, name, n=None):
    (tmp_path / "trace.csv").write_text(TRACE)
    proc = nicemu([*args, "--json", f"{name}.json", "--csv", f"{name}.csv"], n=n)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, str(proc)
    with open(tmp_path / f"{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return json.loads((tmp_path / f"{name}.json").read_text()), rows, proc


def _metrics(records):
    return [{k: v for k, v in r.items() if k not in SKIP} for r in records]


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_small_cache_preempts_and_executors_agree(nicemu, tmp_path, mode):
    records, rows, proc = _run(nicemu, tmp_path, [*ARGS, "--preempt", mode, "--executor", "model",
                                                  "--trace", "trace.json"], "model")
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]   # the rejected one has no track
    assert sum(e["name"] == "queued" for e in events) == 2 * (len(REQUESTS) - 1)
    assert KV_PER_TOKEN == 16 * 2 * 8 * 128 * 2
    block_bytes = 16 * KV_PER_TOKEN * PAR.pp * PAR.tp           # one block over all 8 accelerators
    for rec in records:
        assert rec["kv_blocks"] == BLOCKS and rec["kv_capacity_tokens"] == BLOCKS * 16
        assert rec["preempt_mode"] == mode and rec["preemptions"] > 0
        assert rec["rejected"] == 1 and rec["requests"] == len(REQUESTS) - 1
        assert rec["kv_peak_fraction"] <= 1.0 and 0 < rec["kv_mean_fraction"] <= rec["kv_peak_fraction"]
        assert rec["queue_ms_p50"] <= rec["queue_ms_p90"] <= rec["queue_ms_p99"]
        mine = [r for r in rows if r["algo"] == rec["algo"]]
        assert sum(int(r["preemptions"]) for r in mine) == rec["preemptions"]
        rejected = [r for r in mine if r["rejected"]]
        assert [r["id"] for r in rejected] == ["5"] and "prompt of 400 tokens needs 25 KV blocks" in \
            rejected[0]["rejected"] and rejected[0]["ttft_ms"] == ""
        if mode == "swap":    # every block swapped out comes back in
            assert rec["swapped_blocks"] > 0 and rec["swapped_blocks"] % 2 == 0
            assert rec["swapped_bytes"] == rec["swapped_blocks"] * block_bytes
            per_block_us = 16 * KV_PER_TOKEN / 25e3                # directreduce-paper PCIe: 25 GB/s
            latencies = (rec["swap_ms"] * 1e3 - rec["swapped_blocks"] * per_block_us) / 0.25
            assert latencies == pytest.approx(round(latencies)) and 2 <= round(latencies) <= rec["swapped_blocks"]
            assert rec["e2e_split_ms"]["kv_swap"] > 0
        else:
            assert rec["swapped_blocks"] == rec["swapped_bytes"] == 0 and rec["swap_ms"] == 0
    assert f"preemption(s) by {mode}" in proc.stdout and "1 request(s) rejected" in proc.stdout
    mpi, mpi_rows, _ = _run(nicemu, tmp_path, [*ARGS, "--preempt", mode], "mpi", n=3)
    assert _metrics(mpi) == _metrics(records)
    assert mpi_rows == rows


def test_recompute_prefills_the_generated_tokens_again(nicemu, tmp_path):
    """--traffic: with recompute the embedding rows exceed the no-preemption total (every prompt token
    once, every output but the first decoded once) by the recomputed tokens; with swap they equal it."""
    hidden = MODEL.hidden
    served = [(i, o) for _, i, o in REQUESTS if i != 400]
    base = sum(i + o - 1 for i, o in served)
    totals = {}
    for mode in ("recompute", "swap"):
        (tmp_path / "trace.csv").write_text(TRACE)
        args = [*ARGS[:-4], "--algo", "ring", *ARGS[-2:], "--preempt", mode, "--executor", "model",
                "--traffic", f"{mode}.csv", "--json", f"{mode}.json"]
        proc = nicemu(args)
        assert proc.returncode == 0, str(proc)
        with open(tmp_path / f"{mode}.csv", newline="") as f:
            totals[mode] = sum(int(r["bytes"]) // (hidden * 2) for r in csv.DictReader(f) if r["phase"] == "embedding")
    assert totals["swap"] == base
    assert totals["recompute"] > base


def test_default_memory_is_not_short(nicemu, tmp_path):
    records, rows, _ = _run(nicemu, tmp_path, [*ARGS[:-2], "--executor", "model"], "default")
    for rec in records:
        assert rec["preemptions"] == rec["rejected"] == rec["swapped_blocks"] == 0
        assert rec["kv_peak_fraction"] < 0.01
    assert all(r["rejected"] == "" and r["preemptions"] == "0" for r in rows)


def test_partial_swap_in_executors_agree(nicemu, tmp_path):
    """--preempt swap --kv-restore partial: swapped-out KV comes back through the readmitting pass (each of the
    two stages its own layers over its own PCIe) instead of before it; the MPI executor at 3 ranks gives the
    model executor's records and rows, and the swap-outs stay synchronous, so the swap time falls."""
    load, _, _ = _run(nicemu, tmp_path, [*ARGS, "--preempt", "swap", "--executor", "model"], "load")
    records, rows, _ = _run(nicemu, tmp_path, [*ARGS, "--preempt", "swap", "--kv-restore", "partial",
                                               "--executor", "model"], "model")
    for rec, base in zip(records, load):
        assert (rec["swap_in"], base["swap_in"]) == ("partial", "load")
        assert rec["preemptions"] == base["preemptions"] > 0 and rec["swapped_blocks"] == base["swapped_blocks"]
        assert 0 < rec["swap_ms"] < base["swap_ms"] and rec["e2e_split_ms"]["kv_swap"] > 0
        assert sum(rec["e2e_split_ms"].values()) == pytest.approx(rec["e2e_ms_mean"], rel=1e-9)
    mpi, mpi_rows, _ = _run(nicemu, tmp_path, [*ARGS, "--preempt", "swap", "--kv-restore", "partial"], "mpi", n=3)
    assert _metrics(mpi) == _metrics(records)
    assert mpi_rows == rows
