#!/usr/bin/env python3
"""Wall time of the shared-fabric model on a 16^3 torus (by default) with 4,096 concurrent flows.

Patterns (nicemu/studies/fabric_bench.py): ``burst`` (all start at 0, equal sizes), ``random-sizes`` (all
start at 0) and ``random-arrivals`` (Poisson starts). ``--simgrid`` also runs SimGrid on the same flows
(needs g++ and libsimgrid-dev) and reports its wall time and the largest relative difference.

    python scripts/bench_fabric.py --topology torus:16^3 --flows 4096 --patterns burst,random-sizes,random-arrivals
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from nicemu.errors import NicemuError
from nicemu.studies import fabric_bench as fb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", default="torus:16^3")
    ap.add_argument("--flows", type=int, default=4096)
    ap.add_argument("--size", type=int, default=1 << 20, help="bytes per flow (mean size for the random patterns)")
    ap.add_argument("--patterns", default=",".join(fb.PATTERNS))
    ap.add_argument("--profile", default="ideal")
    ap.add_argument("--set", action="append", default=[], help="profile override, e.g. link.bandwidth_GBps=25")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--simgrid", action="store_true", help="also run SimGrid on the same flows")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    try:
        if args.flows < 1:
            raise ValueError(f"--flows must be at least 1, got {args.flows}")
        patterns = args.patterns.split(",")
        cases = [fb.make_case(p, args.topology, args.flows, args.size, args.profile, tuple(args.set), args.seed)
                 for p in patterns]
        exe = None
        if args.simgrid:
            flags = fb.simgrid_flags()
            if flags is None:
                raise ValueError("--simgrid needs g++, pkg-config and SimGrid (apt-get install libsimgrid-dev)")
            tmp = Path(tempfile.mkdtemp(prefix="bench_fabric_"))
            exe = fb.compile_simgrid(tmp / "flows", flags)
        rows = []
        print(f"# {args.topology}, {args.flows} flows, profile {args.profile}")
        head = f"{'pattern':>16} {'makespan_us':>12} {'model_s':>8}"
        print(head + (f" {'simgrid_s':>9} {'max_rel':>8}" if exe else ""))
        for case in cases:
            fin, wall = fb.run_model(case, weighted=exe is not None)
            row = {"pattern": case.pattern, "topology": args.topology, "flows": args.flows,
                   "makespan_us": float(fin.max()), "model_s": round(wall, 3)}
            line = f"{case.pattern:>16} {fin.max():12.3f} {wall:8.2f}"
            if exe is not None:
                theirs, sg_wall = fb.run_simgrid(exe, tmp, case.fabric, case.flows, case.start_us, case.nbytes)
                rel = float(np.max(np.abs(fin - theirs) / np.abs(theirs)))
                row.update(simgrid_s=round(sg_wall, 3), max_rel=rel)
                line += f" {sg_wall:9.2f} {rel:8.1e}"
            rows.append(row)
            print(line, flush=True)
    except (NicemuError, ValueError, RuntimeError) as exc:
        print(f"bench_fabric: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
