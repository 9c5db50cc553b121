"""The DirectReduce paper's configurations with the model executor: host ring vs DirectReduce.

A ring of 8 nodes over 1 KiB .. 1 GiB, rings of 4, 16 and 64 nodes at 256 MiB,
and 6D tori of 3, 4, 6 and 8 nodes per dimension at the paper's four message
sizes; float32 AllReduce with the ``directreduce-paper`` profile.

    from nicemu.studies import paper_directreduce
    rows = paper_directreduce.sweep(load_profile("directreduce-paper"), full=False)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from nicemu.collectives import model_time
from nicemu.nic.profile import Profile, load_profile
from nicemu.report import write_plot, write_result_files
from nicemu.sizes import format_size
from nicemu.studies.pages import page
from nicemu.topologies import parse_topology

RING8_SIZES = [1 << e for e in range(10, 31, 2)]
PAPER_SIZES = [1 << 10, 1 << 18, 1 << 28, 1 << 30]
SCRIPT = "paper_directreduce"
#: the ring:8 figure, beside the page
FIGURE = "directreduce_ring8.png"


def configs(full: bool) -> list[tuple[str, int]]:
    """(topology, bytes per node) of every point; ``full`` adds torus:8^6 (262,144 nodes)."""
    out = [("ring:8", m) for m in RING8_SIZES]
    out += [(f"ring:{n}", 256 << 20) for n in (4, 16, 64)]
    tori = ["torus:3^6", "torus:4^6", "torus:6^6"] + (["torus:8^6"] if full else [])
    out += [(t, m) for t in tori for m in PAPER_SIZES]
    return out


def sweep(profile: Profile, full: bool = True, log: TextIO | None = sys.stderr) -> list[dict]:
    """One record per point: both algorithms' emulated times and DirectReduce's gain."""
    rows = []
    todo = configs(full)
    for i, (topo_spec, m) in enumerate(todo, 1):
        topo = parse_topology(topo_spec)
        t0 = time.perf_counter()
        ring = model_time("allreduce", "ring", topo, profile, m // 4).emulated_us
        dr = model_time("allreduce", "directreduce", topo, profile, m // 4).emulated_us
        rows.append({"topology": topo_spec, "nodes": topo.nodes, "bytes": m,
                     "bytes_per_node": m / topo.nodes, "ring_us": ring, "directreduce_us": dr,
                     "gain": 1 - dr / ring, "model_wall_s": time.perf_counter() - t0})
        if log is not None:
            print(f"[{i}/{len(todo)}] {topo_spec:<10} {format_size(m):>5}  ring {ring:14.3f} us  "
                  f"directreduce {dr:14.3f} us  gain {100 * (1 - dr / ring):6.2f}%", file=log)
    return rows


def _per_node(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def table(rows: Sequence[dict]) -> list[str]:
    lines = ["| topology | N | M | M/N (B) | ring (µs) | DirectReduce (µs) | gain |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['topology']} | {r['nodes']:,} | {format_size(r['bytes'])} | "
                     f"{_per_node(r['bytes_per_node'])} | {r['ring_us']:,.2f} | {r['directreduce_us']:,.2f} | "
                     f"{100 * r['gain']:.2f}% |")
    return lines


def findings(rows: Sequence[dict]) -> list[str]:
    """What the table shows, read from the rows themselves."""
    ring8 = [r for r in rows if r["topology"] == "ring:8"]
    big = [r for r in rows if r["bytes"] >= 256 << 20]
    small = [r for r in rows if r["bytes"] == 1 << 10]
    largest = max(rows, key=lambda r: r["nodes"])
    out = []
    if ring8:
        first_pos = next((r for r in ring8 if r["gain"] > 0), None)
        out.append(f"On ring:8 the gain grows with the message: {100 * ring8[0]['gain']:.1f}% at "
                   f"{format_size(ring8[0]['bytes'])}, {100 * ring8[-1]['gain']:.1f}% at "
                   f"{format_size(ring8[-1]['bytes'])}"
                   + (f"; DirectReduce is ahead from {format_size(first_pos['bytes'])} on." if first_pos else "."))
    if big:
        out.append(f"At 256 MiB and more the gain is {100 * min(r['gain'] for r in big):.1f}% to "
                   f"{100 * max(r['gain'] for r in big):.1f}% on every topology: bandwidth-bound, the host "
                   "ring's extra PCIe crossings and host reductions set the difference.")
    if small:
        out.append(f"At 1 KiB DirectReduce is {100 * -max(r['gain'] for r in small):.1f}% to "
                   f"{100 * -min(r['gain'] for r in small):.1f}% slower: the message is latency-bound, so the "
                   "bandwidth DirectReduce saves does not count.")
    out.append(f"The largest topology, {largest['topology']} ({largest['nodes']:,} nodes), keeps the same "
               f"picture: {100 * max(r['gain'] for r in rows if r['topology'] == largest['topology']):.1f}% "
               f"at {format_size(max(r['bytes'] for r in rows if r['topology'] == largest['topology']))}.")
    return out


def ring8_figure(path: str | Path, rows: Sequence[dict], profile_name: str) -> bool:
    """Latency and gain vs size on ring:8 (the bench plot's layout); False without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    ring8 = [r for r in rows if r["topology"] == "ring:8"]
    records = [{"algo": "ring", "bytes": r["bytes"], "emulated_us": r["ring_us"], "gain_vs_ring": None}
               for r in ring8]
    records += [{"algo": "directreduce", "bytes": r["bytes"], "emulated_us": r["directreduce_us"],
                 "gain_vs_ring": r["gain"]} for r in ring8]
    write_plot(str(path), records, f"allreduce on ring:8, profile {profile_name}")
    return True


def reproduce(out: str, profile_name: str = "directreduce-paper", overrides: Sequence[str] = (),
              full: bool = True, command: str = "") -> list[dict]:
    """Run the sweep, write ``out.{json,csv,md}`` and the ring:8 figure, print the table; returns the records."""
    rows = sweep(load_profile(profile_name, list(overrides)), full)
    figure = Path(out).parent / FIGURE
    drawn = ring8_figure(figure, rows, profile_name)
    about = ("host ring vs DirectReduce, float32 AllReduce, model executor, profile "
             f"{profile_name}{' (' + ', '.join(overrides) + ')' if overrides else ''}; gain = 1 − t_DR / t_ring. "
             f"Also writes {out}.json and {out}.csv" + (f", and the figure {figure}." if drawn else "."))
    body = ([f"![allreduce on ring:8: latency and DirectReduce's gain vs size]({FIGURE})", ""] if drawn else [])
    write_result_files(out, rows, page(command, SCRIPT, about, body + table(rows), findings(rows)))
    print("\n".join(table(rows)))
    return rows
