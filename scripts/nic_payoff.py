#!/usr/bin/env python3
"""When does in-NIC reduction pay off? DirectReduce against ring and host-best, with the model executor.

Sweeps message sizes 1 KiB .. 1 GiB over rings, tori and switch:N on the
400g-gen5 profile, then link rates 100/200/400 Gb/s against PCIe Gen4/Gen5 x16,
and writes PREFIX.json, PREFIX.csv, the page PREFIX.md and two heat maps beside
it (nicemu.studies.nic_payoff does the work).

    python scripts/nic_payoff.py                          # docs/results/nic_payoff.*
    python scripts/nic_payoff.py --quick --out /tmp/payoff  # a few points, seconds
"""

from __future__ import annotations

import argparse
import sys

from nicemu.studies import nic_payoff
from nicemu.studies.pages import script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/nic_payoff", help="output path prefix")
    ap.add_argument("--profile", default=nic_payoff.PROFILE,
                    help=f"shipped profile name or YAML path (default {nic_payoff.PROFILE})")
    ap.add_argument("--quick", action="store_true", help="three topologies, three sizes (for tests)")
    args = ap.parse_args(argv)
    try:
        nic_payoff.run(args.out, args.quick, args.profile, command=script_command(nic_payoff.SCRIPT, argv))
    except ValueError as exc:   # ProfileError and the other nicemu errors: one line
        print(f"{nic_payoff.SCRIPT}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
