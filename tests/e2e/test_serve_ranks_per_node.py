"""``nicemu serve --ranks-per-node P``: TP groups inside a node (NVLink or host memory) or across nodes
(the hierarchical AllReduce), expert parallelism (the hierarchical all-to-all), P = 1 unchanged, real
data equal to the model, and the one-line errors."""

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
    (["--tp", "8", "--ranks-per-node", "4", "--algo", "ring,omniccl"], "one rank per node"),
    (["--tp", "8", "--ranks-per-node", "0"], "at least 1"),
    (["--tp", "8", "--ranks-per-node", "4", "--topology", "ring:3"], "does not match"),
])
def test_errors(argv, words, capsys):
    assert main([*BASE, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nicemu: error:") and words in err[0], err


def _mpi_and_model(tmp_path, argv):
    """``argv`` (which writes r.json) under mpiexec -n 2 with each executor: (MPI records, model records)."""
    got = run_cli_batch(tmp_path, [("mpi", [*argv, "--executor", "mpi"]),
                                   ("model", [*argv, "--executor", "model", "--jobs", "1"])], nprocs=2)
    for case in got.values():
        assert case.statuses == [0, 0], case
    return tuple(json.loads((got[k].cwd / "r.json").read_text()) for k in ("mpi", "model"))


@pytest.mark.parametrize("layout", [["--tp", "8"], ["--tp", "4", "--pp", "2"], ["--tp", "2", "--pp", "2"],
                                    ["--tp", "2", "--disaggregated", "1:1"]],
                         ids=["tp8", "tp4-pp2", "tp2-pp2-nvlink", "tp2-disaggregated-nvlink"])
def test_real_data_equals_the_model(tmp_path, layout):
    """TP across two nodes of 4; two pipeline stages of one node each (the activations cross the rails); two
    stages, or a prefill and a decode instance, inside one node (activations and KV caches over NVLink)."""
    argv = ["serve", "--model", "llama3-8b", "--requests", "4", *layout, "--ranks-per-node", "4",
            "--set", "intra_node.nvlink=true", "--algo", "ring,directreduce", "--json", "r.json"]
    mpi, model = _mpi_and_model(tmp_path, argv)
    for a, b in zip(mpi, model):
        assert a["wrong"] == 0 and a["checked_elements"] > 0
        for key in ("ttft_ms_mean", "tpot_ms_mean", "e2e_ms_mean", "layer_wire_bytes", "comm_ms", "p2p_ms"):
            assert a[key] == b[key], key
        assert (a["p2p_ms"] > 0) == ("--pp" in layout or "--disaggregated" in layout)


def test_expert_parallelism_inside_one_node_needs_no_nic(tmp_path):
    """EP 4 on one node of 4 ranks: the all-to-alls and AllReduces stay inside the node (host memory)."""
    recs = records(tmp_path, "--model", "mixtral-8x7b", "--tp", "4", "--ep", "4", "--ranks-per-node", "4",
                   "--algo", "ring,directreduce")
    assert (recs["ring"]["nodes"], recs["ring"]["ranks_per_node"], recs["ring"]["ep"]) == (1, 4, 4)
    assert recs["ring"]["layer_wire_bytes"] == recs["directreduce"]["layer_wire_bytes"] == 0
    assert recs["ring"]["ttft_ms_mean"] == recs["directreduce"]["ttft_ms_mean"]


@pytest.mark.parametrize("nvlink", [False, True], ids=["host-memory", "nvlink"])
def test_expert_parallelism_across_nodes_real_data_equals_the_model(tmp_path, nvlink):
    """EP 8 over two nodes of 4 ranks: each MoE all-to-all runs the rails, then the intra-node exchange, with
    real data (checked) and the model executor's times."""
    argv = ["serve", "--model", "mixtral-8x7b", "--requests", "3", "--tp", "8", "--ep", "8", "--ranks-per-node", "4",
            "--algo", "ring,directreduce", "--json", "r.json", *(["--set", "intra_node.nvlink=true"] if nvlink else [])]
    mpi, model = _mpi_and_model(tmp_path, argv)
    assert [r["algo"] for r in mpi] == [r["algo"] for r in model] == ["ring", "directreduce"]
    for a, b in zip(mpi, model):
        assert (a["nodes"], a["ranks_per_node"], a["ep"]) == (2, 4, 8)
        assert a["wrong"] == 0 and a["checked_elements"] > 0
        for key in ("ttft_ms_mean", "tpot_ms_mean", "e2e_ms_mean", "layer_wire_bytes", "comm_ms", "host_comm_ms"):
            assert a[key] == b[key], key
    # the same bytes cross the rails whichever algorithm moves them; the NIC variant keeps the host out
    assert mpi[0]["layer_wire_bytes"] == mpi[1]["layer_wire_bytes"] > 0
    assert mpi[1]["host_comm_ms"] < mpi[0]["host_comm_ms"]
