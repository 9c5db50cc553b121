"""What telemetry shows on a 6-D torus, and what it costs: docs/results/telemetry.md.

Three parts, all on the model executor:

1. the link heatmap of ``--plot-links`` (ring and Rabenseifner on ``torus:4x4x4``);
2. the per-dimension link summary of ring and DirectReduce on a large torus (which
   dimension is the bottleneck, and how busy it is);
3. the cost of watching: one call timed without telemetry, with the statistics
   (what ``--link-summary`` computes) and with the full ``--link-stats`` JSON file
   written, alternating in one process so that the machine's load hits all three
   alike; the fastest of ``repeats`` CPU times is kept.

    from nicemu.studies import telemetry_cost
    rows = telemetry_cost.cost("torus:4^6", ["ring"], 1 << 20, load_profile("directreduce-paper"), 1, "/tmp")
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from nicemu import link_report
from nicemu.collectives import model_time
from nicemu.nic.profile import Profile
from nicemu.sizes import format_size
from nicemu.studies.pages import page

SCRIPT = "telemetry_cost"
ITEMSIZE = 4


def _cpu(fn) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def _one(topology: str, algo: str, nbytes: int, profile: Profile, mode: str, scratch: str):
    """One call in ``mode``: off, summary (statistics and summary) or file (the JSON of every link too)."""
    t = model_time("allreduce", algo, topology, profile, nbytes // ITEMSIZE, telemetry=mode != "off")
    if mode != "off":
        t.telemetry.summary()
    if mode == "file":
        link_report.write_link_stats(os.path.join(scratch, "links.json"),
                                     [{"algo": algo, "bytes": nbytes, "stats": t.telemetry}])
    return t


def cost(topology: str, algos: Sequence[str], nbytes: int, profile: Profile, repeats: int, scratch: str,
         progress=print) -> list[dict]:
    """Per algorithm: CPU seconds of the call without telemetry, with statistics and summary, and with the
    JSON file written too (fastest of ``repeats``), and the file's size."""
    rows = []
    for algo in algos:
        best = {"off": float("inf"), "summary": float("inf"), "file": float("inf")}
        size = 0
        for rep in range(repeats):
            for mode in ("off", "summary", "file"):
                seconds, timing = _cpu(lambda m=mode, a=algo: _one(topology, a, nbytes, profile, m, scratch))
                best[mode] = min(best[mode], seconds)
                progress(f"{algo} {mode} run {rep + 1}/{repeats}: {seconds:.2f} s CPU")
                if mode == "file":
                    size = os.path.getsize(os.path.join(scratch, "links.json"))
                    os.remove(os.path.join(scratch, "links.json"))
        rows.append({"topology": topology, "algo": algo, "bytes": nbytes, "emulated_us": timing.emulated_us,
                     "off_s": best["off"], "summary_s": best["summary"], "file_s": best["file"],
                     "file_bytes": size, "summary_ratio": best["summary"] / best["off"],
                     "file_ratio": best["file"] / best["off"]})
    return rows


def summaries(topology: str, algos: Sequence[str], nbytes: int, profile: Profile) -> list[dict]:
    """The per-dimension link summary of each algorithm (no file)."""
    out = []
    for algo in algos:
        t = model_time("allreduce", algo, topology, profile, nbytes // ITEMSIZE, telemetry=True)
        out.append({"algo": algo, "emulated_us": t.emulated_us, "summary": t.telemetry.summary(),
                    "resources": link_report.resource_summary(t.telemetry)})
    return out


def heatmap(path: str, profile: Profile) -> None:
    """The picture in docs/usage.md: ring and Rabenseifner on torus:4x4x4, 64 MiB."""
    entries = []
    for algo in ("ring", "rabenseifner"):
        t = model_time("allreduce", algo, "torus:4x4x4", profile, (64 << 20) // ITEMSIZE, telemetry=True)
        entries.append({"algo": algo, "bytes": 64 << 20, "size": "64M", "stats": t.telemetry})
    link_report.plot_links(path, entries)


def write_page(out: str, topology: str, nbytes: int, profile: Profile, cost_rows: list[dict],
               summary_rows: list[dict], command: str) -> Path:
    stem = Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"cost": cost_rows, "summaries": summary_rows}, indent=1) + "\n")
    size = format_size(nbytes)
    body = [f"Profile `{profile.name}`, float32 AllReduce of {size} per node on `{topology}`, model executor.", "",
            "**Where the links are busy.** Per dimension and direction that carried bytes: the links' "
            "utilisation (busy time over the call's emulated time).", "",
            "| algo | emulated (µs) | dim | dir | bytes | util min | util mean | util max |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary_rows:
        for s in r["summary"]:
            if s["bytes"]:
                body.append(f"| `{r['algo']}` | {r['emulated_us']:,.1f} | {s['dim']} | {s['dir']:+d} | "
                            f"{s['bytes']:,} | {100 * s['util_min']:.1f}% | {100 * s['util_mean']:.1f}% | "
                            f"{100 * s['util_max']:.1f}% |")
    body += ["", "The busiest node's resources (utilisation):", "",
             "| algo | PCIe read | PCIe write | NIC engine | host CPU | DRAM |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in summary_rows:
        res = r["resources"]
        body.append(f"| `{r['algo']}` | " + " | ".join(f"{100 * res[k]['util_max']:.1f}%" for k in
                                                       ("pcie_read", "pcie_write", "nic", "host", "dram")) + " |")
    body += ["", "**What watching costs.** CPU seconds of one call, fastest of the repeats, the three modes "
             "alternating in one process: without telemetry; with the statistics and the per-dimension summary "
             "(`--link-summary`); and with the full `--link-stats` JSON written too.", "",
             "| algo | off (s) | statistics (s) | ratio | with the JSON file (s) | ratio | file size |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in cost_rows:
        body.append(f"| `{r['algo']}` | {r['off_s']:.2f} | {r['summary_s']:.2f} | {r['summary_ratio']:.2f}× | "
                    f"{r['file_s']:.2f} | {r['file_ratio']:.2f}× | {r['file_bytes'] / 1e6:,.0f} MB |")
    body += ["", "![link utilisation of ring and rabenseifner on torus:4x4x4, 64 MiB](link_heatmap.png)", "",
             "The heatmaps: link utilisation per dimension and direction over the nodes whose third coordinate "
             "is 0 (`--plot-links` draws the same from a bench run)."]
    lines = page(command, SCRIPT, "the per-dimension link summary, the cost of telemetry, and the link heatmap.",
                 body, _shows(summary_rows, cost_rows))
    path = stem.with_suffix(".md")
    path.write_text("\n".join(lines) + "\n")
    return path


def _shows(summary_rows: list[dict], cost_rows: list[dict]) -> list[str]:
    out = []
    for r in summary_rows:
        used = [s for s in r["summary"] if s["bytes"]]
        if used:
            top = max(used, key=lambda s: s["util_max"])
            low = min(used, key=lambda s: s["util_max"])
            out.append(f"`{r['algo']}`: the busiest links are in dimension {top['dim']} (direction "
                       f"{top['dir']:+d}) at {100 * top['util_max']:.1f}%, the idlest used ones in dimension "
                       f"{low['dim']} at {100 * low['util_max']:.1f}%.")
    for r in cost_rows:
        out.append(f"`{r['algo']}`: the statistics cost {r['summary_ratio']:.2f}× the call without them; the "
                   f"JSON file of every link {r['file_ratio']:.2f}× ({r['file_bytes'] / 1e6:,.0f} MB), which is "
                   "why the summary is in the table and the file is optional.")
    return out
