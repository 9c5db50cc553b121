#!/usr/bin/env python3
"""What link faults and stragglers cost each algorithm (docs/results/faults_report.md).

For every algorithm and message size it reports the fault-free emulated time
and the slowdown under faults on every link, faults on one link only, and one
straggler node (nicemu.studies.faults_report does the work, with the model
executor, whose times equal the MPI executor's bit for bit). Writes
``PREFIX.{json,csv,md}``.

    python scripts/faults_report.py [--topology ring:8] [--sizes 1M,16M] [--calls 20]
"""

from __future__ import annotations

import argparse
import sys
import time

from nicemu.nic.profile import load_profile
from nicemu.sizes import parse_sizes
from nicemu.studies import faults_report
from nicemu.studies.pages import script_command
from nicemu.topologies import parse_topology


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="ring:8")
    ap.add_argument("--profile", default="directreduce-paper")
    ap.add_argument("--sizes", default="1M,16M", help="bytes per node (float32)")
    ap.add_argument("--density", type=float, default=0.25, help="block density of the sparse algorithms")
    ap.add_argument("--probability", type=float, default=1e-3, help="drop and corrupt probability")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--calls", type=int, default=20, help="calls averaged per faulty configuration")
    ap.add_argument("--out", default="docs/results/faults_report")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    faults_report.reproduce(args.out, parse_topology(args.topology), load_profile(args.profile),
                            parse_sizes(args.sizes), args.density, args.probability, args.seed, args.calls,
                            command=script_command("faults_report", argv))
    print(f"# {time.perf_counter() - t0:.1f} s; wrote {args.out}.{{json,csv,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
