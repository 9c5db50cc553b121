#!/usr/bin/env python3
"""Wall time and peak memory of the model executor for the sparse AllReduce algorithms.

Builds the benchmark block masks (``pattern_mask`` of every node, as in
``np.stack([pattern_mask(n, N, count, B, d, overlap, seed) for n in range(N)])``)
and times ``plan_rounds`` and ``sparse_time`` (what ``model_sparse`` runs) for
each algorithm and density, each in its own child process so that its peak
resident memory (``getrusage`` max RSS, like ``/usr/bin/time -v``) is its own.

    python scripts/bench_sparse_model.py --topology torus:4^6 --size 134217728 \\
        --densities 1.0,0.1 --algos omniccl,omniccl-cpu,omnireduce

``--packed`` hands the masks to the model bit-packed (``PackedMasks``: 1/8 of
the memory of the bool array) and builds them without ever holding the bool
array; the result is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nicemu.collectives import (
    sparse_config,  # noqa: E402
    spot_protocol,  # noqa: E402
)
from nicemu.collectives.model.sparse_timing import sparse_time  # noqa: E402
from nicemu.collectives.schedules.sparse_patterns import nblocks_of, pattern_mask  # noqa: E402
from nicemu.nic.profile import load_profile  # noqa: E402
from nicemu.topologies import parse_topology  # noqa: E402

ALGOS = ("omniccl", "omniccl-cpu", "omnireduce")


def _status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM), None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_masks(nodes: int, count: int, block: int, density: float, overlap: str, seed: int,
                packed: bool):
    """The nodes' block masks, row by row (never a list of rows plus their stack)."""
    nb = nblocks_of(count, block)
    if packed:
        bits = np.empty((nodes, (nb + 7) // 8), dtype=np.uint8)
        for n in range(nodes):
            bits[n] = np.packbits(pattern_mask(n, nodes, count, block, density, overlap, seed))
        return spot_protocol.PackedMasks(bits, nb)
    masks = np.empty((nodes, nb), dtype=bool)
    for n in range(nodes):
        masks[n] = pattern_mask(n, nodes, count, block, density, overlap, seed)
    return masks


def run_one(args: argparse.Namespace, algo: str, density: float) -> dict:
    topo = parse_topology(args.topology)
    nodes, count = topo.nodes, args.size // args.itemsize
    prof = load_profile(args.profile, args.set or [])
    t0 = time.perf_counter()
    masks = build_masks(nodes, count, args.block_size, density, args.overlap, args.seed, args.packed)
    t_masks = time.perf_counter() - t0
    rss_masks = _status_kib("VmRSS")
    peak_reset = _reset_peak()
    cfg = sparse_config(algo, nodes, block_size=args.block_size)
    c0 = time.process_time()
    t0 = time.perf_counter()
    plan = spot_protocol.plan_rounds(masks, cfg)
    t1 = time.perf_counter()
    timing = sparse_time(plan, prof, args.itemsize)
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "topology": args.topology, "nodes": nodes, "bytes_per_node": args.size, "algo": algo,
        "density": density, "overlap": args.overlap, "packed": args.packed,
        "nblocks": nblocks_of(count, args.block_size), "rounds": len(plan.rounds),
        "masks_s": round(t_masks, 3), "plan_s": round(t1 - t0, 3), "time_s": round(t2 - t1, 3),
        "model_s": round(t2 - t0, 3), "model_cpu_s": round(cpu, 3),   # CPU time: less sensitive to load
        "max_rss_MiB": round(ru.ru_maxrss / 1024, 1),              # whole process, masks included
        "rss_after_masks_MiB": round(rss_masks / 1024, 1) if rss_masks else None,
        "model_peak_rss_MiB": (round(_status_kib("VmHWM") / 1024, 1) if peak_reset else None),
        "user_s": round(ru.ru_utime, 2), "sys_s": round(ru.ru_stime, 2),
        "emulated_us": timing.emulated_us, "wire_bytes": timing.wire_bytes,
        "host_busy_us": timing.host_busy_us, "nic_busy_us": timing.nic_busy_us,
        "spilled": timing.spilled,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", default="torus:4^6", help="only its node count is used")
    ap.add_argument("--size", type=int, default=128 << 20, help="bytes per node")
    ap.add_argument("--itemsize", type=int, default=4, help="bytes per element (float32: 4)")
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--densities", default="1.0,0.1")
    ap.add_argument("--overlap", default="random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument("--profile", default="omniccl-paper")
    ap.add_argument("--set", action="append", help="profile override, e.g. nic.memory_KiB=1")
    ap.add_argument("--packed", action="store_true", help="hand the masks over bit-packed")
    ap.add_argument("--json", help="append one JSON line per run to this file")
    ap.add_argument("--one", action="store_true", help="run a single algo/density in this process")
    args = ap.parse_args(argv)
    if args.packed and not hasattr(spot_protocol, "PackedMasks"):
        ap.error("this version of nicemu.collectives.schedules.spot_protocol has no PackedMasks")
    algos = args.algos.split(",")
    densities = [float(d) for d in args.densities.split(",")]
    if args.one:
        print(json.dumps(run_one(args, algos[0], densities[0])))
        return 0
    rows = []
    for d in densities:
        for algo in algos:
            child = [sys.executable, __file__, "--one", "--algos", algo, "--densities", str(d),
                     "--topology", args.topology, "--size", str(args.size), "--itemsize", str(args.itemsize),
                     "--block-size", str(args.block_size), "--overlap", args.overlap, "--seed", str(args.seed),
                     "--profile", args.profile] + (["--packed"] if args.packed else [])
            for s in args.set or []:
                child += ["--set", s]
            t0 = time.perf_counter()
            out = subprocess.run(child, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["process_wall_s"] = round(time.perf_counter() - t0, 2)
            row["load_avg_1min"] = round(os.getloadavg()[0], 2)     # other processes on the machine
            rows.append(row)
            print(f"{args.topology} {args.size >> 20} MiB d={d:<5} {algo:<12} rounds {row['rounds']:>6}  "
                  f"masks {row['masks_s']:7.2f} s  plan {row['plan_s']:7.2f} s  time {row['time_s']:7.2f} s  "
                  f"model {row['model_s']:7.2f} s (cpu {row['model_cpu_s']:.2f} s)  "
                  f"max RSS {row['max_rss_MiB']:8.1f} MiB "
                  f"(masks {row['rss_after_masks_MiB']} MiB, model peak {row['model_peak_rss_MiB']} MiB)  "
                  f"emulated {row['emulated_us']:.3f} us", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
