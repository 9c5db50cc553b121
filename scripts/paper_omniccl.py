#!/usr/bin/env python3
"""Reproduce the OmNICCL comparison with the model executor.

128 MiB float32 per node on 8 nodes, block sparsity 0, 25, 50, 75% and
90, 95, 98, 99% (densities 1 … 0.01), random and all-overlapping block
placement, for the dense baselines ring and host-best, every sparse algorithm
(and omniccl with --tx-spots 1), with the `omniccl-paper` profile: the grid
sweeps/paper_omniccl.yml, run as `nicemu sweep` does. Writes JSON, CSV and a
Markdown page (nicemu.studies.paper_omniccl turns the records into the page).

    python scripts/paper_omniccl.py --out docs/results/paper_omniccl
"""

from __future__ import annotations

import argparse
import sys

from nicemu.studies import paper_omniccl
from nicemu.studies.pages import guarded, script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/paper_omniccl")
    ap.add_argument("--grid", default=paper_omniccl.GRID, help="the grid of points")
    ap.add_argument("--nodes", type=int, default=None, help="replace the grid's ring:8 with ring:NODES")
    ap.add_argument("--size", type=int, default=None, help="replace the grid's bytes per node")
    ap.add_argument("--overlaps", default=None, help="keep only these block placements of the grid (comma list)")
    ap.add_argument("--densities", default=None, help="keep only these densities of the grid (comma list)")
    ap.add_argument("--jobs", type=int, default=None, help="processes sharing the points (default: the CPUs)")
    ap.add_argument("--progress", action="store_true", help="show the progress bar")
    args = ap.parse_args(argv)
    overlaps = args.overlaps.split(",") if args.overlaps else None
    densities = [float(d) for d in args.densities.split(",")] if args.densities else None
    return guarded("paper_omniccl", lambda: paper_omniccl.reproduce(
        args.out, args.nodes, args.size, overlaps, densities, command=script_command("paper_omniccl", argv),
        grid=args.grid, jobs=args.jobs, progress=args.progress or sys.stderr.isatty()))


if __name__ == "__main__":
    sys.exit(main())
