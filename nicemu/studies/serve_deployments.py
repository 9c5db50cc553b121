"""Serving deployments an operator would recognise (docs/results/serve_deployments.md).

Each deployment runs ``nicemu serve`` with the model executor on the current-hardware profile
(``400g-gen5``: 400 Gb/s links, PCIe Gen5) with eight H100s per node on NVLink, one 400 Gb/s NIC
per accelerator: TP inside a node, TP across two nodes (the hierarchical AllReduce), each colocated
and with disaggregated prefill and decode, and the NIC algorithm against the host baselines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from nicemu.report import write_result_files
from nicemu.studies.pages import page, scratch_dir

SCRIPT = "serve_deployments"
ALGOS = "ring,host-best,directreduce"
#: interactive-chat objectives; a judgement, stated on the page, not fitted to any result
SLO_TTFT_MS, SLO_TPOT_MS = 500.0, 50.0
COMMON = ["--profile", "400g-gen5", "--set", "intra_node.nvlink=true", "--ranks-per-node", "8",
          "--executor", "model", "--jobs", "1", "--algo", ALGOS,
          "--slo-ttft", f"{SLO_TTFT_MS:g}", "--slo-tpot", f"{SLO_TPOT_MS:g}"]
DEPLOYMENTS: tuple[tuple[str, list[str]], ...] = (
    ("Llama-3-70B, TP 8 in one node", ["--model", "llama3-70b", "--tp", "8"]),
    ("Llama-3-70B, TP 8 per node, two colocated replicas", ["--model", "llama3-70b", "--tp", "8", "--replicas", "2"]),
    ("Llama-3-70B, TP 8 per node, prefill and decode nodes 1:1",
     ["--model", "llama3-70b", "--tp", "8", "--disaggregated", "1:1"]),
    ("Llama-3.1-405B, TP 16 over two nodes", ["--model", "llama3.1-405b", "--tp", "16"]),
    ("Llama-3.1-405B, TP 16 over two nodes, two colocated replicas",
     ["--model", "llama3.1-405b", "--tp", "16", "--replicas", "2"]),
    ("Llama-3.1-405B, TP 16 over two nodes per instance, 1:1",
     ["--model", "llama3.1-405b", "--tp", "16", "--disaggregated", "1:1"]),
)


def run_deployment(args: Sequence[str], requests: int, out: Path) -> list[dict]:
    """``nicemu serve ARGS`` in a subprocess (each run is its own process, as a user runs it); its records."""
    cmd = [sys.executable, "-m", "nicemu", "serve", *args, *COMMON, "--requests", str(requests), "--json", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def rows(requests: int, scratch: Path, progress: bool = False) -> list[dict]:
    out = []
    for i, (name, args) in enumerate(DEPLOYMENTS):
        if progress:
            print(f"[{i + 1}/{len(DEPLOYMENTS)}] {name}", file=sys.stderr, flush=True)
        for r in run_deployment(args, requests, scratch / f"deployment{i}.json"):
            gpus = r["nodes"] * r["ranks_per_node"]
            out.append({"deployment": name, "algo": r["algo"], "requests": r["requests"], "model": r["model"],
                        "tp": r["tp"], "replicas": r["replicas"],
                        "disaggregated": r.get("disaggregated"), "accelerators": gpus,
                        "ttft_ms_mean": r["ttft_ms_mean"], "ttft_ms_p99": r["ttft_ms_p99"],
                        "tpot_ms_mean": r["tpot_ms_mean"], "tpot_ms_p99": r["tpot_ms_p99"],
                        "e2e_ms_mean": r["e2e_ms_mean"], "throughput_tok_s": r["throughput_tok_s"],
                        "comm_share": r["comm_share"], "kv_transfer_ms_mean": r.get("kv_transfer_ms_mean"),
                        "slo_attainment": r["slo_attainment"], "goodput_req_s": r["goodput_req_s"],
                        "kv_blocks": r["kv_blocks"], "kv_peak_fraction": r["kv_peak_fraction"],
                        "preemptions": r["preemptions"],
                        "wall_s": r["wall_s"]})
    return out


def table(data: Sequence[dict]) -> list[str]:
    lines = ["| deployment | algo | accelerators | TTFT mean / P99 (ms) | TPOT mean / P99 (ms) | KV transfer (ms) "
             "| comm share | KV peak | SLO met | TTFT vs ring | TTFT vs host-best |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data:
        base = {b["algo"]: b for b in data if b["deployment"] == r["deployment"]}
        kv = "–" if r["kv_transfer_ms_mean"] is None else f"{r['kv_transfer_ms_mean']:.2f}"

        def gain(name: str, r=r, base=base) -> str:
            return "–" if name == r["algo"] else f"{100 * (1 - r['ttft_ms_mean'] / base[name]['ttft_ms_mean']):+.1f}%"
        lines.append(f"| {r['deployment']} | `{r['algo']}` | {r['accelerators']} | "
                     f"{r['ttft_ms_mean']:,.1f} / {r['ttft_ms_p99']:,.1f} | {r['tpot_ms_mean']:.2f} / "
                     f"{r['tpot_ms_p99']:.2f} | {kv} | {100 * r['comm_share']:.1f}% | "
                     f"{100 * r['kv_peak_fraction']:.1f}% | "
                     f"{100 * r['slo_attainment']:.0f}% | {gain('ring')} | {gain('host-best')} |")
    return lines


def findings(data: Sequence[dict]) -> list[str]:
    """What the table shows, read from the rows."""
    by = {(r["deployment"], r["algo"]): r for r in data}
    names = list(dict.fromkeys(r["deployment"] for r in data))
    out = []
    for name in names:
        dr, ring, best = by[(name, "directreduce")], by[(name, "ring")], by[(name, "host-best")]
        cut = [100 * (1 - dr[k] / ref[k]) for ref in (ring, best) for k in ("ttft_ms_mean", "tpot_ms_mean")]
        out.append(f"{name}: DirectReduce against ring cuts TTFT by {cut[0]:.1f}% and TPOT by {cut[1]:.1f}%, "
                   f"against host-best by {cut[2]:.1f}% and {cut[3]:.1f}% (means; communication is "
                   f"{100 * ring['comm_share']:.0f}% of ring's iteration time).")
    one = [n for n in names if by[(n, "ring")]["accelerators"] == 8 and by[(n, "ring")]["disaggregated"] is None]
    if one:
        out.append("Inside one node every algorithm gives the same time: the TP AllReduce stays on NVLink and "
                   "no byte reaches a NIC, so a NIC algorithm can only pay off where traffic leaves the node.")
    kv = [r for r in data if r["kv_transfer_ms_mean"] is not None and r["algo"] == "ring"]
    for r in kv:
        out.append(f"{r['deployment']}: a mean request's KV cache crosses the rails in "
                   f"{r['kv_transfer_ms_mean']:.2f} ms, {100 * r['kv_transfer_ms_mean'] / r['ttft_ms_mean']:.1f}% "
                   "of its TTFT.")
    pre = sum(r["preemptions"] for r in data)
    low, high = min(r["kv_peak_fraction"] for r in data), max(r["kv_peak_fraction"] for r in data)
    out.append(f"KV-cache memory (90% of HBM, 16-token blocks) peaks at {100 * low:.1f}"
               f"–{100 * high:.1f}% of its blocks"
               + (f"; {pre} preemptions in all." if pre else "; no request is preempted at this load."))
    for rep in [n for n in names if "replicas" in n]:
        dis = next((n for n in names if n.startswith(rep.split(",")[0]) and "1:1" in n), None)
        if dis is None:
            continue
        a, d = by[(rep, "directreduce")], by[(dis, "directreduce")]
        out.append(f"At equal accelerators ({a['accelerators']}), {rep.split(',')[0]} with DirectReduce: two colocated "
                   f"replicas give TTFT {a['ttft_ms_mean']:.1f} ms (P99 {a['ttft_ms_p99']:.1f}) and TPOT "
                   f"{a['tpot_ms_mean']:.2f} ms (P99 {a['tpot_ms_p99']:.2f}); prefill and decode apart give "
                   f"{d['ttft_ms_mean']:.1f} ({d['ttft_ms_p99']:.1f}) and {d['tpot_ms_mean']:.2f} "
                   f"({d['tpot_ms_p99']:.2f}) at this load.")
    return out


def reproduce(out: str, requests: int = 200, command: str = "", progress: bool = False) -> list[dict]:
    """Run every deployment and write ``out.{json,csv,md}``."""
    with scratch_dir(out) as scratch:
        data = rows(requests, scratch, progress)
    write_result_files(out, data, page_lines(data, command, Path(out).name))
    return data


def page_lines(data: Sequence[dict], command: str, name: str = "serve_deployments") -> list[str]:
    """The page from the rows (so it can be rebuilt from the committed JSON)."""
    about = (f"{data[0]['requests']} requests per deployment (Poisson, 1 request/s, serve's default lengths), "
             f"H100-SXM, 8 per node on NVLink (`intra_node.nvlink`), profile `400g-gen5`, model executor; SLO: "
             f"TTFT ≤ {SLO_TTFT_MS:g} ms and TPOT ≤ {SLO_TPOT_MS:g} ms, interactive-chat objectives chosen as a "
             f"judgement. Also writes {name}.json and .csv.")
    return page(command, SCRIPT, about, table(data), findings(data))
