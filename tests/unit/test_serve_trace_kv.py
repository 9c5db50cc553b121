"""``nicemu serve --trace`` for a disaggregated run (an iteration track per instance, the KV transfer on the
request tracks) and the KV swap and restore spans nested in the iterations."""

from __future__ import annotations

import csv
import json

import pytest

from nicemu import cli
from nicemu.nic.profile import load_profile
from nicemu.serve_trace import ServeTracer
from nicemu.topologies import parse_topology
from nicemu.workloads import IterationTimer, Parallelism, load_accelerator, load_model
from nicemu.workloads.batching import BatchingConfig, run_batching
from nicemu.workloads.comm_backends import DTYPE, ModelComm, algos_for
from nicemu.workloads.kv_memory import KvPlan
from nicemu.workloads.requests import Request
from nicemu.workloads.traffic import kv_transfer_bytes
from tests.trace_format import check_trace_format

#: (arrival s, prompt tokens, output tokens); prompts above the 64-token chunk are prefilled in pieces
REQUESTS = [(0.0, 40, 3), (0.001, 150, 5), (0.002, 7, 1), (0.010, 64, 4), (0.011, 90, 2), (0.012, 30, 6)]
ARRIVALS = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t},{i},{o}\n" for t, i, o in REQUESTS)
DISAGG = ["serve", "--model", "llama2-7b", "--tp", "2", "--pp", "2", "--disaggregated", "2:1", "--executor", "model",
          "--chunk", "64", "--token-budget", "96", "--algo", "ring,directreduce"]
EPS_US = 2e-3      # timestamps are written to the nanosecond: ts + dur may differ from the next ts by 1 ns


def _serve(tmp_path, args, *extra, name="t.json"):
    (tmp_path / "arrivals.csv").write_text(ARRIVALS)
    assert cli.main([*args, "--arrivals", str(tmp_path / "arrivals.csv"), "--trace", str(tmp_path / name),
                     "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "rows.csv"), *extra]) == 0
    doc = json.loads((tmp_path / name).read_text())
    with open(tmp_path / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return doc, json.loads((tmp_path / "r.json").read_text()), rows


def _thread_names(events):
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}


def _x(events, pid, tid, cat=None):
    """A track's complete events by start (a stable sort: empty spans keep their place before the next)."""
    return sorted((e for e in events if e["ph"] == "X" and e["pid"] == pid and e["tid"] == tid
                   and (cat is None or e["cat"] == cat)), key=lambda e: e["ts"])


def test_disaggregated_trace_has_a_track_per_instance_and_the_kv_transfer(tmp_path, capsys):
    doc, records, rows = _serve(tmp_path, DISAGG)
    check_trace_format(doc)
    events = doc["traceEvents"]
    names = _thread_names(events)
    model = load_model("llama2-7b")
    instance_tid = {"prefill 0": 1, "prefill 1": 2, "decode 0": 3}
    for pid, rec in zip((1, 2), records):
        for label, tid in instance_tid.items():
            assert names[(pid, tid)] == f"{label} iterations (nested: collectives)"
        # iterations: on each instance's track one after another, together every iteration of the run
        its = {label: _x(events, pid, tid, "iteration") for label, tid in instance_tid.items()}
        for label, mine in its.items():
            assert mine and all(i["args"]["instance"] == label for i in mine)
            assert {i["args"]["phase"] for i in mine} <= ({"prefill"} if label.startswith("prefill") else {"decode"})
            for a, b in zip(mine, mine[1:]):
                assert a["ts"] + a["dur"] <= b["ts"] + EPS_US
            for i in mine:          # each holds its collectives: embedding, 2 per layer, the PP p2p
                inside = [c for c in _x(events, pid, instance_tid[label], "collective")
                          if i["ts"] - EPS_US <= c["ts"] and c["ts"] + c["dur"] <= i["ts"] + i["dur"] + EPS_US]
                assert len(inside) == i["args"]["collectives"] == 2 * 32 + 2
                assert sum(c["args"]["emulated_us"] for c in inside) == pytest.approx(i["args"]["comm_us"], rel=1e-12)
        assert sum(map(len, its.values())) == rec["iterations"] == rec["traced_iterations"]
        # request tracks: prefill queue, prefill, KV transfer, decode queue, decode; no gaps, arrival to last token
        mine = [r for r in rows if r["algo"] == rec["algo"]]
        req_tids = sorted(t for (p, t) in names if p == pid and t >= 10)
        assert [names[(pid, t)] for t in req_tids] == [f"request {r['id']}" for r in mine]
        for tid, row in zip(req_tids, mine):
            spans = _x(events, pid, tid)
            out, prompt = int(row["output_tokens"]), int(row["input_tokens"])
            decode = ["queued", *["decode"] * (out - 1)] if out > 1 else []
            assert [s["name"] for s in spans] == ["queued", "prefill", "KV transfer", *decode]
            arrival_us = float(row["arrival_ms"]) * 1e3
            assert spans[0]["ts"] == pytest.approx(arrival_us, abs=EPS_US)
            for a, b in zip(spans, spans[1:]):
                assert b["ts"] == pytest.approx(a["ts"] + a["dur"], abs=EPS_US)       # no gap, no overlap
            assert spans[-1]["ts"] + spans[-1]["dur"] == pytest.approx(arrival_us + float(row["e2e_ms"]) * 1e3,
                                                                       abs=EPS_US)
            kv = spans[2]
            assert kv["ts"] + kv["dur"] == pytest.approx(arrival_us + float(row["ttft_ms"]) * 1e3, abs=EPS_US)
            assert kv["dur"] == pytest.approx(float(row["kv_transfer_ms"]) * 1e3, abs=EPS_US)
            src, dst = f"prefill {row['prefill_instance']}", f"decode {row['decode_instance']}"
            assert (kv["args"]["source"], kv["args"]["target"]) == (src, dst)
            assert kv["args"]["bytes"] == kv_transfer_bytes(prompt, model)
            assert spans[0]["args"]["instance"] == spans[1]["args"]["instance"] == src
            # the prefill ends with an iteration of its prefill instance; every decode span is one of its
            # decode instance's iterations
            ends = {round(i["ts"] + i["dur"], 3) for i in its[src]}
            assert min(abs(spans[1]["ts"] + spans[1]["dur"] - e) for e in ends) <= EPS_US
            if out > 1:
                assert spans[3]["args"]["instance"] == dst
                dec = {(i["ts"], i["dur"]) for i in its[dst]}
                assert all((s["ts"], s["dur"]) in dec for s in spans[4:])
    assert f"wrote a trace of {sum(e['ph'] == 'X' for e in events):,} events" in capsys.readouterr().out


def test_disaggregated_limits_per_instance(tmp_path):
    """--trace-requests 2: request 0 is prefilled on instance 0, request 1 on instance 1, both decoded on
    decode 0; each track stops when its traced requests are done there. --trace-iterations 1: only
    each instance's first iteration holds collectives."""
    doc, records, rows = _serve(tmp_path, DISAGG, "--trace-requests", "2", "--trace-iterations", "1")
    check_trace_format(doc)
    events = doc["traceEvents"]
    for pid, rec in zip((1, 2), records):
        req = {t: _x(events, pid, t) for t in (10, 11)}
        assert set(_thread_names(events)) & {(pid, t) for t in range(12, 20)} == set()
        traced = 0
        for tid, last in ((1, req[10][1]), (2, req[11][1]), (3, max((s[-1] for s in req.values()),
                                                                      key=lambda s: s["ts"] + s["dur"]))):
            its = _x(events, pid, tid, "iteration")
            traced += len(its)
            assert its[-1]["ts"] + its[-1]["dur"] == pytest.approx(last["ts"] + last["dur"], abs=EPS_US)
            colls = _x(events, pid, tid, "collective")
            assert colls and all(its[0]["ts"] <= c["ts"] <= its[0]["ts"] + its[0]["dur"] for c in colls)
        assert traced == rec["traced_iterations"] < rec["iterations"]


def test_disaggregated_trace_same_with_forked_workers(tmp_path):
    one, _, _ = _serve(tmp_path, DISAGG, "--jobs", "1", name="one.json")
    two, _, _ = _serve(tmp_path, DISAGG, "--jobs", "2", name="two.json")
    assert one["traceEvents"] == two["traceEvents"]


def test_swap_spans_are_the_iterations_swap_time():
    """--preempt swap: each iteration that swaps KV blocks starts with a ``KV swap`` span of exactly its
    IterationLog.swap_us; the pass (its collectives) follows it and the iteration span ends where the
    batcher's duration does."""
    model, acc, par = load_model("llama2-7b"), load_accelerator("H100-SXM"), Parallelism(2, 1)
    layer, emb, a2a, p2p = algos_for("ring")
    tracer = ServeTracer(1, "ring", [], [])
    timer = IterationTimer(model, acc, par, ModelComm(parse_topology("ring:2"), load_profile("directreduce-paper"),
                                                      model, 0), layer, emb, a2a, dtype_bytes=DTYPE.itemsize,
                           p2p_algo=p2p, on_iteration=tracer.hook(0))
    kv = KvPlan(10, 4, 80e9, 0.9, 0, 1000, 8000, 7.0, 3.0)        # 10 blocks of 4 tokens; 7 us + 3 us a block
    result = run_batching([Request(i, 0.0, 8, 10) for i in range(3)], timer, BatchingConfig(kv=kv, preempt="swap"))
    events = tracer.finish(result)
    check_trace_format({"traceEvents": events})
    swaps = [e for e in events if e["name"] == "KV swap"]
    its = {e["args"]["iteration"]: e for e in events if e.get("cat") == "iteration"}
    swapped = [log for log in result.iterations if log.swap_us]
    assert [log.swap_us for log in swapped] == [7.0 + 3 * 3.0] * 2           # out 3 blocks, back in 3 blocks
    assert len(swaps) == len(swapped)
    for log, span in zip(swapped, swaps):
        assert span["args"]["swap_us"] == log.swap_us
        assert span["ts"] == round(log.start_us, 3) and span["dur"] == pytest.approx(log.swap_us, abs=1e-3)
        it = its[log.index]
        assert it["args"]["swap_us"] == log.swap_us and it["ts"] == span["ts"]
        first = min((e for e in events if e.get("cat") == "collective" and it["ts"] <= e["ts"] < it["ts"] + it["dur"]),
                    key=lambda e: e["ts"])
        assert first["ts"] >= span["ts"] + span["dur"]          # the pass runs after the swap
    for log in result.iterations:
        it = its[log.index]
        assert it["ts"] + it["dur"] == pytest.approx(log.start_us + log.duration_us, abs=1e-3)
        assert it["dur"] == pytest.approx(it["args"]["compute_us"] + it["args"]["comm_us"] + log.swap_us, abs=2e-3)


def test_restore_spans_add_what_the_restore_adds(tmp_path):
    """--prefix-reuse: a pass that restores prefixes ends with a ``KV restore`` span of the time the
    restore adds to it (IterationCost.restore_us); they sum to the record's restore_ms."""
    args = ["serve", "--model", "opt-13b", "--tp", "4", "--executor", "model", "--algo", "ring",
            "--prefix-reuse", "0.5"]
    doc, records, _ = _serve(tmp_path, args)
    check_trace_format(doc)
    events = doc["traceEvents"]
    its = [e for e in events if e["ph"] == "X" and e["cat"] == "iteration"]
    restores = [e for e in events if e["name"] == "KV restore"]
    with_restore = [i for i in its if "restore_us" in i["args"]]
    assert len(restores) == len(with_restore) > 0
    for it, span in zip(sorted(with_restore, key=lambda e: e["ts"]), sorted(restores, key=lambda e: e["ts"])):
        assert span["args"]["restore_us"] == it["args"]["restore_us"] > 0
        assert span["dur"] == pytest.approx(it["args"]["restore_us"], abs=EPS_US)
        assert span["ts"] + span["dur"] == pytest.approx(it["ts"] + it["dur"], abs=EPS_US)   # the pass's end
        assert it["dur"] == pytest.approx(it["args"]["compute_us"] + it["args"]["comm_us"] + it["args"]["restore_us"],
                                          abs=EPS_US)
    assert sum(s["args"]["restore_us"] for s in restores) / 1e3 == pytest.approx(records[0]["restore_ms"], rel=1e-12)


def test_partial_swap_in_is_timed_through_the_pass_and_traced():
    """--preempt swap --kv-restore partial: the pass that readmits the swapped request brings its 12 tokens of
    KV back through its layers (restore_in_pass over the pass, with the collectives' PCIe reads), adds what that
    costs as IterationLog swap time, and ends with a ``KV swap-in`` span of exactly that."""
    from nicemu.workloads.kv_restore import restore_in_pass
    model, acc, par = load_model("llama2-7b"), load_accelerator("H100-SXM"), Parallelism(2, 1)
    layer, emb, a2a, p2p = algos_for("ring")
    backend = ModelComm(parse_topology("ring:2"), load_profile("directreduce-paper"), model, 0)
    tracer = ServeTracer(1, "ring", [], [])
    timer = IterationTimer(model, acc, par, backend, layer, emb, a2a, dtype_bytes=DTYPE.itemsize, p2p_algo=p2p,
                           on_iteration=tracer.hook(0), pcie_GBps=25.0, swap_in="partial")
    kv = KvPlan(10, 4, 80e9, 0.9, 0, 1000, 8000, 7.0, 3.0)
    result = run_batching([Request(i, 0.0, 8, 10) for i in range(3)], timer,
                          BatchingConfig(kv=kv, preempt="swap", swap_in="partial"))
    swapped = [log for log in result.iterations if log.swap_us]
    assert [log.swapped_blocks for log in swapped] == [3, 3]
    out, back = swapped
    assert out.swap_us == 7.0 + 3 * 3.0                                 # the swap-out stays synchronous
    cost = timer.costs[back.index]
    pass_us = cost.compute_us + cost.comm_us
    want = restore_in_pass("partial", model, acc, 12, pass_us, 25.0, timer.kv_width,
                           backend.iteration_pcie_us(timer.records(_iteration(back, result))), DTYPE.itemsize)
    assert back.swap_us == pytest.approx(want.step_us - pass_us, rel=1e-12) and back.swap_us > 0
    assert back.duration_us == pytest.approx(pass_us + back.swap_us, rel=1e-12) and cost.restore_us == 0.0
    events = tracer.finish(result)
    check_trace_format({"traceEvents": events})
    (span,) = [e for e in events if e["name"] == "KV swap-in"]
    assert span["args"]["tokens"] == 12 and span["args"]["swap_in_us"] == back.swap_us
    assert span["ts"] + span["dur"] == pytest.approx(back.start_us + back.duration_us, abs=EPS_US)


def _iteration(log, result):
    """A stand-in Iteration with the logged pass's shape (the timer's records depend on tokens and phase)."""
    from nicemu.workloads.batch import Batch, Decode
    from nicemu.workloads.batching import Iteration
    return Iteration(log.index, log.start_us, Batch((), tuple(Decode(i, 0) for i in range(log.decodes))))


def test_replicas_trace_a_process_per_replica(tmp_path):
    """--replicas 2: each replica is a process of its own per algorithm, with the requests it serves
    (round-robin: 0, 2, 4 on replica 0) and its iterations; with --disaggregated 1:1 as well, each replica's
    process has a prefill and a decode track and the KV transfers of its requests."""
    args = ["serve", "--model", "llama2-7b", "--tp", "2", "--replicas", "2", "--executor", "model", "--chunk", "64",
            "--token-budget", "96", "--algo", "ring,directreduce", "--jobs", "1"]
    doc, records, _ = _serve(tmp_path, args)
    check_trace_format(doc)
    events = doc["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert procs == {1: "ring · replica 0", 2: "ring · replica 1", 3: "directreduce · replica 0",
                     4: "directreduce · replica 1"}
    names = _thread_names(events)
    assert sorted(n for (pid, _), n in names.items() if pid == 1 and n.startswith("request")) == [
        "request 0", "request 2", "request 4"]
    assert sorted(n for (pid, _), n in names.items() if pid == 2 and n.startswith("request")) == [
        "request 1", "request 3", "request 5"]
    its = [e for e in events if e.get("cat") == "iteration"]
    assert len(its) == records[0]["traced_iterations"] + records[1]["traced_iterations"]
    assert records[0]["traced_iterations"] == records[0]["iterations"]
    doc, records, _ = _serve(tmp_path, [*args, "--disaggregated", "1:1"], name="d.json")
    check_trace_format(doc)
    events = doc["traceEvents"]
    names = _thread_names(events)
    for pid in (1, 2, 3, 4):
        assert {"prefill 0 iterations (nested: collectives)", "decode 0 iterations (nested: collectives)"} <= {
            n for (p, _), n in names.items() if p == pid}
        kv = [e for e in events if e["name"] == "KV transfer" and e["pid"] == pid]
        k = (pid - 1) % 2                                       # the replica: instances 2k (prefill), 2k + 1
        assert len(kv) == 3 and {(e["args"]["source_instance"], e["args"]["target_instance"]) for e in kv} == {
            (2 * k, 2 * k + 1)}
