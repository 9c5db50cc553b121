"""What ``nicemu serve`` prints and writes: a table per algorithm, JSON records, per-request CSV, CDF plot."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nicemu.errors import UsageError

HEADER = (f"{'algo':>13} {'TTFT mean':>10} {'p50':>9} {'p99':>9} {'TPOT mean':>10} {'p50':>8} {'p99':>8} "
          f"{'E2E p50':>9} {'p99':>9} {'tok/s':>8} {'comm%':>6} {'host comm':>10} {'emb wire':>10} "
          f"{'TTFT':>7} {'TPOT':>7} {'preempt':>8} {'KV peak':>8}")
UNITS = (f"{'':>13} {'(ms)':>10} {'(ms)':>9} {'(ms)':>9} {'(ms)':>10} {'(ms)':>8} {'(ms)':>8} "
         f"{'(ms)':>9} {'(ms)':>9} {'output':>8} {'':>6} {'(ms)':>10} {'(MB)':>10} "
         f"{'vs ring':>7} {'vs ring':>7} {'':>8} {'':>8}")


LINESTYLES = ("-", "--", ":", "-.")


def _f(value, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}{fmt}}"


def _pct(value) -> str:
    return f"{'-':>7}" if value is None else f"{100 * value:6.1f}%"


def table_row(r: dict) -> str:
    return (f"{r['algo']:>13} {_f(r['ttft_ms_mean'], '.2f', 10)} {_f(r['ttft_ms_p50'], '.2f', 9)} "
            f"{_f(r['ttft_ms_p99'], '.2f', 9)} {_f(r['tpot_ms_mean'], '.3f', 10)} {_f(r['tpot_ms_p50'], '.3f', 8)} "
            f"{_f(r['tpot_ms_p99'], '.3f', 8)} {_f(r['e2e_ms_p50'], '.1f', 9)} {_f(r['e2e_ms_p99'], '.1f', 9)} "
            f"{_f(r['throughput_tok_s'], '.0f', 8)} {_f(100 * r['comm_share'], '.1f', 6)} "
            f"{_f(r['host_comm_ms'], '.1f', 10)} {_f(r['embedding_wire_bytes'] / 1e6, '.1f', 10)} "
            f"{_pct(r.get('ttft_gain_vs_ring'))} {_pct(r.get('tpot_gain_vs_ring'))} "
            f"{_f(r.get('preemptions'), 'd', 8)} {_pct(r.get('kv_peak_fraction')):>8}")


def write_json(path: str, records: Sequence[dict]) -> None:
    Path(path).write_text(json.dumps(list(records), indent=1) + "\n")


def write_request_csv(path: str, rows: Sequence[dict]) -> None:
    """One row per (algorithm, request)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["algo"])
        writer.writeheader()
        writer.writerows(rows)


def check_plot() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'nicemu[plot]'") from None


def time_split_bars(records: Sequence[dict]) -> tuple[list[str], dict[str, list[float]]]:
    """Algorithms and, per part (queue, compute, one per kind of communication), each one's mean ms
    (the records' ``e2e_split_ms``; an algorithm without a part gets 0)."""
    algos = [r["algo"] for r in records]
    parts: dict[str, list[float]] = {}
    for r in records:
        for part in r["e2e_split_ms"]:
            parts.setdefault(part, [0.0] * len(records))
    for i, r in enumerate(records):
        for part, ms in r["e2e_split_ms"].items():
            parts[part][i] = ms
    return algos, parts


def write_cdf_plot(path: str, rows: Sequence[dict], records: Sequence[dict], title: str) -> None:
    """TTFT and TPOT CDFs, one line per algorithm (rows: the per-request CSV rows), and a stacked bar per
    algorithm of where a mean request's end-to-end time went (records: ``e2e_split_ms``)."""
    check_plot()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    algos = list(dict.fromkeys(r["algo"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(16.5, 4.6))
    for ax, key, label in ((axes[0], "ttft_ms", "time to first token (ms)"),
                           (axes[1], "tpot_ms", "time per output token (ms)")):
        for i, algo in enumerate(algos):
            values = np.sort([r[key] for r in rows if r["algo"] == algo and r[key] is not None])
            if values.size:
                ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", color=f"C{i}",
                        linestyle=LINESTYLES[i % len(LINESTYLES)], label=algo)   # close curves stay visible
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    ax = axes[2]
    names, parts = time_split_bars(records)
    bottom = np.zeros(len(names))
    colors = {"queue": "0.75", "compute": "0.45"}
    for j, (part, ms) in enumerate(parts.items()):
        ax.bar(names, ms, bottom=bottom, label=part, color=colors.get(part, f"C{j}"))
        bottom += np.asarray(ms)
    for x, r in enumerate(records):
        ax.annotate(f"{r['e2e_ms_mean']:.0f}", (x, r["e2e_ms_mean"]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("mean end-to-end latency (ms)")
    ax.set_title("where a mean request's time went", fontsize=10)
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
