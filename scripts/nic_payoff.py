#!/usr/bin/env python3
"""When does in-NIC reduction pay off? DirectReduce against ring and host-best, with the model executor.

Sweeps message sizes 1 KiB .. 1 GiB over rings, tori and switch:N on the
400g-gen5 profile, then link rates 100/200/400 Gb/s against PCIe Gen4/Gen5 x16,
then ranks per node (each with directreduce and directreduce-pipelined), and
writes PREFIX.json, PREFIX.csv, the page PREFIX.md and three heat maps beside
it. The points are the grid sweeps/nic_payoff.yml (sweeps/nic_payoff_quick.yml
with --quick), run as `nicemu sweep` runs it; nicemu.studies.nic_payoff turns
the records into the page.

    python scripts/nic_payoff.py                          # docs/results/nic_payoff.*
    python scripts/nic_payoff.py --quick --out /tmp/payoff  # a few points, seconds
"""

from __future__ import annotations

import argparse
import sys

from nicemu.studies import nic_payoff
from nicemu.studies.pages import guarded, script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/nic_payoff", help="output path prefix")
    ap.add_argument("--profile", default=nic_payoff.PROFILE,
                    help=f"shipped profile name or YAML path (default {nic_payoff.PROFILE})")
    ap.add_argument("--quick", action="store_true", help=f"the grid {nic_payoff.QUICK_GRID}: a few points, seconds")
    ap.add_argument("--grid", default=None, help=f"the grid of points (default {nic_payoff.GRID})")
    ap.add_argument("--jobs", type=int, default=None, help="processes sharing the points (default: the CPUs)")
    ap.add_argument("--progress", action="store_true", help="show the progress bar")
    args = ap.parse_args(argv)
    return guarded(nic_payoff.SCRIPT, lambda: nic_payoff.run(
        args.out, args.quick, args.profile, command=script_command(nic_payoff.SCRIPT, argv), jobs=args.jobs,
        progress=args.progress or sys.stderr.isatty(), grid=args.grid))


if __name__ == "__main__":
    sys.exit(main())
