#!/usr/bin/env python3
"""Reproduce the OmNICCL comparison with the model executor.

128 MiB float32 per node on 8 nodes, block sparsity 0, 25, 50, 75% and
90, 95, 98, 99% (densities 1 … 0.01), random and all-overlapping block
placement, for the dense baselines ring and host-best, every sparse algorithm
(and omniccl with --tx-spots 1), with the `omniccl-paper` profile. Writes JSON,
CSV and a Markdown page (nicemu.studies.paper_omniccl does the work).

    python scripts/paper_omniccl.py --out docs/results/paper_omniccl
"""

from __future__ import annotations

import argparse
import sys

from nicemu.studies import paper_omniccl
from nicemu.studies.pages import script_command


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/paper_omniccl")
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--size", type=int, default=128 << 20, help="bytes per node")
    ap.add_argument("--overlaps", default="random,all")
    ap.add_argument("--densities", default=",".join(str(d) for d in paper_omniccl.DENSITIES))
    args = ap.parse_args(argv)
    paper_omniccl.reproduce(args.out, args.nodes, args.size, args.overlaps.split(","),
                            [float(d) for d in args.densities.split(",")],
                            command=script_command("paper_omniccl", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
