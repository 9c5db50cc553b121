"""Wall time and peak memory of the model executor for the sparse AllReduce algorithms.

Builds the benchmark block masks (``pattern_mask`` of every node, as in
``np.stack([pattern_mask(n, N, count, B, d, overlap, seed) for n in range(N)])``)
and times ``plan_sparse`` and ``time_sparse_plan`` (the two halves of
``model_sparse``) for each algorithm and density, each in its own child
process so that its peak resident memory (``getrusage`` max RSS, like
``/usr/bin/time -v``) is its own. With ``packed`` the masks are handed over
bit-packed (``PackedMasks``: 1/8 of the memory of the bool array) and built
without ever holding the bool array; the result is the same.

    from nicemu.studies import sparse_model_bench
    row = sparse_model_bench.run_one(Bench(topology="torus:3^4", size=1 << 20), "omniccl", 0.1)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nicemu.collectives import PackedMasks, names, plan_sparse, sparse_config, time_sparse_plan
from nicemu.collectives.schedules.sparse_patterns import nblocks_of, pattern_mask
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology


@dataclass
class Bench:
    """What every run of a bench shares."""

    topology: str = "torus:4^6"          # only its node count is used
    size: int = 128 << 20                # bytes per node
    itemsize: int = 4
    block_size: int = 256
    overlap: str = "random"
    seed: int = 0
    profile: str = "omniccl-paper"
    sets: list[str] = field(default_factory=list)   # profile overrides
    packed: bool = False


def default_algos() -> list[str]:
    return names(kind="sparse")


def _status_kib(name: str) -> int | None:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM), None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
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
                packed: bool) -> np.ndarray | PackedMasks:
    """The nodes' block masks, row by row (never a list of rows plus their stack)."""
    nb = nblocks_of(count, block)
    if packed:
        bits = np.empty((nodes, (nb + 7) // 8), dtype=np.uint8)
        for n in range(nodes):
            bits[n] = np.packbits(pattern_mask(n, nodes, count, block, density, overlap, seed))
        return PackedMasks(bits, nb)
    masks = np.empty((nodes, nb), dtype=bool)
    for n in range(nodes):
        masks[n] = pattern_mask(n, nodes, count, block, density, overlap, seed)
    return masks


def run_one(b: Bench, algo: str, density: float) -> dict:
    """Time one algorithm at one density in this process; the record of the run."""
    nodes, count = parse_topology(b.topology).nodes, b.size // b.itemsize
    prof = load_profile(b.profile, b.sets)
    t0 = time.perf_counter()
    masks = build_masks(nodes, count, b.block_size, density, b.overlap, b.seed, b.packed)
    t_masks = time.perf_counter() - t0
    rss_masks = _status_kib("VmRSS")
    peak_reset = _reset_peak()
    cfg = sparse_config(algo, nodes, block_size=b.block_size)
    c0 = time.process_time()
    t0 = time.perf_counter()
    plan = plan_sparse(cfg, masks)
    t1 = time.perf_counter()
    timing = time_sparse_plan(plan, prof, b.itemsize)
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "topology": b.topology, "nodes": nodes, "bytes_per_node": b.size, "algo": algo,
        "density": density, "overlap": b.overlap, "packed": b.packed,
        "nblocks": nblocks_of(count, b.block_size), "rounds": len(plan.rounds),
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


_CHILD = ("import json, sys; from nicemu.studies.sparse_model_bench import Bench, run_one; "
          "a = json.loads(sys.argv[1]); print(json.dumps(run_one(Bench(**a['bench']), a['algo'], a['density'])))")


def run_child(b: Bench, algo: str, density: float) -> dict:
    """``run_one`` in a fresh Python process (its peak memory is its own), plus the process's wall
    time and the machine's load; raises RuntimeError with the child's stderr if it fails."""
    t0 = time.perf_counter()
    arg = json.dumps({"bench": asdict(b), "algo": algo, "density": density})
    out = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["process_wall_s"] = round(time.perf_counter() - t0, 2)
    row["load_avg_1min"] = round(os.getloadavg()[0], 2)     # other processes on the machine
    return row


def summary_line(b: Bench, row: dict) -> str:
    return (f"{b.topology} {b.size >> 20} MiB d={row['density']:<5} {row['algo']:<12} rounds {row['rounds']:>6}  "
            f"masks {row['masks_s']:7.2f} s  plan {row['plan_s']:7.2f} s  time {row['time_s']:7.2f} s  "
            f"model {row['model_s']:7.2f} s (cpu {row['model_cpu_s']:.2f} s)  "
            f"max RSS {row['max_rss_MiB']:8.1f} MiB "
            f"(masks {row['rss_after_masks_MiB']} MiB, model peak {row['model_peak_rss_MiB']} MiB)  "
            f"emulated {row['emulated_us']:.3f} us")


def run_all(b: Bench, algos: list[str], densities: list[float], json_path: str | None = None) -> list[dict]:
    """Every (density, algorithm) in its own process; prints a line per run and appends it to
    ``json_path`` (one JSON object per line) if given."""
    rows = []
    for d in densities:
        for algo in algos:
            row = run_child(b, algo, d)
            rows.append(row)
            print(summary_line(b, row), flush=True)
            if json_path:
                with open(json_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows
