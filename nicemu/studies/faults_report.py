"""What link faults and stragglers cost each algorithm, with the model executor.

For every emulated algorithm of the registry (dense and sparse) and message
size: the fault-free emulated time and the slowdown under

* drops and corruptions on every link (mean over ``calls`` calls, each drawing
  its own faults), with the drops, corruptions and resent bytes per call;
* the same faults on one link only (``link=3->4``);
* one straggler node (``3:2`` and ``3:4``; with the sparse algorithms node 3 is
  a worker and the aggregator of one shard).

The model executor's times equal the MPI executor's bit for bit, so this needs
no MPI.

    from nicemu.studies import faults_report
    rows = faults_report.sweep(parse_topology("ring:8"), load_profile("directreduce-paper"), [1 << 20])
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from nicemu.collectives import Timing, model_sparse, model_time, names, sparse_config
from nicemu.collectives.schedules.sparse_patterns import pattern_mask
from nicemu.nic.faults import FaultSpec, parse_faults
from nicemu.nic.profile import Profile
from nicemu.report import write_result_files
from nicemu.sizes import format_size
from nicemu.studies.pages import page
from nicemu.topologies import Torus

SCRIPT = "faults_report"
STRAGGLER_NODE = 3
FACTORS = (2.0, 4.0)
HEADER = ["| algo | M | clean (µs) | faults, every link (µs) | slowdown | drops + corrupt / call "
          "| resent / call | faults, link 3->4 | straggler ×2 | straggler ×4 |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]


def timing(algo: str, topo: Torus, profile: Profile, count: int, density: float,
           faults: FaultSpec | None = None, call: int = 0, stragglers: dict[int, float] | None = None) -> Timing:
    """One float32 AllReduce; the sparse algorithms get random blocks of the given density."""
    if algo in names(kind="sparse"):
        cfg = sparse_config(algo, topo.nodes)
        masks = np.stack([pattern_mask(n, topo.nodes, count, cfg.block_size, density, "random", 0)
                          for n in range(topo.nodes)])
        return model_sparse(cfg, masks, profile, 4, faults, call, stragglers)
    return model_time("allreduce", algo, topo, profile, count, "float32", faults, call, stragglers)


def mean_faulty(algo: str, topo: Torus, profile: Profile, count: int, density: float, faults: FaultSpec,
                calls: int) -> tuple[float, float, float, float]:
    """Mean emulated time, drops, corruptions and resent bytes over ``calls`` calls."""
    runs = [timing(algo, topo, profile, count, density, faults, c) for c in range(calls)]
    return (statistics.fmean(t.emulated_us for t in runs),
            statistics.fmean(t.faults["drops"] for t in runs),
            statistics.fmean(t.faults["corruptions"] for t in runs),
            statistics.fmean(t.faults["retransmit_bytes"] for t in runs))


def measure(algo: str, topo: Torus, profile: Profile, nbytes: int, density: float, every: FaultSpec,
            one: FaultSpec, calls: int) -> dict:
    """The record of one algorithm at one size."""
    count = nbytes // 4
    clean = timing(algo, topo, profile, count, density).emulated_us
    t_all, drops, corr, resent = mean_faulty(algo, topo, profile, count, density, every, calls)
    t_one = mean_faulty(algo, topo, profile, count, density, one, calls)[0]
    slow = {f: timing(algo, topo, profile, count, density, stragglers={STRAGGLER_NODE: f}).emulated_us
            for f in FACTORS}
    return {"algo": algo, "topology": topo.name, "bytes": nbytes, "density": density,
            "clean_us": clean, "faults_us": t_all, "slowdown": t_all / clean,
            "drops_per_call": drops, "corruptions_per_call": corr, "resent_bytes_per_call": resent,
            "one_link_us": t_one, "one_link_slowdown": t_one / clean,
            "straggler2_us": slow[2.0], "straggler4_us": slow[4.0]}


def table_row(r: dict) -> str:
    clean = r["clean_us"]
    name = r["algo"] if r["algo"] not in names(kind="sparse") else f"{r['algo']} (density {r['density']:g})"
    return (f"| {name} | {format_size(r['bytes'])} | {clean:,.1f} | {r['faults_us']:,.1f} | "
            f"{r['faults_us'] / clean:.2f}× | {r['drops_per_call'] + r['corruptions_per_call']:.1f} | "
            f"{r['resent_bytes_per_call'] / 1e6:.3f} MB | {r['one_link_us'] / clean:.2f}× | "
            f"{r['straggler2_us'] / clean:.2f}× | {r['straggler4_us'] / clean:.2f}× |")


def sweep(topo: Torus, profile: Profile, sizes: Sequence[int], density: float = 0.25,
          probability: float = 1e-3, seed: int = 1, calls: int = 20, log: TextIO | None = sys.stdout) -> list[dict]:
    """One record per (size, algorithm); each table row is printed to ``log`` as it is done."""
    p = probability
    every = parse_faults(f"drop={p:g},corrupt={p:g},seed={seed}")
    one = parse_faults(f"drop={p:g},corrupt={p:g},seed={seed},link=3->4")
    dense, sparse = names(kind="dense", emulated=True, link_faults=True), names(kind="sparse")
    rows = []
    for nbytes in sizes:
        for algo in dense + sparse:
            rows.append(measure(algo, topo, profile, nbytes, 1.0 if algo in dense else density, every, one, calls))
            if log is not None:
                print(table_row(rows[-1]), file=log, flush=True)
    return rows


def findings(rows: Sequence[dict]) -> list[str]:
    """What the table shows, read from the rows themselves."""
    sparse = names(kind="sparse")
    dense_rows = [r for r in rows if r["algo"] not in sparse]
    sparse_rows = [r for r in rows if r["algo"] in sparse]
    out = []
    if dense_rows and sparse_rows:
        out.append(f"Faults on every link slow the dense algorithms {min(r['slowdown'] for r in dense_rows):.2f}× "
                   f"to {max(r['slowdown'] for r in dense_rows):.2f}× and the sparse ones "
                   f"{min(r['slowdown'] for r in sparse_rows):.2f}× to {max(r['slowdown'] for r in sparse_rows):.2f}×. "
                   "The sparse ones resend less "
                   f"(at most {max(r['resent_bytes_per_call'] for r in sparse_rows) / 1e6:.3f} MB a call against "
                   f"{min(r['resent_bytes_per_call'] for r in dense_rows) / 1e6:.3f} MB), but every hit waits for "
                   "its retransmission, so a short clean time suffers most in relative terms.")
        one_dense = [r["one_link_slowdown"] for r in dense_rows]
        one_sparse = [r["one_link_slowdown"] for r in sparse_rows]
        out.append(f"Faults on one link (3->4) cost the dense rings {min(one_dense):.2f}× to {max(one_dense):.2f}× "
                   "(a ring moves at the pace of its slowest link) but the sparse algorithms at most "
                   f"{max(one_sparse):.2f}×.")
    ratio = {r["algo"] + " at " + format_size(r["bytes"]): r["straggler4_us"] / r["clean_us"] for r in rows}
    lo, hi = min(ratio, key=ratio.get), max(ratio, key=ratio.get)
    out.append(f"A straggler node slowed 4× costs from {ratio[lo]:.2f}× ({lo}) to {ratio[hi]:.2f}× ({hi}).")
    return out


def reproduce(out: str, topo: Torus, profile: Profile, sizes: Sequence[int], density: float = 0.25,
              probability: float = 1e-3, seed: int = 1, calls: int = 20, command: str = "") -> list[dict]:
    """Run the sweep and write ``out.{json,csv,md}``; returns the records."""
    rows = sweep(topo, profile, sizes, density, probability, seed, calls)
    about = (f"float32 AllReduce on {topo.name}, model executor, profile {profile.name}; faults "
             f"drop={probability:g},corrupt={probability:g},seed={seed}, mean over {calls} calls; stragglers on "
             f"node {STRAGGLER_NODE}; slowdowns relative to the clean time. Also writes {out}.json and {out}.csv.")
    write_result_files(out, rows, page(command, SCRIPT, about, [*HEADER, *(table_row(r) for r in rows)],
                                       findings(rows)))
    return rows
