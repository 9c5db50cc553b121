"""``nicemu serve --disaggregated P:D``: KV transfers as real data, the same metrics on every executor.

The model executor's run is the reference; the MPI executor at 3 ranks (a rank hosting nodes of the
prefill and the decode instance) and at 8 must give the same metrics, with every KV transfer's
first occurrence moved and checked. The --traffic file lists one kv_transfer row per request with
the request's whole KV cache.
"""

from __future__ import annotations

import csv
import json

import pytest

from nicemu.workloads.models import find_preset
from nicemu.workloads.traffic import kv_transfer_bytes

pytestmark = pytest.mark.e2e

TRACE = "TIMESTAMP,ContextTokens,GeneratedTokens\n0.0,40,3\n0.001,150,5\n0.002,7,1\n0.010,64,4\n0.011,90,2\n"
ARGS = ["serve", "--model", "llama2-7b", "--tp", "2", "--pp", "2", "--disaggregated", "1:1", "--arrivals",
        "trace.csv", "--chunk", "64", "--token-budget", "96", "--algo", "ring,directreduce", "--slo-ttft", "60",
        "--slo-tpot", "20"]
SKIP = {"wall_s", "executor", "ranks", "real_data", "real_data_calls", "checked_elements", "wrong"}


def _run(nicemu, tmp_path, extra, n=None, name="out"):
    (tmp_path / "trace.csv").write_text(TRACE)
    proc = nicemu([*ARGS, *extra, "--json", f"{name}.json", "--csv", f"{name}.csv"], n=n)
    assert proc.returncode == 0, str(proc)
    recs = json.loads((tmp_path / f"{name}.json").read_text())
    return [{k: v for k, v in r.items() if k not in SKIP} for r in recs], recs, proc


def test_disaggregated_same_metrics_on_every_executor(nicemu, tmp_path):
    model, _, _ = _run(nicemu, tmp_path, ["--executor", "model", "--traffic", "traffic.csv"], name="model")
    for n in (3, 8):
        got, raw, proc = _run(nicemu, tmp_path, [], n=n, name=f"mpi{n}")
        assert got == model, n
        assert all(r["wrong"] == 0 and r["checked_elements"] > 0 for r in raw) and "0 wrong OK" in proc.stdout
        assert (tmp_path / f"mpi{n}.csv").read_text() == (tmp_path / "model.csv").read_text()
    ring, dr = model
    assert ring["disaggregated"] == "1:1" and ring["nodes"] == 8 and ring["kv_transfers"] == 5
    # the NIC path saves the two host wake-ups of every transfer
    assert dr["kv_transfer_ms_mean"] < ring["kv_transfer_ms_mean"]
    split = ring["e2e_split_ms"]
    assert sum(split.values()) == pytest.approx(ring["e2e_ms_mean"], rel=1e-9)
    assert split["KV transfer"] == pytest.approx(ring["kv_transfer_ms_mean"], rel=1e-9)
    assert 0 <= ring["slo_attainment"] <= 1 and ring["slo_ttft_ms"] == 60
    # one kv_transfer row per request and algorithm, each the request's whole KV cache
    model7 = find_preset("Llama-2-7B")
    rows = [r for r in csv.DictReader(open(tmp_path / "traffic.csv")) if r["collective"] == "kv_transfer"]
    prompts = sorted(int(line.split(",")[1]) for line in TRACE.splitlines()[1:])
    assert sorted(int(r["bytes"]) for r in rows) == sorted(2 * [kv_transfer_bytes(p, model7) for p in prompts])
    assert ring["kv_transfer_bytes"] == sum(kv_transfer_bytes(p, model7) for p in prompts)
    per_request = list(csv.DictReader(open(tmp_path / "model.csv")))
    assert {r["prefill_instance"] for r in per_request} == {"0"} and all(float(r["kv_transfer_ms"]) > 0
                                                                        for r in per_request)
    for r in per_request:                   # TTFT includes the transfer
        assert float(r["ttft_ms"]) > float(r["kv_transfer_ms"])


def test_disaggregated_trace_same_under_every_executor(nicemu, tmp_path):
    """--trace --disaggregated: the MPI executor at 3 ranks (rank 0 traces every instance) writes the trace
    the model executor writes alone, with one iteration track per instance and the KV transfer on the
    request tracks."""
    _run(nicemu, tmp_path, ["--executor", "model", "--jobs", "1", "--trace", "alone.trace.json"], name="alone")
    alone = json.loads((tmp_path / "alone.trace.json").read_text())["traceEvents"]
    names = {e["args"]["name"] for e in alone if e["name"] == "thread_name"}
    assert {"prefill 0 iterations (nested: collectives)", "decode 0 iterations (nested: collectives)"} <= names
    assert sum(e["name"] == "KV transfer" for e in alone) == 2 * 5      # per algorithm, one per request
    _, _, proc = _run(nicemu, tmp_path, ["--trace", "mpi3.trace.json"], n=3, name="mpi3")
    assert json.loads((tmp_path / "mpi3.trace.json").read_text())["traceEvents"] == alone
    assert proc.stdout.count("# wrote a trace of") == 1


def test_replicas_same_metrics_on_every_executor(nicemu, tmp_path):
    """--replicas 2: two colocated copies on nodes 0-3 and 4-7 share the requests; the MPI executor at 3 ranks
    gives the model executor's records, and each replica's requests are served as by a one-replica run."""
    (tmp_path / "trace.csv").write_text(TRACE)
    base = ["serve", "--model", "llama2-7b", "--tp", "2", "--pp", "2", "--arrivals", "trace.csv", "--chunk", "64",
            "--token-budget", "96", "--algo", "ring,directreduce"]
    runs = {}
    for name, extra, n in (("model", ["--executor", "model", "--replicas", "2", "--jobs", "1"], None),
                           ("mpi", ["--replicas", "2"], 3)):
        proc = nicemu([*base, *extra, "--json", f"{name}.json", "--csv", f"{name}.csv", "--trace",
                       f"{name}.trace.json"], n=n)
        assert proc.returncode == 0, str(proc)
        runs[name] = [{k: v for k, v in r.items() if k not in SKIP}
                      for r in json.loads((tmp_path / f"{name}.json").read_text())]
    assert runs["mpi"] == runs["model"]
    assert (tmp_path / "mpi.csv").read_text() == (tmp_path / "model.csv").read_text()
    # --trace: a process per algorithm and replica, the same file under both executors
    assert (tmp_path / "mpi.trace.json").read_text() == (tmp_path / "model.trace.json").read_text()
    events = json.loads((tmp_path / "model.trace.json").read_text())["traceEvents"]
    assert sorted(e["args"]["name"] for e in events if e["name"] == "process_name") == [
        "directreduce · replica 0", "directreduce · replica 1", "ring · replica 0", "ring · replica 1"]
    ring = runs["model"][0]
    assert (ring["replicas"], ring["nodes"]) == (2, 8)
    assert sum(ring["e2e_split_ms"].values()) == pytest.approx(ring["e2e_ms_mean"], rel=1e-9)
    # requests 0, 2, 4 on replica 0: the same times as serving those three alone on one instance
    lines = TRACE.splitlines()
    (tmp_path / "even.csv").write_text("\n".join([lines[0], *lines[1::2]]) + "\n")
    even = [a if a != "trace.csv" else "even.csv" for a in base]
    proc = nicemu([*even, "--executor", "model", "--topology", "ring:4", "--csv", "even_out.csv"])
    assert proc.returncode == 0, str(proc)
    # the shorter trace numbers its requests 0, 1, 2: they are requests 0, 2, 4 of the whole one
    alone = {(r["algo"], str(2 * int(r["id"]))): r["ttft_ms"] for r in csv.DictReader(open(tmp_path / "even_out.csv"))}
    both = {(r["algo"], r["id"]): r["ttft_ms"] for r in csv.DictReader(open(tmp_path / "model.csv"))}
    assert {k: both[k] for k in alone} == alone


def test_replicas_of_disaggregated_same_metrics_and_trace_on_every_executor(nicemu, tmp_path):
    """--replicas 2 --disaggregated 1:1: two copies of a prefill and a decode instance (TP 2, nodes 0-3 and
    4-7). The MPI executor at 3 ranks moves the KV caches for real and gives the model executor's records,
    rows and trace (a process per replica); each replica serves its requests (0, 2, 4 and 1, 3) as a lone
    1:1 deployment does."""
    one = ["serve", "--model", "llama2-7b", "--tp", "2", "--disaggregated", "1:1", "--arrivals", "trace.csv",
           "--chunk", "64", "--token-budget", "96", "--algo", "ring,directreduce"]
    base = [*one, "--replicas", "2"]
    (tmp_path / "trace.csv").write_text(TRACE)
    runs = {}
    for name, extra, n in (("model", ["--executor", "model", "--jobs", "1"], None), ("mpi", [], 3)):
        proc = nicemu([*base, *extra, "--json", f"{name}.json", "--csv", f"{name}.csv", "--trace",
                       f"{name}.trace.json"], n=n)
        assert proc.returncode == 0, str(proc)
        raw = json.loads((tmp_path / f"{name}.json").read_text())
        runs[name] = [{k: v for k, v in r.items() if k not in SKIP} for r in raw]
    assert all(r["wrong"] == 0 and r["checked_elements"] > 0 for r in raw)
    assert runs["mpi"] == runs["model"]
    for suffix in (".csv", ".trace.json"):
        assert (tmp_path / f"mpi{suffix}").read_text() == (tmp_path / f"model{suffix}").read_text()
    ring = runs["model"][0]
    assert (ring["replicas"], ring["nodes"], ring["disaggregated"], ring["kv_transfers"]) == (2, 8, "1:1", 5)
    assert sum(ring["e2e_split_ms"].values()) == pytest.approx(ring["e2e_ms_mean"], rel=1e-9)
    rows = list(csv.DictReader(open(tmp_path / "model.csv")))
    assert {(r["id"], r["prefill_instance"], r["decode_instance"]) for r in rows if r["algo"] == "ring"} == {
        ("0", "0", "0"), ("2", "0", "0"), ("4", "0", "0"), ("1", "1", "1"), ("3", "1", "1")}
    lines = TRACE.splitlines()
    (tmp_path / "even.csv").write_text("\n".join([lines[0], *lines[1::2]]) + "\n")
    alone = [a if a != "trace.csv" else "even.csv" for a in one]
    proc = nicemu([*alone, "--executor", "model", "--csv", "even_out.csv"])
    assert proc.returncode == 0, str(proc)
    got = {(r["algo"], str(2 * int(r["id"]))): (r["ttft_ms"], r["e2e_ms"], r["kv_transfer_ms"])
           for r in csv.DictReader(open(tmp_path / "even_out.csv"))}
    both = {(r["algo"], r["id"]): (r["ttft_ms"], r["e2e_ms"], r["kv_transfer_ms"]) for r in rows}
    assert {k: both[k] for k in got} == got


@pytest.mark.parametrize("flag", ["true", "false"])
def test_gpudirect_flag_same_metrics_on_every_executor(nicemu, tmp_path, flag):
    """--set nic.gpudirect: every algorithm's KV transfers (and PP activations) take the NIC path (true) or
    the host path (false); the MPI executor at 3 ranks moves the bytes and gives the model's records."""
    extra = ["--set", f"nic.gpudirect={flag}"]
    model, _, _ = _run(nicemu, tmp_path, ["--executor", "model", *extra], name="model")
    got, raw, proc = _run(nicemu, tmp_path, extra, n=3, name="mpi3")
    assert got == model
    assert all(r["wrong"] == 0 and r["checked_elements"] > 0 for r in raw) and "0 wrong OK" in proc.stdout
    assert (tmp_path / "mpi3.csv").read_text() == (tmp_path / "model.csv").read_text()
    ring, dr = model
    assert ring["p2p_path"] == dr["p2p_path"] == ("nic" if flag == "true" else "host")
    assert ring["kv_transfer_ms_mean"] == dr["kv_transfer_ms_mean"] > 0
