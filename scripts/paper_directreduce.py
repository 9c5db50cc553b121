#!/usr/bin/env python3
"""Reproduce the DirectReduce findings with the model executor.

Sweeps the published configurations (ring of 8 nodes; 6D tori of 3, 4, 6 and
8 nodes per dimension; messages of 1 KiB .. 1 GiB) plus an N sweep at 256 MiB,
for the host ring and DirectReduce, and writes JSON, CSV and a Markdown page
(nicemu.studies.paper_directreduce does the work).

    python scripts/paper_directreduce.py --out docs/results/paper_directreduce
"""

from __future__ import annotations

import argparse
import sys

from nicemu.studies import paper_directreduce
from nicemu.studies.pages import script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/paper_directreduce", help="output path prefix")
    ap.add_argument("--profile", default="directreduce-paper")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="skip torus:8^6 (262,144 nodes)")
    args = ap.parse_args(argv)
    paper_directreduce.reproduce(args.out, args.profile, args.overrides, full=not args.quick,
                                 command=script_command("paper_directreduce", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
