"""The serving results page: Llama-3-70B with TP 8 on ``ring:8`` with real data, ring vs DirectReduce vs OmNICCL.

``run`` executes the deployment under ``mpiexec`` (the files it writes are the
page's data); ``write_page`` turns its JSON into ``docs/results/serve.md``, so
the page can be rebuilt from the committed JSON without the 4-minute run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from nicemu.collectives.registry import get
from nicemu.studies.pages import page

SCRIPT = "serve_page"
STEM = "serve_llama3-70b_tp8"
#: the deployment: every other option is nicemu serve's default (H100-SXM, Poisson 1 req/s, directreduce-paper)
SERVE_ARGS = ["--model", "llama3-70b", "--tp", "8", "--requests", "50"]


def serve_command(results: Path, ranks: int) -> list[str]:
    """``mpiexec -n RANKS nicemu serve ...`` writing the JSON, per-request CSV and CDF plot into ``results``."""
    bindir = Path(sys.executable).parent
    mpiexec = shutil.which("mpiexec", path=str(bindir)) or "mpiexec"
    nicemu = shutil.which("nicemu", path=str(bindir)) or "nicemu"
    return [mpiexec, "-n", str(ranks), nicemu, "serve", *SERVE_ARGS,
            "--json", str(results / f"{STEM}.json"), "--csv", str(results / f"{STEM}_requests.csv"),
            "--plot", str(results / f"{STEM}_cdf.png")]


def run(results: Path, ranks: int = 8) -> None:
    """Run the deployment with real data (about 4 minutes with 8 ranks on 2 cores)."""
    subprocess.run(serve_command(results, ranks), check=True)


def table(records: Sequence[dict]) -> list[str]:
    lines = ["| algo | TTFT mean / P50 / P99 (ms) | TPOT mean / P50 / P99 (ms) | end-to-end P50 / P99 (ms) | "
             "output tok/s | comm share | host comm (ms) | embedding wire (MB) | embedding comm (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(
            f"| `{r['algo']}` | {r['ttft_ms_mean']:,.0f} / {r['ttft_ms_p50']:,.0f} / {r['ttft_ms_p99']:,.0f} | "
            f"{r['tpot_ms_mean']:.2f} / {r['tpot_ms_p50']:.2f} / {r['tpot_ms_p99']:.2f} | "
            f"{r['e2e_ms_p50']:,.0f} / {r['e2e_ms_p99']:,.0f} | {r['throughput_tok_s']:,.0f} | "
            f"{100 * r['comm_share']:.1f}% | {r['host_comm_ms']:,.0f} | {r['embedding_wire_bytes'] / 1e6:,.0f} | "
            f"{r['embedding_comm_ms']:,.0f} |")
    return lines


def _gain(r: dict, base: dict, key: str) -> float:
    return 100 * (1 - r[key] / base[key])


def findings(records: Sequence[dict]) -> list[str]:
    """What the table shows, read from the records."""
    by = {r["algo"]: r for r in records}
    out = []
    for base in ("ring", "host-best"):
        ref = by.get(base)
        for name, r in by.items():
            if ref is None or name in ("ring", "host-best"):
                continue
            out.append(f"`{name}` cuts TTFT against `{base}` by {_gain(r, ref, 'ttft_ms_mean'):.1f}% (mean), "
                       f"{_gain(r, ref, 'ttft_ms_p50'):.1f}% (P50) and {_gain(r, ref, 'ttft_ms_p99'):.1f}% (P99), "
                       f"and TPOT by {_gain(r, ref, 'tpot_ms_mean'):.1f}%, {_gain(r, ref, 'tpot_ms_p50'):.1f}% and "
                       f"{_gain(r, ref, 'tpot_ms_p99'):.1f}% (a negative cut would be a slowdown).")
    ring, best = by.get("ring"), by.get("host-best")
    if ring is not None and best is not None:
        out.append(f"`host-best` (the fastest host algorithm for each call's size) cuts TTFT against `ring` by "
                   f"{_gain(best, ring, 'ttft_ms_mean'):.1f}% and TPOT by {_gain(best, ring, 'tpot_ms_mean'):.1f}% "
                   "(means).")
    nic = [r for r in records if get(r["layer_algo"]).engine == "nic"]
    if ring is not None and nic:
        out.append(f"Communication is {100 * min(r['comm_share'] for r in records):.0f}–"
                   f"{100 * max(r['comm_share'] for r in records):.0f}% of the iteration time at 100 Gb/s; the "
                   f"host spent {ring['host_comm_ms'] / 1e3:.1f} s of CPU on ring's reductions"
                   + (f", {best['host_comm_ms'] / 1e3:.1f} s on host-best's" if best is not None else "")
                   + f" and {max(r['host_comm_ms'] for r in nic) / 1e3:.1f} s on the NIC paths.")
    sparse = [r for r in records if r["embedding_algo"] != r["layer_algo"]]
    for r in sparse:
        dense = next((d for d in records if d["algo"] == r["layer_algo"]), None)
        if dense is not None:
            out.append(f"`{r['algo']}` runs the block-sparse embedding AllReduce: "
                       f"{r['embedding_wire_bytes'] / 1e6:,.0f} MB on the wire against "
                       f"{dense['embedding_wire_bytes'] / 1e6:,.0f} MB dense "
                       f"({r['embedding_wire_bytes'] / dense['embedding_wire_bytes']:.2f}×), "
                       f"{r['embedding_comm_ms']:,.0f} ms against {dense['embedding_comm_ms']:,.0f} ms; its "
                       f"per-layer AllReduces run on `{r['layer_algo']}`.")
    if all(r.get("executor") == "mpi" for r in records):
        calls = sum(r["real_data_calls"] for r in records)
        checked = sum(r["checked_elements"] for r in records)
        wrong = sum(r["wrong"] or 0 for r in records)
        out.append(f"Real data on {records[0]['ranks']} ranks: {calls} distinct calls moved and checked "
                   f"{checked / 1e9:.1f} × 10⁹ elements against a float64 reference, {wrong} wrong.")
    return out


def write_page(results: Path, command: str) -> Path:
    """``results/serve.md`` from ``results/serve_llama3-70b_tp8.json``."""
    records = json.loads((results / f"{STEM}.json").read_text())
    r0 = records[0]
    about = (f"{r0['model']}, TP {r0['tp']} on `{r0['topology']}`, {r0['requests']} requests, accelerator "
             f"{r0['accelerator']}, profile {r0['profile']}, executor {r0['executor']} on {r0['ranks']} ranks "
             f"(`nicemu serve {' '.join(SERVE_ARGS)}`). Data: [JSON]({STEM}.json), "
             f"[per-request CSV]({STEM}_requests.csv).")
    body = [*table(records), "", f"![TTFT and TPOT CDFs per algorithm]({STEM}_cdf.png)"]
    path = results / "serve.md"
    path.write_text("\n".join(page(command, SCRIPT, about, body, findings(records))) + "\n")
    return path
