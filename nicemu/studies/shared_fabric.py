"""Collectives that share a fabric (docs/results/shared_fabric.md): how much each slows the other, and whether
in-NIC reduction keeps its lead when links, PCIe and NIC engines are shared (docs/model.md §21.6).

Four questions: K identical AllReduces on the same nodes (``bench --concurrent K``); two AllReduce jobs on
a torus placed in contiguous halves or interleaved node by node (``nicemu jobs``); a disaggregated serving
deployment whose KV transfers cross the instances' TP rings (``serve --fabric shared``, §21.7); and how
long the model takes for two 1 GiB AllReduces on ``torus:4^6``.

    from nicemu.studies import shared_fabric
    rows = shared_fabric.same_node_rows(["ring:8"], ["400g-gen5"], ["ring", "directreduce"], 64 << 20, [1, 2])
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nicemu.collectives.api.host_best import NAME as HOST_BEST
from nicemu.collectives.api.model import call_schedule
from nicemu.collectives.model.concurrent import Call, place, run_concurrent
from nicemu.nic.profile import load_profile
from nicemu.report import write_result_files
from nicemu.studies.pages import page
from nicemu.topologies import Torus, parse_topology

SCRIPT = "shared_fabric"
ITEMSIZE = 4
ALGOS = ("ring", HOST_BEST, "directreduce", "directreduce-pipelined")
TOPOLOGIES = ("ring:8", "torus:4x4x4")
PROFILES = ("400g-gen5", "directreduce-paper")
KS = (1, 2, 4)
SIZE = 64 << 20
JOB_ALGOS = ("ring", HOST_BEST, "directreduce")
JOB_SIZES = (16 << 20, 256 << 20)
JOB_FABRIC = "torus:4x4x4"
JOB_PROFILE = "400g-gen5"


def _call(algo: str, topo: Torus, prof, count: int, nodes: np.ndarray) -> tuple[Call, str]:
    sched, ran = call_schedule("allreduce", algo, topo, prof, count, ITEMSIZE)
    return Call(sched, nodes, ITEMSIZE), ran


def same_node_rows(topologies: Sequence[str] = TOPOLOGIES, profiles: Sequence[str] = PROFILES,
                   algos: Sequence[str] = ALGOS, size: int = SIZE, ks: Sequence[int] = KS) -> list[dict]:
    """K identical AllReduces on every node: the slowest call's time, its slowdown, and the gains."""
    rows = []
    for spec in topologies:
        topo = parse_topology(spec)
        for pname in profiles:
            prof = load_profile(pname)
            for k in ks:
                group = []
                placed = place(topo, prof, k, "same")    # K times the same topology and nodes
                for algo in algos:
                    c, ran = _call(algo, placed[0][0], prof, size // ITEMSIZE, placed[0][1])
                    out = run_concurrent([Call(c.schedule, nodes, ITEMSIZE) for _, nodes in placed], topo, prof)
                    slow = max(out, key=lambda o: o.emulated_us)
                    group.append({"topology": spec, "profile": pname, "k": k, "algo": algo,
                                  "ran": ran, "bytes": size, "alone_us": slow.alone_us,
                                  "emulated_us": slow.emulated_us, "slowdown_vs_alone": slow.slowdown_vs_alone})
                _gains(group)
                rows += group
    return rows


def _gains(group: list[dict]) -> None:
    ring = next(r["emulated_us"] for r in group if r["algo"] == "ring")
    best = next((r["emulated_us"] for r in group if r["algo"] == HOST_BEST), None)
    for r in group:
        r["gain_vs_ring"] = 1 - r["emulated_us"] / ring
        r["gain_vs_best_host"] = None if best is None else 1 - r["emulated_us"] / best


def placement_rows(algos: Sequence[str] = JOB_ALGOS, sizes: Sequence[int] = JOB_SIZES) -> list[dict]:
    """Two AllReduce jobs of 32 nodes on ``torus:4x4x4``: contiguous halves against even/odd nodes."""
    fabric, prof = parse_topology(JOB_FABRIC), load_profile(JOB_PROFILE)
    n = fabric.nodes
    placements = {
        "contiguous": [(Torus((2, 4, 4)), np.arange(0, n // 2)), (Torus((2, 4, 4)), np.arange(n // 2, n))],
        "interleaved": [(Torus((4, 4, 2)), np.arange(0, n, 2)), (Torus((4, 4, 2)), np.arange(1, n, 2))],
    }
    scattered = np.sort(np.random.default_rng(1).choice(n, size=n // 2, replace=False))
    rest = np.setdiff1d(np.arange(n), scattered)
    placements["scattered"] = [(parse_topology(f"ring:{n // 2}"), scattered), (parse_topology(f"ring:{n // 2}"), rest)]
    rows = []
    for size in sizes:
        for how, jobs in placements.items():
            group = []
            for algo in algos:
                calls, ran = [], None
                for topo, nodes in jobs:
                    c, ran = _call(algo, topo, prof, size // ITEMSIZE, nodes)
                    calls.append(c)
                out = run_concurrent(calls, fabric, prof)
                slow = max(out, key=lambda o: o.emulated_us)
                group.append({"placement": how, "algo": algo, "ran": ran, "bytes": size,
                              "alone_us": slow.alone_us, "emulated_us": slow.emulated_us,
                              "slowdown_vs_alone": slow.slowdown_vs_alone})
            _gains(group)
            rows += group
    return rows


def speed_rows(spec: str = "torus:4^6", profile: str = "400g-gen5", size: int = 1 << 30,
               algos: Sequence[str] = ("ring", "directreduce")) -> list[dict]:
    """Wall seconds of the model for two concurrent calls against one call alone, run side by side."""
    topo, prof = parse_topology(spec), load_profile(profile)
    rows = []
    for algo in algos:
        c, _ = _call(algo, topo, prof, size // ITEMSIZE, np.arange(topo.nodes))
        t0 = time.perf_counter()
        (one,) = run_concurrent([c], topo, prof)
        t1 = time.perf_counter()
        two = run_concurrent([c, Call(c.schedule, c.nodes, ITEMSIZE)], topo, prof)
        t2 = time.perf_counter()
        rows.append({"topology": spec, "profile": profile, "algo": algo, "bytes": size, "alone_us": one.emulated_us,
                     "emulated_us": two[0].emulated_us, "slowdown_vs_alone": two[0].slowdown_vs_alone,
                     "wall_alone_s": t1 - t0, "wall_two_s": t2 - t1})
    return rows


#: the serving deployment: Llama-3-8B, prefill on nodes 0-7 and decode on 8-15 of ring:16, TP 8 each
SERVE_ARGS = ("--model", "llama3-8b", "--tp", "8", "--disaggregated", "1:1", "--profile", "400g-gen5",
              "--executor", "model", "--jobs", "1", "--seed", "0")
SERVE_ALGOS = "ring,host-best,directreduce"
SERVE_REQUESTS = 30
SERVE_RATES = (1.0, 4.0)


def serve_rows(rates: Sequence[float] = SERVE_RATES, requests: int = SERVE_REQUESTS, algos: str = SERVE_ALGOS,
               extra: Sequence[str] = ()) -> list[dict]:
    """``nicemu serve --fabric shared`` in a subprocess per arrival rate (as a user runs it): every algorithm's
    metrics on the shared fabric beside the idle-fabric ones it reports."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in rates:
            out = Path(tmp) / "serve.json"
            cmd = [sys.executable, "-m", "nicemu", "serve", *SERVE_ARGS, *extra, "--algo", algos, "--requests",
                   str(requests), "--rate", f"{rate:g}", "--fabric", "shared", "--json", str(out)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            for r in json.loads(out.read_text()):
                rows.append({"rate": rate, "requests": requests, **{k: r[k] for k in (
                    "algo", "topology", "ttft_ms_mean", "ttft_ms_mean_alone", "ttft_ms_mean_first_order",
                    "ttft_ms_p99", "ttft_ms_p99_alone", "tpot_ms_mean", "tpot_ms_mean_alone", "kv_transfer_ms_mean",
                    "fabric_replayed_calls", "fabric_slowed_passes", "fabric_max_delay_ms", "fabric_reform_rounds",
                    "fabric_reform_converged", "wall_s")}})
    return rows


def serve_table(rows: list[dict]) -> list[str]:
    out = ["| requests/s | algorithm | TTFT mean alone → shared (ms) | TTFT mean first order (ms) | "
           "TTFT p99 alone → shared (ms) | TPOT mean alone → shared (ms) | KV transfer shared (ms) | "
           "passes slowed | largest delay (ms) | re-formed rounds |",
           "|---:|---|---|---:|---|---|---:|---:|---:|---|"]
    for r in rows:
        rounds = f"{r['fabric_reform_rounds']}" + ("" if r["fabric_reform_converged"] else " (not converged)")
        out.append(f"| {r['rate']:g} | {r['algo']} | {r['ttft_ms_mean_alone']:.2f} → {r['ttft_ms_mean']:.2f} | "
                   f"{r['ttft_ms_mean_first_order']:.2f} | "
                   f"{r['ttft_ms_p99_alone']:.2f} → {r['ttft_ms_p99']:.2f} | {r['tpot_ms_mean_alone']:.3f} → "
                   f"{r['tpot_ms_mean']:.3f} | {r['kv_transfer_ms_mean']:.3f} | {r['fabric_slowed_passes']} | "
                   f"{r['fabric_max_delay_ms']:.2f} | {rounds} |")
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _algo(r: dict) -> str:
    return f"{r['algo']} ({r['ran']})" if r["algo"] == HOST_BEST else r["algo"]


def _shared_cells(r: dict) -> str:
    """The cells both sharing tables end with: algorithm, alone, shared, slowdown and the two gains."""
    return (f"{_algo(r)} | {r['alone_us']:,.1f} | {r['emulated_us']:,.1f} | {r['slowdown_vs_alone']:.3f}× | "
            f"{_pct(r['gain_vs_ring'])} | {_pct(r['gain_vs_best_host'])}")


def same_node_table(rows: list[dict]) -> list[str]:
    out = ["| topology | profile | K | algorithm | alone (µs) | K at once (µs) | slowdown | vs ring | vs host-best |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['topology']} | {r['profile']} | {r['k']} | {_shared_cells(r)} |")
    return out


def placement_table(rows: list[dict]) -> list[str]:
    out = ["| size | placement | algorithm | alone (µs) | both jobs (µs) | slowdown | vs ring | vs host-best |",
           "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['bytes'] >> 20} MiB | {r['placement']} | {_shared_cells(r)} |")
    return out


def speed_table(rows: list[dict]) -> list[str]:
    out = ["| topology | algorithm | alone (µs) | two at once (µs) | slowdown | model, one call (s) | "
           "model, two calls (s) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['topology']} | {r['algo']} | {r['alone_us']:,.1f} | {r['emulated_us']:,.1f} | "
                   f"{r['slowdown_vs_alone']:.3f}× | {r['wall_alone_s']:.2f} | {r['wall_two_s']:.2f} |")
    return out


def findings(same: list[dict], jobs: list[dict], served: Sequence[dict] = ()) -> list[str]:
    def get(rows, **kv):
        return next(r for r in rows if all(r[k] == v for k, v in kv.items()))
    out = []
    for spec in TOPOLOGIES:
        dr1 = get(same, topology=spec, profile="400g-gen5", k=1, algo="directreduce")
        dr2 = get(same, topology=spec, profile="400g-gen5", k=2, algo="directreduce")
        r2 = get(same, topology=spec, profile="400g-gen5", k=2, algo="ring")
        out.append(f"{spec}, 400g-gen5, 64 MiB: DirectReduce gains {_pct(dr1['gain_vs_ring'])} over ring and "
                   f"{_pct(dr1['gain_vs_best_host'])} over host-best alone, {_pct(dr2['gain_vs_ring'])} and "
                   f"{_pct(dr2['gain_vs_best_host'])} with two calls at once. Two calls slow DirectReduce by "
                   f"{dr2['slowdown_vs_alone']:.2f}× and the ring by {r2['slowdown_vs_alone']:.2f}×: the streams "
                   "share links and PCIe, DirectReduce's reductions share the NIC engine and the ring's host "
                   "passes the host's core, so the offload "
                   + ("gives back part of its lead." if dr2["gain_vs_best_host"] < dr1["gain_vs_best_host"]
                      else "keeps its lead or widens it."))
    for size in JOB_SIZES:
        c = get(jobs, placement="contiguous", algo="directreduce", bytes=size)
        cr = get(jobs, placement="contiguous", algo="ring", bytes=size)
        i = get(jobs, placement="interleaved", algo="directreduce", bytes=size)
        ir = get(jobs, placement="interleaved", algo="ring", bytes=size)
        sc = get(jobs, placement="scattered", algo="directreduce", bytes=size)
        scr = get(jobs, placement="scattered", algo="ring", bytes=size)
        out.append(f"Two 32-node jobs, {size >> 20} MiB: in contiguous halves they share no link and keep their "
                   f"alone times ({c['slowdown_vs_alone']:.3f}×). Interleaved node by node, only the last "
                   f"dimension's steps cross the other job's links, and they carry 1/16 of the vector: "
                   f"DirectReduce slows {i['slowdown_vs_alone']:.3f}×, the ring {ir['slowdown_vs_alone']:.3f}×. "
                   f"Scattered at random, each job a ring in node order whose hops take several links, its own "
                   f"messages meet on links: alone, DirectReduce takes {sc['alone_us'] / c['alone_us']:.2f}× and "
                   f"the ring {scr['alone_us'] / cr['alone_us']:.2f}× their contiguous times, and the other job "
                   f"slows them {sc['slowdown_vs_alone']:.3f}× and {scr['slowdown_vs_alone']:.3f}×. "
                   f"DirectReduce's gain over the ring is {_pct(sc['gain_vs_ring'])} against "
                   f"{_pct(c['gain_vs_ring'])} placed contiguously.")
    if served:
        top = max(r["rate"] for r in served)
        ring = get(served, rate=top, algo="ring")
        dr = get(served, rate=top, algo="directreduce")

        def rise(r):
            return _pct(r["ttft_ms_mean"] / r["ttft_ms_mean_alone"] - 1)
        out.append(f"Disaggregated Llama-3-8B at {top:g} requests/s: KV caches crossing the prefill ring while the "
                   f"next prompts prefill raise the mean TTFT by {rise(ring)} with the ring and {rise(dr)} with "
                   f"DirectReduce, and delay a pass by at most {ring['fabric_max_delay_ms']:.1f} and "
                   f"{dr['fabric_max_delay_ms']:.1f} ms. The instances share little at this load, so "
                   f"DirectReduce keeps its lead: mean TTFT {_pct(dr['ttft_ms_mean'] / ring['ttft_ms_mean'] - 1)} "
                   f"against the ring, {_pct(dr['ttft_ms_mean_alone'] / ring['ttft_ms_mean_alone'] - 1)} alone.")
    return out


def reproduce(out: str, command: str = "", speed: bool = True, serve: bool = True) -> list[dict]:
    """Write ``out.{json,csv,md}``; returns the rows."""
    return write(out, command, same_node_rows(), placement_rows(), serve_rows() if serve else [],
                 speed_rows() if speed else [])


def write(out: str, command: str, same: list[dict], jobs: list[dict], served: list[dict], fast: list[dict]
          ) -> list[dict]:
    """The page and its JSON and CSV from the rows (also to redo the page's prose from a JSON it wrote)."""
    about = ("AllReduce, float32, calls started together on one fabric (docs/model.md §21.6); `host-best` names "
             "the host algorithm it picked. Also writes the rows as JSON and CSV, told apart by `table`.")
    body = ["## K calls on the same nodes (`nicemu bench --concurrent K`)", "", *same_node_table(same), "",
            "## Two jobs on torus:4x4x4, contiguous or interleaved (`nicemu jobs`)", "",
            "Contiguous: nodes 0–31 and 32–63, each a torus:2x4x4. Interleaved: even and odd nodes, each a "
            "torus:4x4x2 whose last dimension hops over the other job's nodes. Scattered: 32 nodes drawn at "
            "random (seed 1) and the other 32, each a ring:32 in node order whose hops take the fabric's "
            "dimension-ordered routes. Profile 400g-gen5. A job's alone time is its time alone on the fabric: "
            "where a scattered job's own multi-hop routes overlap, its messages share those links (docs/model.md "
            "§21.6, step 5), and its slowdown counts the other job only.",
            "",
            *placement_table(jobs), ""]
    if served:
        body += ["## Disaggregated serving: KV transfers across the TP rings (`nicemu serve --fabric shared`)", "",
                 f"Llama-3-8B, prefill instance on nodes 0–7 and decode instance on 8–15 of `ring:16`, TP 8 each, "
                 f"400g-gen5, H100, {SERVE_REQUESTS} synthetic requests (seed 0). Every KV shard crosses 8 links, "
                 "among them the prefill ring's; passes and transfers are moved onto one fabric and the batches "
                 "re-form on the slower timeline until nothing moves (docs/model.md §21.7, step 6). `alone` is the "
                 "same run with every call on an idle fabric; `first order` keeps the idle fabric's batches and "
                 "only moves their times (`--fabric-rounds 0`).",
                 "", *serve_table(served), ""]
    if fast:
        body += ["## Speed of the model", "",
                 "Wall seconds on the machine that ran the script (two shared cores), one call and two calls "
                 "run one after the other in the same process:", "", *speed_table(fast), ""]
    rows = ([{"table": "same_nodes", **r} for r in same] + [{"table": "placement", **r} for r in jobs]
            + [{"table": "serve", **r} for r in served] + [{"table": "speed", **r} for r in fast])
    write_result_files(out, rows, page(command, SCRIPT, about, body, findings(same, jobs, served)))
    return rows
