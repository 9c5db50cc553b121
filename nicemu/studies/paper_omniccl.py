"""The OmNICCL comparison with the model executor: the sparse algorithms over block density.

128 MiB float32 per node on 8 nodes, block density swept over OmniReduce's
values (1.0 … 0.01), random and all-overlapping block placement; the dense
host ring is the reference. Every sparse algorithm of the registry runs, and
OmNICCL once more without double buffering (``tx_spots=1``), with the
``omniccl-paper`` profile.

    from nicemu.studies import paper_omniccl
    rows = paper_omniccl.sweep(nodes=8, nbytes=128 << 20, overlaps=["random"], densities=[0.1])
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from nicemu.collectives import model_sparse, model_time, names, sparse_config
from nicemu.collectives.schedules.sparse_patterns import pattern_mask
from nicemu.nic.profile import load_profile
from nicemu.report import write_result_files
from nicemu.studies.pages import page
from nicemu.topologies import parse_topology

DENSITIES = [1.0, 0.8, 0.4, 0.2, 0.1, 0.08, 0.04, 0.02, 0.01]
PROFILE = "omniccl-paper"
SCRIPT = "paper_omniccl"


def variants() -> list[tuple[str, str, dict]]:
    """(label, algorithm, options): every sparse algorithm, and OmNICCL once more with one Tx spot."""
    out = []
    for algo in names(kind="sparse"):
        out.append((algo, algo, {}))
        if algo == "omniccl":
            out.append(("omniccl tx1", algo, {"tx_spots": 1}))
    return out


def sweep(nodes: int = 8, nbytes: int = 128 << 20, overlaps: Sequence[str] = ("random", "all"),
          densities: Sequence[float] = DENSITIES, log: TextIO | None = sys.stderr) -> list[dict]:
    """One record per (overlap, density): the ring's time and each variant's time and wire bytes."""
    prof = load_profile(PROFILE)
    count = nbytes // 4
    ring = model_time("allreduce", "ring", parse_topology(f"ring:{nodes}"), prof, count).emulated_us
    rows = []
    for overlap in overlaps:
        for d in densities:
            row = {"overlap": overlap, "density": d, "ring_us": ring}
            masks = np.stack([pattern_mask(w, nodes, count, 256, d, overlap, 0) for w in range(nodes)])
            for label, algo, extra in variants():
                t0 = time.perf_counter()
                t = model_sparse(sparse_config(algo, nodes, **extra), masks, prof, 4)
                row[f"{label}_us"] = t.emulated_us
                row[f"{label}_wire_bytes"] = t.wire_bytes
                if log is not None:
                    print(f"{overlap:>6} d={d:<5} {label:<12} {t.emulated_us:12.1f} us  "
                          f"x{ring / t.emulated_us:6.2f} vs ring  ({time.perf_counter() - t0:.1f} s)", file=log)
            rows.append(row)
    return rows


def table(rows: Sequence[dict]) -> list[str]:
    lines = ["| overlap | density | ring (µs) | omniccl (µs) | speedup vs ring | tx-spots 1 | "
             "omniccl-cpu | omnireduce (µs) | omniccl vs omnireduce |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        om = r["omniccl_us"]
        lines.append(
            f"| {r['overlap']} | {r['density']:g} | {r['ring_us']:,.0f} | {om:,.0f} | "
            f"{r['ring_us'] / om:.2f}× | {100 * (r['omniccl tx1_us'] / om - 1):+.2f}% | "
            f"{100 * (r['omniccl-cpu_us'] / om - 1):+.1f}% | {r['omnireduce_us']:,.0f} | "
            f"{r['omnireduce_us'] / om:.2f}× |")
    return lines


def findings(rows: Sequence[dict]) -> list[str]:
    """What the table shows, read from the rows themselves."""
    out = []
    for overlap in dict.fromkeys(r["overlap"] for r in rows):
        mine = [r for r in rows if r["overlap"] == overlap]
        lo, hi = min(mine, key=lambda r: r["density"]), max(mine, key=lambda r: r["density"])
        out.append(f"{overlap} placement: OmNICCL runs {hi['ring_us'] / hi['omniccl_us']:.2f}× the ring's speed "
                   f"at density {hi['density']:g} and {lo['ring_us'] / lo['omniccl_us']:.2f}× at density "
                   f"{lo['density']:g}: the fewer non-zero blocks, the less crosses the links.")
    tx1 = [100 * (r["omniccl tx1_us"] / r["omniccl_us"] - 1) for r in rows]
    cpu = [100 * (r["omniccl-cpu_us"] / r["omniccl_us"] - 1) for r in rows]
    orr = [r["omnireduce_us"] / r["omniccl_us"] for r in rows]
    out.append(f"One Tx spot instead of two (no double buffering) costs {min(tx1):+.2f}% to {max(tx1):+.2f}%.")
    out.append(f"Aggregating on the host CPU instead of the NIC (omniccl-cpu) is {min(cpu):.1f}% to "
               f"{max(cpu):.1f}% slower.")
    out.append(f"OmNICCL's gain over OmniReduce (its time over OmNICCL's) is {min(orr):.2f}× to {max(orr):.2f}×"
               + (" (below 1: OmniReduce is faster)" if min(orr) < 1 else "") + ". OmniReduce's N dedicated "
               "aggregators bring N more machines and links, and its polling threads keep those links busy "
               "(docs/model.md §10.6).")
    return out


def reproduce(out: str, nodes: int = 8, nbytes: int = 128 << 20, overlaps: Sequence[str] = ("random", "all"),
              densities: Sequence[float] = DENSITIES, command: str = "") -> list[dict]:
    """Run the sweep, write ``out.{json,csv,md}`` and print the table; returns the records."""
    rows = sweep(nodes, nbytes, overlaps, densities)
    about = (f"{nbytes >> 20} MiB float32 AllReduce per node on {nodes} nodes, model executor, profile "
             f"{PROFILE}, 256-element blocks; columns after the speedup compare with omniccl. "
             f"Also writes {out}.json and {out}.csv.")
    write_result_files(out, rows, page(command, SCRIPT, about, table(rows), findings(rows)))
    print("\n".join(table(rows)))
    return rows
