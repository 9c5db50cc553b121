"""Results as users read them: an nccl-tests-style table, JSON, CSV and a plot."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from nicemu.errors import UsageError

#: the JSON/CSV record keys, in order (docs/usage.md, "Records")
KEYS = ["collective", "algo", "topology", "nodes", "ranks", "ranks_per_node", "executor", "bytes", "count", "dtype",
        "op", "root", "density", "block_size", "overlap", "iters", "emulated_us", "wall_us", "algbw_GBps",
        "busbw_GBps", "host_busy_us", "nic_busy_us", "wire_bytes", "framed_bytes", "wrong", "profile",
        "gain_vs_ring", "gain_vs_best_host", "best_host_algo", "upstream_bytes", "downstream_bytes", "spots_spilled",
        # --faults / --straggler (nicemu/bench.py): totals over the timed calls, the fault-free
        # time of the same call, emulated_us / clean_emulated_us, and the per-link breakdown
        "faults", "stragglers", "drops", "corruptions", "retransmit_bytes", "clean_emulated_us",
        "slowdown_vs_clean", "fault_links",
        # --concurrent K (nicemu/bench_concurrent.py): where the calls sit, each call's node count, the
        # slowest call alone and sharing the fabric, and every call's time (emulated_us is the slowest)
        "concurrent", "concurrent_groups", "nodes_per_call", "alone_us", "slowdown_vs_alone", "concurrent_us"]

HEADER = (f"{'size':>10} {'count':>11} {'type':>7} {'redop':>5} {'algo':>18} {'emul(us)':>12} "
          f"{'wall(us)':>10} {'algbw':>8} {'busbw':>8} {'host(us)':>10} {'nic(us)':>9} "
          f"{'wire(B)':>12} {'vs ring':>8} {'vs best':>8} {'#wrong':>6}")
UNITS = (f"{'(B)':>10} {'(elements)':>11} {'':>7} {'':>5} {'':>18} {'emulated':>12} "
         f"{'median':>10} {'(GB/s)':>8} {'(GB/s)':>8} {'busy':>10} {'busy':>9} "
         f"{'all links':>12} {'gain':>8} {'host':>8} {'':>6}")


def bus_factor(collective: str, nodes: int) -> float:
    """nccl-tests' busbw factor: 2(n-1)/n for AllReduce, (n-1)/n for ReduceScatter, AllGather and
    AllToAll (for AllToAll nccl-tests counts the (n-1)/n of each row that leaves the rank), 1 for
    Broadcast and Reduce."""
    if collective == "allreduce":
        return 2.0 * (nodes - 1) / nodes
    if collective in ("broadcast", "reduce"):
        return 1.0
    if collective in ("reducescatter", "allgather", "alltoall"):
        return (nodes - 1) / nodes
    raise ValueError(f"no busbw convention for collective '{collective}'")


def _num(value: float | int | None, fmt: str, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:{width}{fmt}}"


def table_row(r: dict) -> str:
    gains = []
    for key in ("gain_vs_ring", "gain_vs_best_host"):
        gain = r.get(key)
        gains.append(f"{'-':>8}" if gain is None else f"{100.0 * gain:7.1f}%")
    gain_s = " ".join(gains)
    return (f"{r['bytes']:>10} {r['count']:>11} {r['dtype']:>7} {r['op']:>5} {r['algo']:>18} "
            f"{_num(r['emulated_us'], '.3f', 12)} {_num(r['wall_us'], '.1f', 10)} "
            f"{_num(r['algbw_GBps'], '.3f', 8)} {_num(r['busbw_GBps'], '.3f', 8)} "
            f"{_num(r['host_busy_us'], '.2f', 10)} {_num(r['nic_busy_us'], '.2f', 9)} "
            f"{_num(r['wire_bytes'], 'd', 12)} {gain_s} {_num(r['wrong'], 'd', 6)}"
            + fault_columns(r) + concurrent_columns(r))


#: extra columns of a run with --faults or --straggler
FAULT_HEADER = f" {'vs clean':>9} {'drops':>7} {'corrupt':>7} {'resent(B)':>11}"
FAULT_UNITS = f" {'slowdown':>9} {'':>7} {'':>7} {'':>11}"


#: extra columns of a run with --concurrent K
CONCURRENT_HEADER = f" {'alone(us)':>12} {'vs alone':>9}"
CONCURRENT_UNITS = f" {'emulated':>12} {'slowdown':>9}"


def concurrent_columns(r: dict) -> str:
    if r.get("slowdown_vs_alone") is None:
        return ""
    return f" {_num(r['alone_us'], '.3f', 12)} {r['slowdown_vs_alone']:8.3f}x"


def fault_columns(r: dict) -> str:
    if r.get("slowdown_vs_clean") is None:
        return ""
    return (f" {r['slowdown_vs_clean']:8.3f}x {_num(r.get('drops'), 'd', 7)} "
            f"{_num(r.get('corruptions'), 'd', 7)} {_num(r.get('retransmit_bytes'), 'd', 11)}")


def _clean(value):
    """JSON has no inf/NaN: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: keys a record has only when the run asked for them (``--link-stats``/``--link-summary``; JSON only)
TELEMETRY_KEYS = ["link_summary", "resource_summary"]


def write_json(path: str, records: Sequence[dict]) -> None:
    with open(path, "w") as f:
        json.dump([{**{k: _clean(r.get(k)) for k in KEYS}, **{k: r[k] for k in TELEMETRY_KEYS if k in r}}
                   for r in records], f, indent=1)
        f.write("\n")


def write_csv(path: str, records: Sequence[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=KEYS)
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in KEYS})


def write_plot(path: str, records: Sequence[dict], title: str) -> None:
    """Emulated latency vs size per algorithm, and each algorithm's gain over ring."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'nicemu[plot]'") from None
    algos = [a for a in dict.fromkeys(r["algo"] for r in records)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, algo in enumerate(algos):
        color = f"C{i}"
        rows = [r for r in records if r["algo"] == algo and r["emulated_us"] is not None]
        if rows:
            ax1.loglog([r["bytes"] for r in rows], [r["emulated_us"] for r in rows], "o-",
                       color=color, label=algo)
        gains = [r for r in rows if r["gain_vs_ring"] is not None and algo != "ring"]
        if gains:
            ax2.semilogx([r["bytes"] for r in gains], [100 * r["gain_vs_ring"] for r in gains],
                         "o-", color=color, label=algo)
    ax1.set_xlabel("message size per node M (bytes)")
    ax1.set_ylabel("emulated latency (us)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    ax2.set_xlabel("message size per node M (bytes)")
    ax2.set_ylabel("latency reduction vs ring (%)")
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.grid(True, which="both", alpha=0.3)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_result_files(stem: str | Path, rows: Sequence[dict], table: Sequence[str]) -> None:
    """A sweep as ``stem.json``, ``stem.csv`` and a Markdown ``stem.md`` (a results page under docs/results)."""
    out = Path(stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps([{k: _clean(v) for k, v in r.items()} for r in rows],
                                                   indent=1) + "\n")
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        # the union of the rows' keys in first-seen order: a page may hold rows of two tables
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
