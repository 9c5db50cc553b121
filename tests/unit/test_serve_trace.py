"""``nicemu serve --trace``: a valid Chrome trace with request tracks and collectives nested in iterations;
``--arrivals`` (the Azure replay), the error for ``--trace x.csv``, and where a mean request's time went."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import pytest

from nicemu import cli
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology
from nicemu.workloads import (
    BatchingConfig,
    IterationTimer,
    Parallelism,
    load_accelerator,
    load_model,
    run_batching,
    summarize,
    synthetic_requests,
)
from nicemu.workloads.comm_backends import DTYPE, ModelComm, algos_for

#: (arrival s, prompt tokens, output tokens); prompts above the 64-token chunk are prefilled in pieces
REQUESTS = [(0.0, 40, 3), (0.001, 150, 5), (0.002, 7, 1), (0.010, 64, 4), (0.011, 90, 2), (0.012, 30, 6)]
ARRIVALS = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t},{i},{o}\n" for t, i, o in REQUESTS)
SMALL = ["serve", "--model", "llama2-7b", "--tp", "4", "--pp", "2", "--topology", "torus:2x4", "--executor",
         "model", "--chunk", "64", "--token-budget", "96", "--algo", "ring,omniccl"]
EPS_US = 1e-6      # timestamps are written to the nanosecond; the checks allow float rounding of ts + dur


def _serve(tmp_path, *extra, name="t.json"):
    (tmp_path / "arrivals.csv").write_text(ARRIVALS)
    args = [*SMALL, "--arrivals", str(tmp_path / "arrivals.csv"), "--trace", str(tmp_path / name),
            "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "rows.csv"), *extra]
    assert cli.main(args) == 0
    doc = json.loads((tmp_path / name).read_text())
    records = json.loads((tmp_path / "r.json").read_text())
    with open(tmp_path / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return doc["traceEvents"], records, rows


def check_format(events):
    """Trace-event format: every event has ph/name/pid (and tid/ts unless metadata of a process); X events
    have dur >= 0; per (pid, tid) the X events nest: each inside or after the ones still open."""
    tracks = defaultdict(list)
    for e in events:
        assert {"ph", "name", "pid"} <= e.keys(), e
        if e["ph"] == "M":
            assert e["name"] in {"process_name", "process_sort_index", "thread_name", "thread_sort_index"}
            continue
        assert e["ph"] == "X" and {"tid", "ts", "dur"} <= e.keys(), e
        assert e["dur"] >= 0 and e["ts"] >= 0
        tracks[(e["pid"], e["tid"])].append(e)
    for key, evs in tracks.items():
        open_ends = []
        for e in sorted(evs, key=lambda e: (e["ts"], -e["dur"])):
            while open_ends and open_ends[-1] <= e["ts"] + EPS_US:
                open_ends.pop()
            end = e["ts"] + e["dur"]
            assert not open_ends or end <= open_ends[-1] + EPS_US, (key, e)
            open_ends.append(end)
    return tracks


def _names(events):
    return {(e["pid"], e.get("tid")): e["args"]["name"] for e in events if e["name"] in ("process_name", "thread_name")}


def test_trace_tracks_nest_and_cover_requests(tmp_path, capsys):
    events, records, rows = _serve(tmp_path)
    out = capsys.readouterr().out
    tracks = check_format(events)
    names = _names(events)
    assert [names[(p, None)] for p in (1, 2)] == ["ring", "omniccl"]       # one process per algorithm
    for pid, rec in zip((1, 2), records):
        its = sorted((e for e in tracks[(pid, 1)] if e["cat"] == "iteration"), key=lambda e: e["ts"])
        colls = [e for e in tracks[(pid, 1)] if e["cat"] == "collective"]
        assert len(its) == rec["iterations"] == rec["traced_iterations"]
        # every collective lies inside an iteration, and each iteration holds exactly the ones it issued
        inside = defaultdict(list)
        for c in colls:
            host = [i for i in its if i["ts"] - EPS_US <= c["ts"] and c["ts"] + c["dur"] <= i["ts"] + i["dur"] + EPS_US]
            assert len(host) >= 1, c
            inside[host[-1]["args"]["iteration"]].append(c)
        for it in its:
            mine = inside[it["args"]["iteration"]]
            assert len(mine) == it["args"]["collectives"] == 2 * 32 + 2     # embedding, 2 per layer, PP p2p
            assert sum(c["args"]["emulated_us"] for c in mine) == pytest.approx(it["args"]["comm_us"], rel=1e-12)
            assert it["dur"] == pytest.approx(it["args"]["compute_us"] + it["args"]["comm_us"], abs=2e-3)
            order = [c["args"]["what"] for c in sorted(mine, key=lambda c: c["ts"])]
            assert order == ["embedding", *["attn_out", "mlp_out"] * 16, "activations", *["attn_out", "mlp_out"] * 16]
        assert sum(it["args"]["comm_us"] for it in its) / 1e3 == pytest.approx(rec["comm_ms"], rel=1e-9)
        # request tracks: queued, prefill, one decode per later token; from arrival to the last token
        algo_rows = [r for r in rows if r["algo"] == rec["algo"]]
        req_tids = sorted(t for (p, t) in tracks if p == pid and t != 1)
        assert len(req_tids) == len(REQUESTS)
        for tid, row in zip(req_tids, algo_rows):
            assert names[(pid, tid)] == f"request {row['id']}"
            spans = sorted(tracks[(pid, tid)], key=lambda e: e["ts"])
            assert [s["name"] for s in spans] == ["queued", "prefill"] + ["decode"] * (int(row["output_tokens"]) - 1)
            arrival_us, e2e_us = float(row["arrival_ms"]) * 1e3, float(row["e2e_ms"]) * 1e3
            assert spans[0]["ts"] == pytest.approx(arrival_us, abs=1e-3)
            assert spans[-1]["ts"] + spans[-1]["dur"] == pytest.approx(arrival_us + e2e_us, abs=2e-3)
            assert spans[1]["ts"] + spans[1]["dur"] == pytest.approx(arrival_us + float(row["ttft_ms"]) * 1e3,
                                                                   abs=2e-3)
            for a, b in zip(spans, spans[1:]):
                assert b["ts"] >= a["ts"] + a["dur"] - EPS_US     # one after the other
    count = sum(1 for e in events if e["ph"] == "X")
    assert f"wrote a trace of {count:,} events" in out


def test_limits_and_jobs(tmp_path, capsys):
    events, records, _ = _serve(tmp_path, "--trace-requests", "2", "--trace-iterations", "3", "--jobs", "1")
    tracks = check_format(events)
    for pid, rec in zip((1, 2), records):
        req_tids = sorted(t for (p, t) in tracks if p == pid and t != 1)
        assert len(req_tids) == 2
        its = [e for e in tracks[(pid, 1)] if e["cat"] == "iteration"]
        last_finish = max(s["ts"] + s["dur"] for t in req_tids for s in tracks[(pid, t)])
        assert len(its) == rec["traced_iterations"] < rec["iterations"]
        assert max(i["ts"] + i["dur"] for i in its) == pytest.approx(last_finish, abs=2e-3)  # stops there
        nested = {i["args"]["iteration"] for i in its
                  if any(c["cat"] == "collective" and i["ts"] <= c["ts"] < i["ts"] + i["dur"]
                         for c in tracks[(pid, 1)])}
        assert nested == {0, 1, 2}
    assert "the first 2 of 6 requests" in capsys.readouterr().out
    # forked workers (--jobs 2) gather the same trace
    again, _, _ = _serve(tmp_path, "--trace-requests", "2", "--trace-iterations", "3", "--jobs", "2", name="j.json")
    assert again == events


def test_moe_dispatch_and_combine_nest(tmp_path):
    (tmp_path / "arrivals.csv").write_text(ARRIVALS)
    args = ["serve", "--model", "mixtral-8x7b", "--tp", "2", "--ep", "2", "--executor", "model", "--algo", "ring",
            "--arrivals", str(tmp_path / "arrivals.csv"), "--requests", "2", "--trace", str(tmp_path / "m.json")]
    assert cli.main(args) == 0
    tracks = check_format(json.loads((tmp_path / "m.json").read_text())["traceEvents"])
    first = min((e for e in tracks[(1, 1)] if e["cat"] == "iteration"), key=lambda e: e["ts"])
    colls = sorted((e for e in tracks[(1, 1)] if e["cat"] == "collective" and e["ts"] < first["ts"] + first["dur"]),
                   key=lambda e: e["ts"])
    assert [c["args"]["what"] for c in colls[:4]] == ["embedding", "attn_out", "dispatch", "combine"]
    assert colls[2]["name"] == "MoE all-to-all · ring"
    gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(colls, colls[1:])]
    assert min(gaps) > 0          # compute (attention, router, experts) sits between them


@pytest.mark.parametrize("name, text", [("x.csv", ARRIVALS), ("azure.txt", ARRIVALS), ("new.CSV", None)])
def test_trace_of_a_csv_says_use_arrivals(tmp_path, capsys, name, text):
    if text is not None:
        (tmp_path / name).write_text(text)
    path = str(tmp_path / name)
    assert cli.main([*SMALL, "--trace", path]) == 2
    assert capsys.readouterr().err == (f"nicemu: error: --trace now writes a Chrome trace (JSON); replay an Azure "
                                       f"CSV with --arrivals {path}\n")
    if text is not None:
        assert (tmp_path / name).read_text() == text       # left alone


def test_arrivals_replaces_the_old_flag(tmp_path, capsys):
    (tmp_path / "arrivals.csv").write_text(ARRIVALS)
    assert cli.main([*SMALL, "--arrivals", str(tmp_path / "arrivals.csv"), "--json", str(tmp_path / "r.json")]) == 0
    assert f"{len(REQUESTS)} requests ({tmp_path / 'arrivals.csv'})" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())[0]["requests"] == len(REQUESTS)
    capsys.readouterr()
    assert cli.main([*SMALL, "--arrivals", ""]) == 2
    assert "--arrivals is empty" in capsys.readouterr().err
    assert cli.main([*SMALL, "--trace", str(tmp_path / "t.json"), "--trace-requests", "-1"]) == 2
    assert "--trace-requests must be >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("model, tp, pp, ep, algo", [("llama2-7b", 4, 2, 1, "ring"), ("llama3-8b", 8, 1, 1, "omniccl"),
                                                     ("mixtral-8x7b", 2, 1, 2, "directreduce")])
def test_time_split_adds_up_to_mean_e2e(model, tp, pp, ep, algo):
    m, acc, par = load_model(model), load_accelerator("H100-SXM"), Parallelism(tp, pp, ep)
    layer, emb, a2a, p2p = algos_for(algo)
    backend = ModelComm(parse_topology(f"ring:{tp * pp}"), load_profile("directreduce-paper"), m, 0)
    timer = IterationTimer(m, acc, par, backend, layer, emb, a2a, dtype_bytes=DTYPE.itemsize, p2p_algo=p2p)
    requests = synthetic_requests(40, 20.0, "uniform:10:600", "uniform:1:40", 1.0, 3)
    result = run_batching(requests, timer, BatchingConfig(256, 64, 8))
    rec = summarize(result, timer.costs)
    split = rec["e2e_split_ms"]
    assert sum(split.values()) == pytest.approx(rec["e2e_ms_mean"], rel=1e-9)
    assert split["queue"] > 0 and split["compute"] > 0
    kinds = {"TP allreduce", "embedding allreduce"} | ({"pipeline p2p"} if pp > 1 else set()) | (
        {"MoE all-to-all"} if ep > 1 else set())
    assert set(split) == {"queue", "compute"} | kinds
    # the communication parts of every request's iterations are the run's communication, request-weighted
    assert sum(v for k, v in split.items() if k not in ("queue", "compute")) > 0


def test_plot_has_the_split(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    events, records, _ = _serve(tmp_path, "--plot", str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 10_000
    for r in records:
        assert sum(r["e2e_split_ms"].values()) == pytest.approx(r["e2e_ms_mean"], rel=1e-9)
    from nicemu.serve_report import time_split_bars
    algos, parts = time_split_bars(records)
    assert algos == ["ring", "omniccl"] and list(parts)[:2] == ["queue", "compute"]
    for i, r in enumerate(records):
        assert sum(p[i] for p in parts.values()) == pytest.approx(r["e2e_ms_mean"], rel=1e-9)


def test_write_trace_writes_what_json_dump_would(tmp_path, monkeypatch):
    """The chunked writer (C encoder) gives the bytes of one json.dump of the document, chunk seams included."""
    from nicemu.nic import trace
    monkeypatch.setattr(trace, "WRITE_CHUNK", 3)
    for n in (0, 1, 3, 7):
        events = [{"ph": "X", "name": f"e{i} · ü", "pid": 1, "tid": 2, "ts": i * 0.5, "dur": 0.25, "args": {"i": i}}
                  for i in range(n)]
        assert trace.write_trace(str(tmp_path / "t.json"), [], extra=events, meta={"k": [1, 2]}) == n
        doc = {"traceEvents": events, "displayTimeUnit": "ns",
               "otherData": {"generator": "nicemu", "time": "emulated microseconds", "k": [1, 2]}}
        assert (tmp_path / "t.json").read_text() == json.dumps(doc, separators=(",", ":"))
