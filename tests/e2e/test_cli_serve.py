"""``nicemu serve`` end to end: traffic counted against the formulas, determinism, executors, outputs.

Runs are tiny (Llama-2-7B, a handful of short requests) so the module costs
seconds, not minutes; the headline runs are documented in docs/results/serve.md.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import pytest

pytestmark = pytest.mark.e2e

#: (arrival s, prompt tokens, output tokens); prompts above the 64-token chunk are prefilled in pieces
REQUESTS = [(0.0, 40, 3), (0.001, 150, 5), (0.002, 7, 1), (0.010, 64, 4), (0.011, 90, 2)]
TRACE = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t},{i},{o}\n" for t, i, o in REQUESTS)
HIDDEN, LAYERS = 4096, 32      # Llama-2-7B
SMALL = ["serve", "--model", "llama2-7b", "--tp", "4", "--pp", "2", "--topology", "torus:2x4",
         "--arrivals", "trace.csv", "--chunk", "64", "--token-budget", "96", "--seed", "3"]
METRIC_SKIP = {"wall_s", "executor", "ranks", "real_data", "real_data_calls", "checked_elements", "wrong"}


def _run_json(nicemu, tmp_path, args, n=None, name="out.json"):
    (tmp_path / "trace.csv").write_text(TRACE)
    proc = nicemu([*args, "--json", name], n=n)
    assert proc.returncode == 0, str(proc)
    assert "Traceback" not in proc.stderr, str(proc)
    return json.loads((tmp_path / name).read_text()), proc


def _runs(path):
    """The --traffic CSV split into one list of rows per algorithm run (iterations restart at 0)."""
    runs, prev = [], None
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            it = int(row["iteration"])
            if prev is None or it < prev:
                runs.append([])
            runs[-1].append(row)
            prev = it
    return runs


def test_traffic_matches_formulas_and_outputs(nicemu, tmp_path):
    records, proc = _run_json(nicemu, tmp_path, [*SMALL, "--executor", "model", "--algo", "ring,omniccl",
                                                  "--traffic", "traffic.csv", "--csv", "requests.csv"])
    assert [r["algo"] for r in records] == ["ring", "omniccl"]
    runs = _runs(tmp_path / "traffic.csv")
    assert len(runs) == 2
    expected = {"ring": ("ring", "ring", "p2p-host"), "omniccl": ("directreduce", "omniccl", "p2p-nic")}
    for rec, rows in zip(records, runs):
        layer_algo, emb_algo, p2p = expected[rec["algo"]]
        by_iter = defaultdict(list)
        for row in rows:
            by_iter[int(row["iteration"])].append(row)
        assert sorted(by_iter) == list(range(rec["iterations"]))
        tokens_total = 0
        for it_rows in by_iter.values():
            emb = [r for r in it_rows if r["phase"] == "embedding"]
            layer = [r for r in it_rows if r["collective"] == "allreduce" and int(r["layer"]) >= 0]
            p2p_rows = [r for r in it_rows if r["collective"] == "p2p"]
            assert len(emb) == 1 and emb[0]["layer"] == "-1" and emb[0]["algo"] == emb_algo
            tokens = int(emb[0]["bytes"]) // (HIDDEN * 2)
            assert int(emb[0]["bytes"]) == tokens * HIDDEN * 2
            # 2 AllReduces per layer, every layer once per stage, each tokens x hidden x 2 bytes
            assert len(layer) == 2 * LAYERS
            assert sorted(int(r["layer"]) for r in layer) == sorted(2 * list(range(LAYERS)))
            assert all(int(r["bytes"]) == tokens * HIDDEN * 2 and r["algo"] == layer_algo for r in layer)
            # PP = 2: one activation transfer after stage 0's last layer
            assert [(r["layer"], r["bytes"], r["algo"]) for r in p2p_rows] == [
                (str(LAYERS // 2 - 1), str(tokens * HIDDEN * 2), p2p)]
            assert len(it_rows) == 2 * LAYERS + 2
            assert {r["phase"] for r in layer} <= {"prefill", "decode", "mixed"}
            tokens_total += tokens
        # every prompt token is prefilled once and every output token but the first is decoded once
        assert tokens_total == sum(i + o - 1 for _, i, o in REQUESTS)
        assert rec["collectives"] == len(rows)
        assert rec["requests"] == len(REQUESTS)
    # the sparse embedding AllReduce moves fewer bytes than the dense ring
    assert 0 < records[1]["embedding_wire_bytes"] < records[0]["embedding_wire_bytes"]
    with open(tmp_path / "requests.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(REQUESTS)
    assert {r["algo"] for r in rows} == {"ring", "omniccl"}
    for key in ("algo", "requests", "ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_mean", "tpot_ms_p50",
                "tpot_ms_p99", "e2e_ms_mean", "e2e_ms_p50", "e2e_ms_p99", "throughput_tok_s", "comm_share",
                "host_comm_ms"):
        assert key in records[0], key
    assert records[0]["host_comm_ms"] > 0 and records[1]["host_comm_ms"] == 0.0   # NIC paths spare the host


def _metrics(records):
    return [{k: v for k, v in r.items() if k not in METRIC_SKIP} for r in records]


def test_same_seed_same_metrics_across_runs_ranks_and_executors(nicemu, tmp_path):
    args = [*SMALL, "--algo", "ring,directreduce,omniccl"]
    model_a, _ = _run_json(nicemu, tmp_path, [*args, "--executor", "model"], name="a.json")
    model_b, _ = _run_json(nicemu, tmp_path, [*args, "--executor", "model"], name="b.json")
    assert _metrics(model_a) == _metrics(model_b)
    one, proc1 = _run_json(nicemu, tmp_path, args, n=1, name="one.json")
    eight, proc8 = _run_json(nicemu, tmp_path, args, n=8, name="eight.json")
    assert _metrics(one) == _metrics(model_a)
    assert _metrics(eight) == _metrics(model_a)
    # every call with real data (3 ranks: one rank hosts nodes of both stages) gives the memoised times;
    # the first two requests only, to keep it cheap
    few = [*args[:-1], "omniccl", "--requests", "2"]
    every, proc3 = _run_json(nicemu, tmp_path, [*few, "--real-data", "all"], n=3, name="all.json")
    model_few, _ = _run_json(nicemu, tmp_path, [*few, "--executor", "model"], name="few.json")
    assert _metrics(every) == _metrics(model_few)
    for recs in (one, eight, every):
        assert all(r["wrong"] == 0 and r["checked_elements"] > 0 for r in recs)
    assert every[0]["real_data_calls"] == every[0]["collectives"] > every[0]["iterations"] * 2 * LAYERS
    assert all("0 wrong OK" in p.stdout for p in (proc1, proc8, proc3))
    other_seed, _ = _run_json(nicemu, tmp_path, [*args, "--executor", "model", "--seed", "4"], name="c.json")
    assert [r["embedding_wire_bytes"] for r in other_seed] != [r["embedding_wire_bytes"] for r in model_a]


def test_directreduce_beats_ring(nicemu, tmp_path):
    records, _ = _run_json(nicemu, tmp_path, [*SMALL, "--executor", "model", "--algo", "ring,directreduce"])
    ring, dr = records
    assert dr["ttft_ms_mean"] < ring["ttft_ms_mean"] and dr["tpot_ms_mean"] < ring["tpot_ms_mean"]
    assert dr["ttft_gain_vs_ring"] == pytest.approx(1 - dr["ttft_ms_mean"] / ring["ttft_ms_mean"])


def test_plot(nicemu, tmp_path):
    pytest.importorskip("matplotlib")
    _, proc = _run_json(nicemu, tmp_path, [*SMALL, "--executor", "model", "--plot", "cdf.png"])
    assert (tmp_path / "cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", str(proc)


def test_model_executor_shares_algorithms_over_processes_and_ranks(nicemu, tmp_path):
    """The model executor spreads the algorithms over forked processes (--jobs) or over the ranks of
    mpiexec; the output equals the one-after-another run, in the --algo order."""
    args = [*SMALL, "--algo", "ring,omniccl,directreduce", "--executor", "model"]
    serial, _ = _run_json(nicemu, tmp_path, [*args, "--jobs", "1", "--csv", "serial.csv"], name="serial.json")
    assert [r["algo"] for r in serial] == ["ring", "omniccl", "directreduce"]
    for extra, n, name in ((["--jobs", "3"], None, "jobs"), ([], 2, "two"), ([], 3, "three")):
        shared, proc = _run_json(nicemu, tmp_path, [*args, *extra, "--csv", f"{name}.csv"], n=n,
                                 name=f"{name}.json")
        assert _metrics(shared) == _metrics(serial), name
        assert (tmp_path / f"{name}.csv").read_text() == (tmp_path / "serial.csv").read_text(), name
        assert proc.stdout.count("# nicemu serve:") == 1, name


def test_trace_same_under_every_executor(nicemu, tmp_path):
    """--trace: the MPI executor (rank 0 traces) and the model executor fanned out over ranks write the
    trace the model executor writes alone (emulated times are the same; events gathered to rank 0)."""
    args = [*SMALL, "--algo", "ring,omniccl", "--requests", "3"]
    _run_json(nicemu, tmp_path, [*args, "--executor", "model", "--jobs", "1", "--trace", "alone.json"])
    alone = json.loads((tmp_path / "alone.json").read_text())["traceEvents"]
    assert {e["pid"] for e in alone} == {1, 2} and sum(e["ph"] == "X" for e in alone) > 500
    for extra, n, name in ((["--executor", "mpi"], 2, "mpi2"), (["--executor", "mpi"], 3, "mpi3"),
                           (["--executor", "model"], 2, "fan")):
        _, proc = _run_json(nicemu, tmp_path, [*args, *extra, "--trace", f"{name}.json"], n=n, name=f"{name}.r.json")
        assert json.loads((tmp_path / f"{name}.json").read_text())["traceEvents"] == alone, name
        assert proc.stdout.count("# wrote a trace of") == 1
