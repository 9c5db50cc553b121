"""``nicemu serve --ranks-per-node P``: TP groups inside a node (NVLink or host memory) or across nodes
(the hierarchical AllReduce), P = 1 unchanged, real data equal to the model, and the one-line errors."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli_batch

from nicemu.cli import main

pytestmark = pytest.mark.e2e

BASE = ["serve", "--model", "llama3-8b", "--requests", "6", "--executor", "model", "--jobs", "1"]


def records(tmp_path, *extra):
    out = tmp_path / "r.json"
    assert main([*BASE, *extra, "--json", str(out)]) == 0
    return {r["algo"]: r for r in json.loads(out.read_text())}


def test_tp_inside_one_node_needs_no_nic(tmp_path):
    """TP 8 on one node of 8 accelerators on NVLink: no byte crosses a NIC, so every algorithm is the same."""
    recs = records(tmp_path, "--tp", "8", "--ranks-per-node", "8", "--set", "intra_node.nvlink=true")
    assert set(recs) == {"ring", "host-best", "directreduce"}        # the default list without omniccl
    ttft = {r["ttft_ms_mean"] for r in recs.values()}
    assert len(ttft) == 1
    for r in recs.values():
        assert (r["nodes"], r["ranks_per_node"]) == (1, 8)
        assert r["layer_wire_bytes"] == 0 and r["host_comm_ms"] == 0.0


def test_tp_across_nodes_runs_the_hierarchical_allreduce(tmp_path):
    recs = records(tmp_path, "--tp", "16", "--ranks-per-node", "8", "--set", "intra_node.nvlink=true",
                   "--algo", "ring,directreduce")
    assert (recs["ring"]["nodes"], recs["ring"]["ranks_per_node"]) == (2, 8)
    assert recs["ring"]["layer_wire_bytes"] == recs["directreduce"]["layer_wire_bytes"] > 0
    assert recs["directreduce"]["ttft_ms_mean"] < recs["ring"]["ttft_ms_mean"]
    assert recs["directreduce"]["host_comm_ms"] == 0.0 < recs["ring"]["host_comm_ms"]


def test_one_rank_per_node_is_unchanged(tmp_path):
    a = records(tmp_path, "--tp", "4", "--algo", "ring")
    (tmp_path / "b").mkdir()
    b = records(tmp_path / "b", "--tp", "4", "--ranks-per-node", "1", "--algo", "ring")
    for r in (*a.values(), *b.values()):
        r.pop("wall_s")
    assert a == b


@pytest.mark.parametrize("argv, words", [
    (["--model", "opt-13b", "--tp", "10", "--ranks-per-node", "4"], "does not divide into nodes of 4"),
    (["--tp", "2", "--pp", "2", "--ranks-per-node", "4"], "stage to stage inside a node"),
    (["--model", "mixtral-8x7b", "--tp", "4", "--ep", "4", "--ranks-per-node", "4"], "expert parallelism"),
    (["--tp", "8", "--ranks-per-node", "4", "--algo", "ring,omniccl"], "one rank per node"),
    (["--tp", "8", "--ranks-per-node", "0"], "at least 1"),
    (["--tp", "8", "--ranks-per-node", "4", "--topology", "ring:3"], "does not match"),
])
def test_errors(argv, words, capsys):
    assert main([*BASE, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nicemu: error:") and words in err[0], err


@pytest.mark.parametrize("layout", [["--tp", "8"], ["--tp", "4", "--pp", "2"], ["--tp", "2", "--pp", "2"],
                                    ["--tp", "2", "--disaggregated", "1:1"]],
                         ids=["tp8", "tp4-pp2", "tp2-pp2-nvlink", "tp2-disaggregated-nvlink"])
def test_real_data_equals_the_model(tmp_path, layout):
    """TP across two nodes of 4; two pipeline stages of one node each (the activations cross the rails); two
    stages, or a prefill and a decode instance, inside one node (activations and KV caches over NVLink)."""
    argv = ["serve", "--model", "llama3-8b", "--requests", "4", *layout, "--ranks-per-node", "4",
            "--set", "intra_node.nvlink=true", "--algo", "ring,directreduce", "--json", "r.json"]
    got = run_cli_batch(tmp_path, [("mpi", [*argv, "--executor", "mpi"]),
                                   ("model", [*argv, "--executor", "model", "--jobs", "1"])], nprocs=2)
    for case in got.values():
        assert case.statuses == [0, 0], case
    mpi = json.loads((got["mpi"].cwd / "r.json").read_text())
    model = json.loads((got["model"].cwd / "r.json").read_text())
    for a, b in zip(mpi, model):
        assert a["wrong"] == 0 and a["checked_elements"] > 0
        for key in ("ttft_ms_mean", "tpot_ms_mean", "e2e_ms_mean", "layer_wire_bytes", "comm_ms", "p2p_ms"):
            assert a[key] == b[key], key
        assert (a["p2p_ms"] > 0) == ("--pp" in layout or "--disaggregated" in layout)
