"""The DirectReduce paper's configurations with the model executor: host ring vs DirectReduce.

A ring of 8 nodes over 1 KiB .. 1 GiB, rings of 4, 16 and 64 nodes at 256 MiB,
and 6D tori of 3, 4, 6 and 8 nodes per dimension at the paper's four message
sizes; float32 AllReduce with the ``directreduce-paper`` profile, for plain
``directreduce`` and ``directreduce-pipelined`` (docs/model.md §4.6; not at
torus:8^6 with 1 GiB, whose schedule is over the model's limit of transfers). The points are
the grid ``sweeps/paper_directreduce.yml``, run as ``nicemu sweep`` runs it; this
module turns the records into the page.

    from nicemu.studies import paper_directreduce
    rows = paper_directreduce.sweep("sweeps/paper_directreduce.yml", full=False)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nicemu import sweep as grid_sweep
from nicemu.grid import load_grid
from nicemu.report import write_plot, write_result_files
from nicemu.sizes import format_size
from nicemu.studies.pages import page

SCRIPT = "paper_directreduce"
#: the points of the study (relative to the repository root)
GRID = "sweeps/paper_directreduce.yml"
#: the ring:8 figure, beside the page
FIGURE = "directreduce_ring8.png"
#: the topology --quick leaves out (262,144 nodes)
LARGEST = "torus:8^6"
#: the pipelined variant and the row key of its time
PIPELINED, PIPELINED_KEY = "directreduce-pipelined", "pipelined_us"


def points(grid: str | Path = GRID, profile_name: str = "directreduce-paper", overrides: Sequence[str] = (),
           full: bool = True) -> list[dict]:
    """The grid's points with ``profile_name`` and the ``--set`` overrides (as ``set`` columns) on each;
    ``full`` keeps torus:8^6."""
    sets = dict(o.split("=", 1) for o in overrides)
    out = []
    for p in load_grid(str(grid)).points():
        if full or p.get("topology") != LARGEST:
            out.append({**p, "profile": profile_name, **sets})
    return out


def rows_of(records: Sequence[dict]) -> list[dict]:
    """One row per (topology, size): the algorithms' emulated times and the gains over the ring
    (``pipelined_us`` and ``pipelined_gain`` are None where the grid does not time the pipelined variant)."""
    rows: dict[tuple, dict] = {}
    for r in records:
        row = rows.setdefault((r["topology"], r["bytes"]), {
            "topology": r["topology"], "nodes": r["nodes"], "bytes": r["bytes"],
            "bytes_per_node": r["bytes"] / r["nodes"], PIPELINED_KEY: None})
        row[PIPELINED_KEY if r["algo"] == PIPELINED else f"{r['algo']}_us"] = r["emulated_us"]
    for row in rows.values():
        row["gain"] = 1 - row["directreduce_us"] / row["ring_us"]
        t = row[PIPELINED_KEY]
        row["pipelined_gain"] = None if t is None else 1 - t / row["ring_us"]
    return list(rows.values())


def sweep(grid: str | Path = GRID, profile_name: str = "directreduce-paper", overrides: Sequence[str] = (),
          full: bool = True, jobs: int | None = None, progress: bool = False) -> list[dict]:
    """Run the grid on the model executor (as ``nicemu sweep``) and return the study's rows."""
    return rows_of(grid_sweep.records(points(grid, profile_name, overrides, full), jobs, progress))


def _per_node(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def table(rows: Sequence[dict]) -> list[str]:
    lines = ["| topology | N | M | M/N (B) | ring (µs) | DirectReduce (µs) | gain | pipelined (µs) | gain |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        piped = ("— | —" if r[PIPELINED_KEY] is None
                 else f"{r[PIPELINED_KEY]:,.2f} | {100 * r['pipelined_gain']:.2f}%")
        lines.append(f"| {r['topology']} | {r['nodes']:,} | {format_size(r['bytes'])} | "
                     f"{_per_node(r['bytes_per_node'])} | {r['ring_us']:,.2f} | {r['directreduce_us']:,.2f} | "
                     f"{100 * r['gain']:.2f}% | {piped} |")
    return lines


def findings_pipelined(rows: Sequence[dict]) -> list[str]:
    """What the pipelined variant shows beside plain DirectReduce, read from the rows."""
    timed = [r for r in rows if r[PIPELINED_KEY] is not None]
    if not timed:
        return []
    vs = [(1 - r[PIPELINED_KEY] / r["directreduce_us"], r) for r in timed]
    lo, hi = min(vs, key=lambda x: x[0]), max(vs, key=lambda x: x[0])
    out = [f"`directreduce-pipelined` (model.md §4.6) gains {100 * min(r['pipelined_gain'] for r in timed):.1f}% "
           f"to {100 * max(r['pipelined_gain'] for r in timed):.1f}% over the ring. Against plain DirectReduce "
           f"it is {100 * lo[0]:+.1f}% ({lo[1]['topology']}, {format_size(lo[1]['bytes'])}) to "
           f"{100 * hi[0]:+.1f}% ({hi[1]['topology']}, {format_size(hi[1]['bytes'])})"
           + (": it never beats plain DirectReduce here. It can only where plain DirectReduce's chunks outgrow "
              "the NIC memory and PCIe cannot carry their read-back beside the operands at line rate; otherwise "
              "every extra group of segments adds a latency." if hi[0] <= 0 else
              "; it gains where plain DirectReduce's chunks outgrow the NIC memory and PCIe cannot carry their "
              "read-back beside the operands at line rate.")]
    left = [r for r in rows if r[PIPELINED_KEY] is None]
    if left:
        out.append("Not timed for `directreduce-pipelined`: " + ", ".join(
            f"{r['topology']} at {format_size(r['bytes'])}" for r in left)
            + ": its segments, sized to the NIC memory, would make more transfers than the model "
            "executor's limit of 2**30.")
    return out


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
    return out + findings_pipelined(rows)


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
    records += [{"algo": PIPELINED, "bytes": r["bytes"], "emulated_us": r[PIPELINED_KEY],
                 "gain_vs_ring": r["pipelined_gain"]} for r in ring8 if r[PIPELINED_KEY] is not None]
    write_plot(str(path), records, f"allreduce on ring:8, profile {profile_name}")
    return True


def reproduce(out: str, profile_name: str = "directreduce-paper", overrides: Sequence[str] = (),
              full: bool = True, command: str = "", grid: str | Path = GRID, jobs: int | None = None,
              progress: bool = False) -> list[dict]:
    """Run the grid, write ``out.{json,csv,md}`` and the ring:8 figure, print the table; returns the rows."""
    rows = sweep(grid, profile_name, overrides, full, jobs, progress)
    figure = Path(out).parent / FIGURE
    drawn = ring8_figure(figure, rows, profile_name)
    about = ("host ring vs DirectReduce (`directreduce`, and `directreduce-pipelined` as \"pipelined\"), float32 "
             f"AllReduce, model executor, profile {profile_name}"
             f"{' (' + ', '.join(overrides) + ')' if overrides else ''}; gain = 1 − t / t_ring. "
             f"Also writes {out}.json and {out}.csv" + (f", and the figure {figure}." if drawn else "."))
    body = ([f"![allreduce on ring:8: latency and the gains of DirectReduce and its pipelined variant vs size]"
             f"({FIGURE})", ""] if drawn else [])
    write_result_files(out, rows, page(command, SCRIPT, about, body + table(rows), findings(rows)))
    print("\n".join(table(rows)))
    return rows
