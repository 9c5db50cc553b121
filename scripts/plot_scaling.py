#!/usr/bin/env python3
"""Redraw the figures of a finished topology-scaling sweep from its JSON, computing nothing.

    python scripts/plot_scaling.py docs/results/scale_topology
        # reads docs/results/scale_topology.json, writes
        # docs/results/scale_topology_time_vs_nodes.png and ..._gain_heatmap.png

The figures are described in nicemu.studies.scaling_plots, which draws them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nicemu.studies import scaling_plots


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="plot_scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("prefix", help="the sweep's --out prefix (reads PREFIX.json)")
    args = ap.parse_args(argv)
    try:
        for path in scaling_plots.redraw(args.prefix):
            print(f"# wrote {path}")
    except (OSError, ValueError, KeyError) as exc:
        print(f"plot_scaling: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
