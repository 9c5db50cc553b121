#!/usr/bin/env python3
"""Reproduce the DirectReduce findings with the model executor.

Runs the grid sweeps/paper_directreduce.yml (ring of 8 nodes; 6D tori of 3, 4, 6
and 8 nodes per dimension; messages of 1 KiB .. 1 GiB; an N sweep at 256 MiB; host
ring and DirectReduce) as `nicemu sweep` does, and writes JSON, CSV and a Markdown
page (nicemu.studies.paper_directreduce turns the records into the page).

    python scripts/paper_directreduce.py --out docs/results/paper_directreduce
"""

from __future__ import annotations

import argparse
import sys

from nicemu.studies import paper_directreduce
from nicemu.studies.pages import guarded, script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/paper_directreduce", help="output path prefix")
    ap.add_argument("--profile", default="directreduce-paper")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="skip torus:8^6 (262,144 nodes)")
    ap.add_argument("--grid", default=paper_directreduce.GRID, help="the grid of points")
    ap.add_argument("--jobs", type=int, default=None, help="processes sharing the points (default: the CPUs)")
    ap.add_argument("--progress", action="store_true", help="show the progress bar")
    args = ap.parse_args(argv)
    return guarded("paper_directreduce", lambda: paper_directreduce.reproduce(
        args.out, args.profile, args.overrides, full=not args.quick, command=script_command("paper_directreduce", argv),
        grid=args.grid, jobs=args.jobs, progress=args.progress or sys.stderr.isatty()))


if __name__ == "__main__":
    sys.exit(main())
