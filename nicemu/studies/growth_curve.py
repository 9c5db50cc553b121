"""Growth of the model executor's wall time with nodes x steps (it should be no worse than linear).

Times one float32 AllReduce per point with the model executor on 6D tori
``torus:k^6`` and flat rings ``ring:N`` and records the wall time against the
work the schedule describes: nodes x steps (every node takes part in every
step, so this is the number of transfers the executor processes). Then fits
``log(wall) = a + slope * log(nodes x steps)`` by least squares over the points
that take at least ``min_s`` (below that, fixed per-call costs dominate) and
draws wall time against nodes x steps on log-log axes, with the fit and a
slope-1 reference line. Every point runs ``repeats`` times and keeps the
fastest run (the machine may be shared: the minimum is the least disturbed).

    from nicemu.studies import growth_curve
    records = growth_curve.sweep(["torus:3^6", "ring:64"], ["ring", "directreduce"], [1024], profile, 2)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nicemu.collectives import build_schedule, model_time
from nicemu.nic.profile import Profile
from nicemu.sizes import format_size
from nicemu.studies.pages import page
from nicemu.topologies import parse_topology

ITEMSIZE = 4
SCRIPT = "growth_curve"
Fit = tuple[float, float, int]      # (slope, intercept, points used)


def step_count(algo: str, topo, count: int) -> int:
    """Steps of the schedule (counted from the schedule itself, outside the timed run)."""
    return sum(1 for _ in build_schedule("allreduce", algo, topo, count).steps())


def measure(spec: str, algo: str, nbytes: int, profile: Profile, repeats: int) -> dict:
    """The fastest of ``repeats`` model runs of one AllReduce, with its step count."""
    topo = parse_topology(spec)
    count = nbytes // ITEMSIZE
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        timing = model_time("allreduce", algo, topo, profile, count, "float32")
        walls.append(time.perf_counter() - t0)
    steps = step_count(algo, topo, count)
    return {"topology": spec, "nodes": topo.nodes, "algo": algo, "bytes": nbytes, "size": format_size(nbytes),
            "steps": steps, "nodes_x_steps": topo.nodes * steps, "wall_s": min(walls), "walls_s": walls,
            "emulated_us": float(timing.emulated_us)}


def sweep(topologies: Sequence[str], algos: Sequence[str], sizes: Sequence[int], profile: Profile,
          repeats: int) -> list[dict]:
    """Every (topology, size, algorithm), printing one line per point."""
    records = []
    for spec in topologies:
        for nbytes in sizes:
            for algo in algos:
                rec = measure(spec, algo, nbytes, profile, repeats)
                records.append(rec)
                print(f"{spec:>12} {algo:>12} {rec['size']:>5} steps {rec['steps']:>6} "
                      f"N*steps {rec['nodes_x_steps']:>12,} wall {rec['wall_s']:8.3f} s", flush=True)
    return records


def fit(records: Sequence[dict], min_s: float) -> Fit:
    """(slope, intercept, points used) of log10(wall) against log10(nodes x steps)."""
    pts = [(r["nodes_x_steps"], r["wall_s"]) for r in records if r["wall_s"] >= min_s]
    if len({x for x, _ in pts}) < 2:       # a line needs two distinct sizes
        return float("nan"), float("nan"), len(pts)
    x = np.log10([p[0] for p in pts])
    y = np.log10([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept), len(pts)


def family_fits(records: Sequence[dict], min_s: float) -> dict[str, Fit]:
    """The fit over all points, over the tori only and over the flat rings only."""
    return {"all": fit(records, min_s),
            "tori": fit([r for r in records if r["topology"].startswith("torus")], min_s),
            "rings": fit([r for r in records if r["topology"].startswith("ring")], min_s)}


def table(records: Sequence[dict]) -> list[str]:
    lines = ["| topology | N | algo | M | steps | N x steps | wall (s) | µs per N x step |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['topology']} | {r['nodes']:,} | {r['algo']} | {r['size']} | {r['steps']:,} | "
                     f"{r['nodes_x_steps']:,} | {r['wall_s']:.3f} | "
                     f"{r['wall_s'] / r['nodes_x_steps'] * 1e6:.4f} |")
    return lines


def markdown(records: Sequence[dict], fits: dict[str, Fit], min_s: float, load: str, command: str,
             figure: str) -> str:
    """The result page: command, figure and table, then the fitted slopes."""
    about = (f"model executor wall time per float32 AllReduce (fastest of the repeats), load average {load} "
             f"during the run; also writes {Path(figure).with_suffix('.json').name} with every record.")
    body = [f"![Model executor wall time vs nodes × steps]({Path(figure).name})", "", *table(records)]
    shows = ["The least-squares slope of log(wall) against log(N × steps), over the points with wall ≥ "
             f"{min_s:g} s, is " + ", ".join(f"{name} **{slope:.3f}** ({used} points)"
                                           for name, (slope, _, used) in fits.items())
             + "; 1 would be linear."]
    per = [r["wall_s"] / r["nodes_x_steps"] * 1e6 for r in records if r["wall_s"] >= min_s]
    if per:
        shows.append(f"Over those points the executor spends {min(per):.3f} to {max(per):.3f} µs per node and step.")
    return "\n".join(page(command, SCRIPT, about, body, shows)) + "\n"


def plot(records: Sequence[dict], slope: float, intercept: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"ring": "o", "directreduce": "s"}
    for family, colour in (("torus", "tab:blue"), ("ring", "tab:orange")):
        for algo, marker in markers.items():
            pts = [r for r in records if r["topology"].startswith(family) and r["algo"] == algo]
            if pts:
                ax.scatter([r["nodes_x_steps"] for r in pts], [r["wall_s"] for r in pts], marker=marker,
                           facecolors="none" if algo == "ring" else colour, edgecolors=colour,
                           label=f"{family}, {algo}")
    xs = np.array([min(r["nodes_x_steps"] for r in records), max(r["nodes_x_steps"] for r in records)],
                  dtype=float)
    if np.isfinite(slope):
        ax.plot(xs, 10 ** intercept * xs ** slope, "k-", lw=1, label=f"fit: slope {slope:.2f}")
        mid = np.sqrt(xs[0] * xs[1])
        ax.plot(xs, 10 ** (intercept + slope * np.log10(mid)) * xs / mid, "k:", lw=1, label="slope 1 (linear)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes × steps (transfers in the schedule)")
    ax.set_ylabel("model executor wall time per AllReduce (s)")
    ax.set_title("Model executor: wall time vs nodes × steps")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(records: list[dict], out: str | Path, min_s: float, load: str, command: str) -> dict[str, Fit]:
    """Fit, and write ``out.json`` (with the command, so a refit from it keeps it), ``out.md`` and
    ``out.png``; prints the slopes."""
    fits = family_fits(records, min_s)
    slope, intercept, used = fits["all"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"slope": slope, "intercept": intercept, "fit_points": used,
                                                    "fits": fits, "fit_min_s": min_s, "loadavg": load,
                                                    "command": command, "records": records}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(records, fits, min_s, load, command, str(out.with_suffix(".png"))))
    plot(records, slope, intercept, out.with_suffix(".png"))
    print("slopes: " + ", ".join(f"{name} {f[0]:.3f} ({f[2]} points)" for name, f in fits.items())
          + f"; wrote {out}.json, .md, .png", flush=True)
    return fits


def run(topologies: Sequence[str], algos: Sequence[str], sizes: Sequence[int], profile: Profile, repeats: int,
        out: str | Path, min_s: float, command: str) -> dict[str, Fit]:
    """Measure every point, then :func:`report`."""
    records = sweep(topologies, algos, sizes, profile, repeats)
    return report(records, out, min_s, " ".join(f"{x:.2f}" for x in os.getloadavg()), command)


def refit(saved_json: str | Path, out: str | Path, min_s: float, command: str) -> dict[str, Fit]:
    """Measure nothing: redo the fits, page and figure of an earlier run (keeping its command if saved)."""
    saved = json.loads(Path(saved_json).read_text())
    return report(saved["records"], out, min_s, saved["loadavg"], saved.get("command", command))
