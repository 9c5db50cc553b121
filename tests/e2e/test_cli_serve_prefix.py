"""``nicemu serve --prefix-reuse F --kv-restore M``: reused prefixes come back over PCIe shared with the NIC.

The model executor is the reference; the MPI executor at 3 ranks gives the same metrics. The restore's
PCIe time follows from the bytes, and a host-ring AllReduce, whose DMA reads keep PCIe busier than
DirectReduce's, stretches the same restores more.
"""

from __future__ import annotations

import csv
import json

import pytest

from nicemu.workloads.models import find_preset

pytestmark = pytest.mark.e2e

TRACE = "TIMESTAMP,ContextTokens,GeneratedTokens\n0.0,400,3\n0.001,150,5\n0.002,90,1\n0.010,640,4\n0.011,300,2\n"
ARGS = ["serve", "--model", "opt-13b", "--tp", "4", "--arrivals", "trace.csv", "--algo", "ring,directreduce",
        "--prefix-reuse", "0.5"]
SKIP = {"wall_s", "executor", "ranks", "real_data", "real_data_calls", "checked_elements", "wrong"}


def _run(nicemu, tmp_path, extra, n=None, name="out"):
    (tmp_path / "trace.csv").write_text(TRACE)
    proc = nicemu([*ARGS, *extra, "--json", f"{name}.json", "--csv", f"{name}.csv"], n=n)
    assert proc.returncode == 0, str(proc)
    return [{k: v for k, v in r.items() if k not in SKIP} for r in json.loads((tmp_path / f"{name}.json").read_text())]


def test_prefix_reuse(nicemu, tmp_path):
    load = _run(nicemu, tmp_path, ["--executor", "model"], name="load")
    assert _run(nicemu, tmp_path, [], n=3, name="mpi") == load
    recompute = _run(nicemu, tmp_path, ["--executor", "model", "--kv-restore", "recompute"], name="recompute")
    partial = _run(nicemu, tmp_path, ["--executor", "model", "--kv-restore", "partial"], name="partial")
    prompts = [int(line.split(",")[1]) for line in TRACE.splitlines()[1:]]
    m = find_preset("OPT-13B")
    ring, dr = load
    assert ring["restored_tokens"] == sum(p // 2 for p in prompts)
    # each of the 4 ranks loads its quarter of every layer's K and V: 40 layers x 2 x 10 heads x 128 x 2 B
    shard = m.layers * 2 * (m.kv_heads // 4) * m.head_dim * 2
    assert ring["pcie_kv_ms"] == pytest.approx(ring["restored_tokens"] * shard / 25e3 / 1e3, rel=1e-12)
    assert dr["pcie_kv_ms"] == ring["pcie_kv_ms"]
    assert ring["pcie_nic_ms"] > dr["pcie_nic_ms"] > 0 and ring["restore_ms"] > dr["restore_ms"] > 0
    assert ring["e2e_split_ms"]["KV restore"] > 0
    # without the NIC's DMA reads the restores would add less, for both (the passes wait for layer 0's KV alone)
    assert ring["restore_alone_ms"] == pytest.approx(dr["restore_alone_ms"], rel=1e-9)
    assert dr["restore_alone_ms"] < dr["restore_ms"]
    # a restored prefix is not prefilled: less prefill than recomputing it
    assert ring["ttft_ms_mean"] < recompute[0]["ttft_ms_mean"]
    # per request: its prefix, and its share of its pass's restore time (they add up to the record's)
    rows = list(csv.DictReader(open(tmp_path / "load.csv")))
    for rec in load:
        mine = [r for r in rows if r["algo"] == rec["algo"]]
        assert sorted(int(r["restored_tokens"]) for r in mine) == sorted(p // 2 for p in prompts)
        assert sum(float(r["restore_ms"]) for r in mine) == pytest.approx(rec["restore_ms"], rel=1e-9)
    assert (tmp_path / "mpi.csv").read_text() == (tmp_path / "load.csv").read_text()
    assert recompute[0]["restored_tokens"] == 0 and recompute[0]["pcie_nic_ms"] is None
    # under TP 4 a rank's activations (5,120 values a token) outweigh its KV share (2,560): partial sends none
    assert [(r["ttft_ms_mean"], r["restore_ms"]) for r in partial] == [(r["ttft_ms_mean"], r["restore_ms"])
                                                                        for r in load]


def test_prefix_reuse_with_pipeline_stages(nicemu, tmp_path):
    """--pp 2: each stage restores its own 20 layers' KV over its own PCIe. The MPI executor (3 ranks on TP 4 x
    PP 2, 2 ranks on TP 1 x PP 2) gives the model executor's records and rows; the PCIe bytes are every stage's
    share; at TP 1 (a token's activations half its K and V) partial recomputes and beats load."""
    pp = ["--tp", "4", "--pp", "2"]
    load = _run(nicemu, tmp_path, [*pp, "--executor", "model"], name="pp_load")
    assert _run(nicemu, tmp_path, pp, n=3, name="pp_mpi") == load
    assert (tmp_path / "pp_mpi.csv").read_text() == (tmp_path / "pp_load.csv").read_text()
    m = find_preset("OPT-13B")
    ring, dr = load
    # two stages of 20 layers; each rank holds a quarter of the KV heads: the shards add up to 40 layers' worth
    shard = m.layers * 2 * (m.kv_heads // 4) * m.head_dim * 2
    assert ring["pcie_kv_ms"] == pytest.approx(ring["restored_tokens"] * shard / 25e3 / 1e3, rel=1e-12)
    assert ring["pcie_nic_ms"] > dr["pcie_nic_ms"] > 0 and ring["restore_ms"] > dr["restore_ms"] > 0
    one = ["--tp", "1", "--pp", "2", "--algo", "ring"]
    tp1 = _run(nicemu, tmp_path, [*one, "--executor", "model"], name="tp1_load")
    partial = _run(nicemu, tmp_path, [*one, "--executor", "model", "--kv-restore", "partial"], name="tp1_partial")
    assert _run(nicemu, tmp_path, [*one, "--kv-restore", "partial"], n=2, name="tp1_mpi") == partial
    assert partial[0]["restore_ms"] < tp1[0]["restore_ms"] and partial[0]["pcie_kv_ms"] < tp1[0]["pcie_kv_ms"]
