#!/usr/bin/env python3
"""Growth of the model executor's wall time with nodes x steps ("no worse than linear").

Times one AllReduce per point with the model executor on 6D tori ``torus:k^6``
and flat rings ``ring:N``, for ``ring`` and ``directreduce``, against nodes x
steps, fits the slope of log(wall) vs log(nodes x steps) over the points that
take at least ``--fit-min-s`` and draws the curve (nicemu.studies.growth_curve
does the work).

    python scripts/growth_curve.py                       # k = 3..8, rings 64..4096, 1K and 1G, ~2 min
    python scripts/growth_curve.py --k 3,4 --rings 64,256 --sizes 1M --out /tmp/growth

Every point runs ``--repeats`` times and keeps the fastest run (the machine may
be shared: the minimum is the least disturbed measurement). Writes PREFIX.json,
PREFIX.md and PREFIX.png.
"""

from __future__ import annotations

import argparse
import sys

from nicemu.nic.profile import load_profile
from nicemu.sizes import parse_sizes
from nicemu.studies import growth_curve
from nicemu.studies.pages import script_command

PROG = "growth_curve"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--k", default="3,4,5,6,7,8", help="6D torus sizes per dimension (default 3,4,5,6,7,8)")
    ap.add_argument("--rings", default="64,256,1024,4096", help="flat ring sizes (default 64,256,1024,4096)")
    ap.add_argument("--sizes", default="1K,1G", help="message sizes per node (default 1K,1G)")
    ap.add_argument("--algo", default="ring,directreduce",
                    help="comma list of scheduled dense algorithms (default: ring,directreduce)")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = script_command(PROG, argv)
    if args.from_json:
        growth_curve.refit(args.from_json, args.out, args.fit_min_s, command)
        return 0
    topologies = ([f"torus:{int(k)}^6" for k in args.k.split(",") if k.strip()]
                  + [f"ring:{int(n)}" for n in args.rings.split(",") if n.strip()])
    growth_curve.run(topologies, [a.strip() for a in args.algo.split(",") if a.strip()], parse_sizes(args.sizes),
                     load_profile(args.profile), args.repeats, args.out, args.fit_min_s, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
