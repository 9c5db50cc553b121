#!/usr/bin/env python3
"""Reproduce the DirectReduce findings with the model executor.

Sweeps the published configurations (ring of 8 nodes; 6D tori of 3, 4, 6 and
8 nodes per dimension; messages of 1 KiB .. 1 GiB) plus an N sweep at 256 MiB,
for the host ring and DirectReduce, and writes JSON, CSV and a Markdown table.

    python scripts/paper_directreduce.py --out docs/results/paper_directreduce
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nicemu.collectives import model_time  # noqa: E402
from nicemu.nic.profile import load_profile  # noqa: E402
from nicemu.report import write_result_files  # noqa: E402
from nicemu.sizes import format_size  # noqa: E402
from nicemu.topologies import parse_topology  # noqa: E402

RING8_SIZES = [1 << e for e in range(10, 31, 2)]
PAPER_SIZES = [1 << 10, 1 << 18, 1 << 28, 1 << 30]


def _per_node(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.3g}"


def configs(full: bool) -> list[tuple[str, int]]:
    out = [("ring:8", m) for m in RING8_SIZES]
    out += [(f"ring:{n}", 256 << 20) for n in (4, 16, 64)]
    tori = ["torus:3^6", "torus:4^6", "torus:6^6"] + (["torus:8^6"] if full else [])
    out += [(t, m) for t in tori for m in PAPER_SIZES]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/paper_directreduce", help="output path prefix")
    ap.add_argument("--profile", default="directreduce-paper")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--quick", action="store_true", help="skip torus:8^6 (262,144 nodes)")
    args = ap.parse_args()
    profile = load_profile(args.profile, args.overrides)
    rows = []
    todo = configs(not args.quick)
    for i, (topo_spec, m) in enumerate(todo, 1):
        topo = parse_topology(topo_spec)
        t0 = time.perf_counter()
        ring = model_time("allreduce", "ring", topo, profile, m // 4).emulated_us
        dr = model_time("allreduce", "directreduce", topo, profile, m // 4).emulated_us
        rows.append({"topology": topo_spec, "nodes": topo.nodes, "bytes": m,
                     "bytes_per_node": m / topo.nodes, "ring_us": ring, "directreduce_us": dr,
                     "gain": 1 - dr / ring, "model_wall_s": time.perf_counter() - t0})
        print(f"[{i}/{len(todo)}] {topo_spec:<10} {format_size(m):>5}  ring {ring:14.3f} us  "
              f"directreduce {dr:14.3f} us  gain {100 * (1 - dr / ring):6.2f}%", file=sys.stderr)
    lines = ["| topology | N | M | M/N (B) | ring (µs) | DirectReduce (µs) | gain |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['topology']} | {r['nodes']:,} | {format_size(r['bytes'])} | "
                     f"{_per_node(r['bytes_per_node'])} | {r['ring_us']:,.2f} | {r['directreduce_us']:,.2f} | "
                     f"{100 * r['gain']:.2f}% |")
    write_result_files(args.out, rows, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
