"""The OmNICCL comparison with the model executor: the sparse algorithms over block density.

128 MiB float32 per node on 8 nodes, block sparsity 0, 25, 50 and 75% (the
range where OmNICCL reports its NIC aggregator modestly faster than a CPU one)
and 90, 95, 98 and 99%, with random and all-overlapping block placement. Every
sparse algorithm of the registry runs, and OmNICCL once more without double
buffering (``tx_spots=1``), with the ``omniccl-paper`` profile. Two dense
baselines: ``ring`` (unsegmented, store-and-forward) and ``host-best`` (the
fastest host algorithm for this size and topology); every sparse algorithm's
speedup is reported over both.

    from nicemu.studies import paper_omniccl
    rows = paper_omniccl.sweep("sweeps/paper_omniccl.yml", overlaps=["random"], densities=[0.1])

The points are the grid ``sweeps/paper_omniccl.yml``, run as ``nicemu sweep`` runs
it; this module turns the records into the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nicemu import sweep as grid_sweep
from nicemu.collectives import names
from nicemu.grid import load_grid
from nicemu.report import write_result_files
from nicemu.studies.pages import page

#: block densities: sparsity 0, 25, 50, 75% and 90, 95, 98, 99%
DENSITIES = [1.0, 0.75, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01]
#: sparsity ranges the page's findings read separately: (name, lowest, highest sparsity)
BANDS = (("25–75% sparsity", 0.25, 0.75), ("90–99% sparsity", 0.9, 0.99))
PROFILE = "omniccl-paper"
#: the points of the study (relative to the repository root)
GRID = "sweeps/paper_omniccl.yml"
SCRIPT = "paper_omniccl"


def variants() -> list[tuple[str, str, dict]]:
    """(label, algorithm, options): every sparse algorithm, and OmNICCL once more with one Tx spot."""
    out = []
    for algo in names(kind="sparse"):
        out.append((algo, algo, {}))
        if algo == "omniccl":
            out.append(("omniccl tx1", algo, {"tx_spots": 1}))
    return out


def points(grid: str | Path = GRID, nodes: int | None = None, nbytes: int | None = None,
           overlaps: Sequence[str] | None = None, densities: Sequence[float] | None = None) -> list[dict]:
    """The grid's points; ``nodes`` and ``nbytes`` replace its ring and size, ``overlaps`` and ``densities``
    keep only those of its sparse points."""
    out = []
    for p in load_grid(str(grid)).points():
        if overlaps is not None and "overlap" in p and p["overlap"] not in overlaps:
            continue
        if densities is not None and "density" in p and p["density"] not in densities:
            continue
        p = dict(p)
        if nodes is not None:
            p["topology"] = f"ring:{nodes}"
        if nbytes is not None:
            p["bytes"] = nbytes
        out.append(p)
    return out


def _label(r: dict) -> str:
    return r["algo"] + (" tx1" if r.get("tx_spots") == 1 else "")


def rows_of(records: Sequence[dict]) -> list[dict]:
    """One row per (overlap, density): the dense baselines' times (``ring``, ``host-best`` and the host
    algorithm it picked), and each variant's time, wire bytes and speedups (baseline time over its time)."""
    sparse = set(names(kind="sparse"))
    dense = {r["algo"]: r for r in records if r["algo"] not in sparse}
    ring, best = dense["ring"]["emulated_us"], dense["host-best"]
    order = [label for label, _, _ in variants()]
    found: dict[tuple, dict[str, dict]] = {}
    for r in records:
        if r["algo"] in sparse:
            found.setdefault((r["overlap"], r["density"]), {})[_label(r)] = r
    rows = []
    for (overlap, d), by_label in found.items():
        row = {"overlap": overlap, "density": d, "sparsity": round(1.0 - d, 6), "ring_us": ring,
               "host_best_us": best["emulated_us"], "host_best_algo": best["best_host_algo"]}
        for label in sorted(by_label, key=order.index):
            t = by_label[label]
            row[f"{label}_us"] = t["emulated_us"]
            row[f"{label}_wire_bytes"] = t["wire_bytes"]
            row[f"{label}_speedup_vs_ring"] = ring / t["emulated_us"]
            row[f"{label}_speedup_vs_host_best"] = best["emulated_us"] / t["emulated_us"]
        if "omniccl_us" in row and "omniccl-cpu_us" in row:
            row["nic_over_cpu"] = row["omniccl-cpu_us"] / row["omniccl_us"]
        rows.append(row)
    return rows


def sweep(grid: str | Path = GRID, nodes: int | None = None, nbytes: int | None = None,
          overlaps: Sequence[str] | None = None, densities: Sequence[float] | None = None,
          jobs: int | None = None, progress: bool = False) -> list[dict]:
    """Run the grid's points on the model executor (as ``nicemu sweep`` does) and return the study's rows."""
    return rows_of(grid_sweep.records(points(grid, nodes, nbytes, overlaps, densities), jobs, progress))


def _sparse(rows: Sequence[dict]) -> list[str]:
    """The sparse algorithms the rows hold (registry order)."""
    return [a for a in names(kind="sparse") if rows and f"{a}_us" in rows[0]]


def _pct(sparsity: float) -> str:
    return f"{100 * sparsity:g}%"


def table(rows: Sequence[dict]) -> list[str]:
    """Two tables: emulated times, then speedups over the dense baselines."""
    algos = _sparse(rows)
    times = ["Emulated times (µs); `host-best` names the host algorithm it ran; NIC over CPU is omniccl-cpu's "
             "time over omniccl's; tx-spots 1 is omniccl with one Tx spot, against omniccl:", "",
             "| overlap | sparsity | density | ring | host-best | " + " | ".join(algos)
             + " | NIC over CPU | tx-spots 1 |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(algos) + "---:|---:|"]
    for r in rows:
        times.append(
            f"| {r['overlap']} | {_pct(r['sparsity'])} | {r['density']:g} | {r['ring_us']:,.0f} | "
            f"{r['host_best_us']:,.0f} ({r['host_best_algo']}) | "
            + " | ".join(f"{r[f'{a}_us']:,.0f}" for a in algos)
            + f" | {r['nic_over_cpu']:.3f}× | {100 * (r['omniccl tx1_us'] / r['omniccl_us'] - 1):+.2f}% |")
    speed = ["Speedups (the baseline's time over the algorithm's; below 1× the sparse algorithm is slower):", "",
             "| overlap | sparsity | " + " | ".join(f"{a} vs ring | {a} vs host-best" for a in algos)
             + " | omniccl vs omnireduce |",
             "|---|---:|" + "---:|---:|" * len(algos) + "---:|"]
    for r in rows:
        speed.append(
            f"| {r['overlap']} | {_pct(r['sparsity'])} | "
            + " | ".join(f"{r[f'{a}_speedup_vs_ring']:.2f}× | {r[f'{a}_speedup_vs_host_best']:.2f}×" for a in algos)
            + f" | {r['omnireduce_us'] / r['omniccl_us']:.2f}× |")
    return [*times, "", *speed]


def _span(values: Sequence[float], fmt: str = ".2f", unit: str = "×") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}{unit}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}{unit} to {hi:{fmt}}{unit}"


def _and(words: Sequence[str]) -> str:
    """'a, b and c'."""
    return (", ".join(words[:-1]) + " and " if len(words) > 1 else "") + words[-1]


def _where(rows: Sequence[dict]) -> str:
    """The sparsities of ``rows``, as '0, 25 and 50%'."""
    return _and([f"{100 * r['sparsity']:g}" for r in rows]) + "%"


def _against_best(rows: Sequence[dict], algo: str) -> str:
    """``algo`` against host-best over ``rows``: the speedup range and where it is slower or faster."""
    sp = [r[f"{algo}_speedup_vs_host_best"] for r in rows]
    slower = [r for r, s in zip(rows, sp) if s < 1]
    every = "" if len(rows) == 1 else " at every sparsity"
    if not slower:
        verdict = "faster" + every
    elif len(slower) == len(rows):
        verdict = "slower" + every
    else:
        verdict = f"slower at {_where(slower)} sparsity, faster at {_where([r for r in rows if r not in slower])}"
    return f"{algo} {_span(sp)} ({verdict})"


def findings(rows: Sequence[dict]) -> list[str]:
    """What the tables show, read from the rows themselves."""
    out = []
    algos = _sparse(rows)
    overlaps = list(dict.fromkeys(r["overlap"] for r in rows))
    picked = ", ".join(dict.fromkeys(r["host_best_algo"] for r in rows))
    ring, best = rows[0]["ring_us"], rows[0]["host_best_us"]
    out.append(f"Dense baselines: `host-best` runs {picked} in {best:,.0f} µs, {ring / best:.2f}× the speed of "
               f"`ring` ({ring:,.0f} µs, unsegmented store-and-forward); every speedup is given over both.")
    for overlap in overlaps:
        mine = [r for r in rows if r["overlap"] == overlap]
        lo, hi = min(mine, key=lambda r: r["density"]), max(mine, key=lambda r: r["density"])
        out.append(f"{overlap} placement: omniccl runs {hi['omniccl_speedup_vs_ring']:.2f}× the ring's speed "
                   f"({hi['omniccl_speedup_vs_host_best']:.2f}× host-best's) at {_pct(hi['sparsity'])} sparsity "
                   f"and {lo['omniccl_speedup_vs_ring']:.2f}× ({lo['omniccl_speedup_vs_host_best']:.2f}×) at "
                   f"{_pct(lo['sparsity'])}: the fewer non-zero blocks, the less crosses the links.")
    for name, lo_s, hi_s in BANDS:
        for overlap in overlaps:
            band = [r for r in rows if r["overlap"] == overlap and lo_s <= r["sparsity"] <= hi_s]
            if not band:
                continue
            cpu = [r["omniccl-cpu_us"] for r in band]
            nic = [r["omniccl_us"] for r in band]
            out.append(f"{name}, {overlap} placement: the NIC aggregator (omniccl, "
                       f"{_span(nic, ',.0f', ' µs')}) is {_span([r['nic_over_cpu'] for r in band], '.3f')} "
                       f"as fast as the CPU one (omniccl-cpu, {_span(cpu, ',.0f', ' µs')}). Against "
                       f"`host-best`: " + "; ".join(_against_best(band, a) for a in algos) + ".")
    losses, never = [], []
    for algo in algos:
        lost = False
        for base, key in (("host-best", "host_best"), ("ring", "ring")):
            slow = [(overlap, [r for r in rows if r["overlap"] == overlap and r[f"{algo}_speedup_vs_{key}"] < 1])
                    for overlap in overlaps]
            slow = [f"{_where(s)} sparsity ({overlap})" for overlap, s in slow if s]
            if slow:
                losses.append(f"{algo} is slower than `{base}` at " + " and ".join(slow))
                lost = True
        if not lost:
            never.append(algo)
    out.append("Where a sparse algorithm loses to a dense baseline: " + ("; ".join(losses) if losses else "nowhere")
               + (f"; {_and(never)} beat{'s' if len(never) == 1 else ''} both at every point"
                  if never else "") + ".")
    tx1 = [100 * (r["omniccl tx1_us"] / r["omniccl_us"] - 1) for r in rows]
    cpu = [100 * (r["nic_over_cpu"] - 1) for r in rows]
    orr = [r["omnireduce_us"] / r["omniccl_us"] for r in rows]
    out.append(f"One Tx spot instead of two (no double buffering) costs {min(tx1):+.2f}% to {max(tx1):+.2f}%.")
    out.append(f"Over the whole sweep, aggregating on the host CPU instead of the NIC (omniccl-cpu) is "
               f"{min(cpu):.1f}% to {max(cpu):.1f}% slower.")
    out.append(f"OmNICCL's gain over OmniReduce (its time over OmNICCL's) is {min(orr):.2f}× to {max(orr):.2f}×"
               + (" (below 1: OmniReduce is faster)" if min(orr) < 1 else "") + ". OmniReduce's N dedicated "
               "aggregators bring N more machines and links, and its polling threads keep those links busy "
               "(docs/model.md §10.6).")
    return out


def page_lines(out: str, rows: Sequence[dict], command: str, nodes: int = 8, nbytes: int = 128 << 20) -> list[str]:
    """The Markdown page of ``rows`` as written to ``out.md``, first line the ``command`` that made them."""
    about = (f"{nbytes >> 20} MiB float32 AllReduce per node on {nodes} nodes, model executor, profile "
             f"{PROFILE}, 256-element blocks, sparsity = 1 − block density. Also writes {out}.json and "
             f"{out}.csv (one record per overlap and density; times in µs, speedups as ratios).")
    return page(command, SCRIPT, about, table(rows), findings(rows))


def reproduce(out: str, nodes: int | None = None, nbytes: int | None = None, overlaps: Sequence[str] | None = None,
              densities: Sequence[float] | None = None, command: str = "", grid: str | Path = GRID,
              jobs: int | None = None, progress: bool = False) -> list[dict]:
    """Run the grid, write ``out.{json,csv,md}`` and print the tables; returns the rows."""
    pts = points(grid, nodes, nbytes, overlaps, densities)
    rows = rows_of(grid_sweep.records(pts, jobs, progress))
    write_result_files(out, rows, page_lines(out, rows, command, int(pts[0]["topology"].split(":")[1]),
                                             pts[0]["bytes"]))
    print("\n".join(table(rows)))
    return rows
