#!/usr/bin/env python3
"""Growth of the model executor's wall time with nodes x steps (issue 4: "no worse than linear").

Times one AllReduce per point with the model executor (``nicemu.collectives.model_time``,
float32) on 6D tori ``torus:k^6`` and flat rings ``ring:N``, for ``ring`` and
``directreduce``, and records the wall time against the work the schedule
describes: nodes x steps (every node takes part in every step, so this is the
number of transfers the executor processes). It then fits
``log(wall) = a + slope * log(nodes x steps)`` by least squares over the points
that take at least ``--fit-min-s`` (below that, fixed per-call costs dominate)
and draws wall time against nodes x steps on log-log axes, with the fit and a
slope-1 reference line.

    python scripts/growth_curve.py                       # k = 3..8, rings 64..4096, 1K and 1G, ~2 min
    python scripts/growth_curve.py --k 3,4 --rings 64,256 --sizes 1M --out /tmp/growth

Every point runs ``--repeats`` times and keeps the fastest run (the machine may
be shared: the minimum is the least disturbed measurement). Writes PREFIX.json,
PREFIX.md and PREFIX.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from nicemu.collectives import (
    build_schedule,  # noqa: E402
    model_time,  # noqa: E402
)
from nicemu.nic.profile import load_profile  # noqa: E402
from nicemu.sizes import format_size, parse_sizes  # noqa: E402
from nicemu.topologies import parse_topology  # noqa: E402

PROG = "growth_curve"
ITEMSIZE = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--k", default="3,4,5,6,7,8", help="6D torus sizes per dimension (default 3,4,5,6,7,8)")
    ap.add_argument("--rings", default="64,256,1024,4096", help="flat ring sizes (default 64,256,1024,4096)")
    ap.add_argument("--sizes", default="1K,1G", help="message sizes per node (default 1K,1G)")
    ap.add_argument("--algo", default="ring,directreduce")
    ap.add_argument("--profile", default="directreduce-paper")
    ap.add_argument("--repeats", type=int, default=2, help="runs per point, the fastest is kept (default 2)")
    ap.add_argument("--fit-min-s", type=float, default=0.01,
                    help="fit only points whose wall time is at least this (default 0.01 s)")
    ap.add_argument("--out", default="docs/results/growth_curve", help="output prefix")
    ap.add_argument("--from-json", metavar="FILE",
                    help="measure nothing: redo the fits, table and figure from an earlier run's PREFIX.json")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    return args


def topologies(args: argparse.Namespace) -> list[str]:
    tori = [f"torus:{int(k)}^6" for k in args.k.split(",") if k.strip()]
    rings = [f"ring:{int(n)}" for n in args.rings.split(",") if n.strip()]
    return tori + rings


def step_count(algo: str, topo, count: int) -> int:
    """Steps of the schedule (counted from the schedule itself, outside the timed run)."""
    return sum(1 for _ in build_schedule("allreduce", algo, topo, count).steps())


def measure(spec: str, algo: str, nbytes: int, profile, repeats: int) -> dict:
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


def fit(records: list[dict], min_s: float) -> tuple[float, float, int]:
    """(slope, intercept, points used) of log10(wall) against log10(nodes x steps)."""
    pts = [(r["nodes_x_steps"], r["wall_s"]) for r in records if r["wall_s"] >= min_s]
    if len({x for x, _ in pts}) < 2:       # a line needs two distinct sizes
        return float("nan"), float("nan"), len(pts)
    x = np.log10([p[0] for p in pts])
    y = np.log10([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept), len(pts)


def family_fits(records: list[dict], min_s: float) -> dict[str, tuple[float, float, int]]:
    """The fit over all points, over the tori only and over the flat rings only."""
    return {"all": fit(records, min_s),
            "tori": fit([r for r in records if r["topology"].startswith("torus")], min_s),
            "rings": fit([r for r in records if r["topology"].startswith("ring")], min_s)}


def markdown(records: list[dict], fits: dict[str, tuple[float, float, int]], min_s: float, load: str) -> str:
    lines = [f"Model executor wall time per AllReduce (fastest of the repeats); load average {load}.", "",
             "| topology | N | algo | M | steps | N x steps | wall (s) | µs per N x step |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['topology']} | {r['nodes']:,} | {r['algo']} | {r['size']} | {r['steps']:,} | "
                     f"{r['nodes_x_steps']:,} | {r['wall_s']:.3f} | "
                     f"{r['wall_s'] / r['nodes_x_steps'] * 1e6:.4f} |")
    lines += ["", f"Least-squares slope of log(wall) vs log(N x steps), points with wall >= {min_s:g} s "
              "(1 = linear):", ""]
    lines += [f"- {name}: **{slope:.3f}** over {used} points" for name, (slope, _, used) in fits.items()]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], slope: float, intercept: float, path: Path) -> None:
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


def run_sweep(args: argparse.Namespace) -> list[dict]:
    profile = load_profile(args.profile)
    sizes = parse_sizes(args.sizes)
    algos = [a.strip() for a in args.algo.split(",") if a.strip()]
    records = []
    for spec in topologies(args):
        for nbytes in sizes:
            for algo in algos:
                rec = measure(spec, algo, nbytes, profile, args.repeats)
                records.append(rec)
                print(f"{spec:>12} {algo:>12} {rec['size']:>5} steps {rec['steps']:>6} "
                      f"N*steps {rec['nodes_x_steps']:>12,} wall {rec['wall_s']:8.3f} s", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        records, load = saved["records"], saved["loadavg"]
    else:
        records = run_sweep(args)
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    fits = family_fits(records, args.fit_min_s)
    slope, intercept, used = fits["all"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"slope": slope, "intercept": intercept, "fit_points": used,
                                                    "fits": fits, "fit_min_s": args.fit_min_s, "loadavg": load,
                                                    "records": records}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(records, fits, args.fit_min_s, load))
    plot(records, slope, intercept, out.with_suffix(".png"))
    print("slopes: " + ", ".join(f"{name} {f[0]:.3f} ({f[2]} points)" for name, f in fits.items())
          + f"; wrote {out}.json, .md, .png", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
