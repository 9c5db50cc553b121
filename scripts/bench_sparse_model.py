#!/usr/bin/env python3
"""Wall time and peak memory of the model executor for the sparse AllReduce algorithms.

Builds the benchmark block masks and times the two halves of ``model_sparse``
(planning the rounds, timing them) for each algorithm and density, each in its
own child process so that its peak resident memory is its own
(nicemu.studies.sparse_model_bench does the work).

    python scripts/bench_sparse_model.py --topology torus:4^6 --size 134217728 \\
        --densities 1.0,0.1 --algos omniccl,omniccl-cpu,omnireduce

``--packed`` hands the masks to the model bit-packed (``PackedMasks``: 1/8 of
the memory of the bool array) and builds them without ever holding the bool
array; the result is the same.
"""

from __future__ import annotations

import argparse
import json
import sys

from nicemu.studies import sparse_model_bench as smb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", default="torus:4^6", help="only its node count is used")
    ap.add_argument("--size", type=int, default=128 << 20, help="bytes per node")
    ap.add_argument("--itemsize", type=int, default=4, help="bytes per element (float32: 4)")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--densities", default="1.0,0.1")
    ap.add_argument("--overlap", default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--algos", default=",".join(smb.default_algos()))
    ap.add_argument("--profile", default="omniccl-paper")
    ap.add_argument("--set", action="append", help="profile override, e.g. nic.memory_KiB=1")
    ap.add_argument("--packed", action="store_true", help="hand the masks over bit-packed")
    ap.add_argument("--json", help="append one JSON line per run to this file")
    ap.add_argument("--one", action="store_true", help="run a single algo/density in this process")
    args = ap.parse_args(argv)
    bench = smb.Bench(args.topology, args.size, args.itemsize, args.block_size, args.overlap, args.seed,
                      args.profile, args.set or [], args.packed)
    algos = args.algos.split(",")
    densities = [float(d) for d in args.densities.split(",")]
    if args.one:
        print(json.dumps(smb.run_one(bench, algos[0], densities[0])))
        return 0
    try:
        smb.run_all(bench, algos, densities, args.json)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
