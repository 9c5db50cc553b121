"""What link faults and stragglers cost each algorithm (the README table "Faults and stragglers").

For every algorithm and message size it reports the fault-free emulated time
and the slowdown under:

* ``--faults drop=P,corrupt=P`` on every link (mean over ``--calls`` calls,
  each drawing its own faults), with the drops, corruptions and resent bytes
  per call;
* the same faults on one link only (``link=3->4``);
* one straggler node (``--straggler 3:2`` and ``3:4``; with the sparse algorithms node 3
  is a worker and the aggregator of one shard).

It uses the model executor, whose times equal the MPI executor's bit for bit
(tests/mpi/test_faults_mpi.py, tests/e2e/test_faults_bench.py). Writes
``PREFIX.{json,csv,md}``.

    python scripts/faults_report.py [--topology ring:8] [--sizes 1M,16M] [--calls 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nicemu.collectives import (  # noqa: E402
    build_schedule,  # noqa: E402
    model_sparse,
    sparse_config,
)
from nicemu.collectives.model.executor import run_model  # noqa: E402
from nicemu.collectives.schedules.sparse_patterns import pattern_mask  # noqa: E402
from nicemu.nic.faults import parse_faults  # noqa: E402
from nicemu.nic.profile import load_profile  # noqa: E402
from nicemu.report import write_result_files  # noqa: E402
from nicemu.sizes import format_size, parse_sizes  # noqa: E402
from nicemu.topologies import parse_topology  # noqa: E402

DENSE = ("ring", "directreduce")
SPARSE = ("omniccl", "omniccl-cpu", "omnireduce")


def timing(algo, topo, profile, count, density, faults=None, call=0, stragglers=None):
    if algo in SPARSE:
        cfg = sparse_config(algo, topo.nodes)
        masks = np.stack([pattern_mask(n, topo.nodes, count, cfg.block_size, density, "random", 0)
                          for n in range(topo.nodes)])
        return model_sparse(cfg, masks, profile, 4, faults, call, stragglers)
    schedule = build_schedule("allreduce", algo, topo, count, profile.topology.bidirectional)
    return run_model(schedule, profile, 4, faults, call, stragglers)


def mean_faulty(algo, topo, profile, count, density, faults, calls):
    runs = [timing(algo, topo, profile, count, density, faults, c) for c in range(calls)]
    return (statistics.fmean(t.emulated_us for t in runs),
            statistics.fmean(t.faults["drops"] for t in runs),
            statistics.fmean(t.faults["corruptions"] for t in runs),
            statistics.fmean(t.faults["retransmit_bytes"] for t in runs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="ring:8")
    ap.add_argument("--profile", default="directreduce-paper")
    ap.add_argument("--sizes", default="1M,16M", help="bytes per node (float32)")
    ap.add_argument("--density", type=float, default=0.25, help="block density of the sparse algorithms")
    ap.add_argument("--probability", type=float, default=1e-3, help="drop and corrupt probability")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--calls", type=int, default=20, help="calls averaged per faulty configuration")
    ap.add_argument("--out", default="docs/results/faults_report")
    args = ap.parse_args()
    topo = parse_topology(args.topology)
    profile = load_profile(args.profile)
    p = args.probability
    every = parse_faults(f"drop={p:g},corrupt={p:g},seed={args.seed}")
    one = parse_faults(f"drop={p:g},corrupt={p:g},seed={args.seed},link=3->4")
    t0 = time.perf_counter()
    rows, table = [], []
    table.append("| algo | M | clean (µs) | faults, every link (µs) | slowdown | drops + corrupt / call "
                 "| resent / call | faults, link 3->4 | straggler ×2 | straggler ×4 |")
    table.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for nbytes in parse_sizes(args.sizes):
        count = nbytes // 4
        for algo in DENSE + SPARSE:
            density = 1.0 if algo in DENSE else args.density
            clean = timing(algo, topo, profile, count, density).emulated_us
            t_all, drops, corr, resent = mean_faulty(algo, topo, profile, count, density, every, args.calls)
            t_one = mean_faulty(algo, topo, profile, count, density, one, args.calls)[0]
            slow = {f: timing(algo, topo, profile, count, density, stragglers={3: f}).emulated_us
                    for f in (2.0, 4.0)}
            row = {"algo": algo, "topology": topo.name, "bytes": nbytes, "density": density,
                   "clean_us": clean, "faults_us": t_all, "slowdown": t_all / clean,
                   "drops_per_call": drops, "corruptions_per_call": corr, "resent_bytes_per_call": resent,
                   "one_link_us": t_one, "one_link_slowdown": t_one / clean,
                   "straggler2_us": slow[2.0], "straggler4_us": slow[4.0]}
            rows.append(row)

            def ratio(v, clean=clean):
                return f"{v / clean:.2f}×"
            name = algo if algo in DENSE else f"{algo} (density {density:g})"
            table.append(f"| {name} | {format_size(nbytes)} | {clean:,.1f} | {t_all:,.1f} | "
                         f"{t_all / clean:.2f}× | {drops + corr:.1f} | {resent / 1e6:.3f} MB | "
                         f"{t_one / clean:.2f}× | {ratio(slow[2.0])} | {ratio(slow[4.0])} |")
            print(table[-1], flush=True)
    write_result_files(args.out, rows, table)
    print(f"# {time.perf_counter() - t0:.1f} s; wrote {args.out}.{{json,csv,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
