#!/usr/bin/env python3
"""What telemetry shows on a 6-D torus and what it costs (docs/results/telemetry.md).

Writes the per-dimension link summary of each algorithm, the CPU cost of one call
without telemetry, with the statistics, and with the full --link-stats JSON (the
three alternating in one process, fastest of --repeats kept), and the link heatmap
picture (nicemu.studies.telemetry_cost does the work).

    python scripts/telemetry_cost.py                          # torus:8^6, 1 GiB, ~3 min
    python scripts/telemetry_cost.py --topology torus:4^6 --size 1M --out /tmp/telemetry
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from nicemu.nic.profile import load_profile
from nicemu.sizes import parse_sizes
from nicemu.studies import telemetry_cost
from nicemu.studies.pages import script_command

PROG = "telemetry_cost"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--topology", default="torus:8^6")
    ap.add_argument("--size", default="1G", help="bytes per node (default 1G)")
    ap.add_argument("--algo", default="ring,directreduce")
    ap.add_argument("--profile", default="directreduce-paper")
    ap.add_argument("--repeats", type=int, default=2, help="runs per mode, the fastest is kept (default 2)")
    ap.add_argument("--out", default="docs/results/telemetry", help="output prefix")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    profile = load_profile(args.profile)
    nbytes = parse_sizes(args.size)[0]
    algos = [a.strip() for a in args.algo.split(",") if a.strip()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    telemetry_cost.heatmap(str(Path(args.out).parent / "link_heatmap.png"), profile)
    summaries = telemetry_cost.summaries(args.topology, algos, nbytes, profile)
    with tempfile.TemporaryDirectory() as scratch:
        rows = telemetry_cost.cost(args.topology, algos, nbytes, profile, args.repeats, scratch,
                                   progress=lambda m: print(m, file=sys.stderr, flush=True))
    path = telemetry_cost.write_page(args.out, args.topology, nbytes, profile, rows, summaries,
                                     script_command(PROG, argv))
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
