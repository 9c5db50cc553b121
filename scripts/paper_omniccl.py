#!/usr/bin/env python3
"""Reproduce the OmNICCL comparison with the model executor.

128 MiB float32 per node on 8 nodes, block density swept over OmniReduce's
values (1.0 … 0.01), random and all-overlapping block placement, for dense
ring AllReduce, omniccl (and with --tx-spots 1), omniccl-cpu and omnireduce,
with the `omniccl-paper` profile. Writes JSON, CSV and a Markdown table.

    python scripts/paper_omniccl.py --out docs/results/paper_omniccl
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nicemu.collectives import (  # noqa: E402
    model_sparse,
    model_time,  # noqa: E402
    sparse_config,
)
from nicemu.collectives.schedules.sparse_patterns import pattern_mask  # noqa: E402
from nicemu.nic.profile import load_profile  # noqa: E402
from nicemu.report import write_result_files  # noqa: E402
from nicemu.topologies import parse_topology  # noqa: E402

DENSITIES = [1.0, 0.8, 0.4, 0.2, 0.1, 0.08, 0.04, 0.02, 0.01]
VARIANTS = [("omniccl", {}), ("omniccl tx1", {"tx_spots": 1}), ("omniccl-cpu", {}), ("omnireduce", {})]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/paper_omniccl")
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--size", type=int, default=128 << 20, help="bytes per node")
    ap.add_argument("--overlaps", default="random,all")
    ap.add_argument("--densities", default=",".join(str(d) for d in DENSITIES))
    args = ap.parse_args(argv)
    prof = load_profile("omniccl-paper")
    n, count = args.nodes, args.size // 4
    ring = model_time("allreduce", "ring", parse_topology(f"ring:{n}"), prof, count).emulated_us
    rows = []
    densities = [float(d) for d in args.densities.split(",")]
    for overlap in args.overlaps.split(","):
        for d in densities:
            row = {"overlap": overlap, "density": d, "ring_us": ring}
            masks = np.stack([pattern_mask(w, n, count, 256, d, overlap, 0) for w in range(n)])
            for name, extra in VARIANTS:
                t0 = time.perf_counter()
                cfg = sparse_config(name.split()[0], n, **extra)
                t = model_sparse(cfg, masks, prof, 4)
                row[f"{name}_us"] = t.emulated_us
                row[f"{name}_wire_bytes"] = t.wire_bytes
                print(f"{overlap:>6} d={d:<5} {name:<12} {t.emulated_us:12.1f} us  "
                      f"x{ring / t.emulated_us:6.2f} vs ring  ({time.perf_counter() - t0:.1f} s)",
                      file=sys.stderr)
            rows.append(row)
    lines = ["| overlap | density | ring (µs) | omniccl (µs) | speedup vs ring | tx-spots 1 | "
             "omniccl-cpu | omnireduce |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        om = r["omniccl_us"]
        lines.append(
            f"| {r['overlap']} | {r['density']:g} | {r['ring_us']:,.0f} | {om:,.0f} | "
            f"{r['ring_us'] / om:.2f}× | {100 * (r['omniccl tx1_us'] / om - 1):+.2f}% | "
            f"{100 * (r['omniccl-cpu_us'] / om - 1):+.1f}% | {r['omnireduce_us'] / om:.1f}× slower |")
    write_result_files(args.out, rows, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
