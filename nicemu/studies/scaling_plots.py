"""Figures of a topology-scaling sweep (the records of :mod:`nicemu.studies.scale_topology`).

The sweep draws them itself; ``scripts/plot_scaling.py PREFIX`` (:func:`redraw`)
redraws them from a finished sweep's JSON without recomputing anything.

Two figures, one panel per variant (``unidirectional``, ...):

* ``PREFIX_time_vs_nodes.png``: emulated AllReduce time against the node count
  N, log-log, one line per (algorithm, message size) for a few sizes.
* ``PREFIX_gain_heatmap.png``: DirectReduce's latency reduction over the host
  ring, ``1 - t_directreduce / t_ring``, with x = M/N (bytes per node, in
  log-spaced bins) and y = N; every cell is annotated with the percentage and
  the message size M it came from.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from nicemu.sizes import format_size

ALGO_NAMES = {"ring": "ring", "directreduce": "DirectReduce"}
ALGO_STYLE = {"ring": ("--", "o"), "directreduce": ("-", "s")}
PAPER_SIZES = [1 << 10, 1 << 18, 1 << 28, 1 << 30]   # the message sizes the DirectReduce paper shows


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def algo_name(algo: str) -> str:
    return ALGO_NAMES.get(algo, algo)


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def pick_sizes(sizes: Sequence[int], most: int = 4) -> list[int]:
    """A few message sizes to draw: the paper's sizes when the sweep has them, else evenly spread ones."""
    sizes = sorted(set(sizes))
    paper = [s for s in PAPER_SIZES if s in sizes]
    if len(paper) >= min(3, len(sizes)):
        return paper
    if len(sizes) <= most:
        return sizes
    step = (len(sizes) - 1) / (most - 1)
    return sorted({sizes[round(i * step)] for i in range(most)})


def format_bytes(x: float) -> str:
    """Bytes per node as a readable label: 1/256 B, 4 B, 64 KiB, 1 MiB."""
    if x < 1:
        inv = 1 / x
        return f"1/{inv:.0f} B" if abs(inv - round(inv)) < 1e-9 else f"{x:.3g} B"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if x >= size:
            v = x / size
            return f"{v:.0f} {unit}" if abs(v - round(v)) < 1e-9 else f"{v:.3g} {unit}"
    return f"{x:.0f} B" if abs(x - round(x)) < 1e-9 else f"{x:.3g} B"


def _node_label(k: int, nodes: int, dims: int = 6) -> str:
    return f"{nodes:,}\n({k}^{dims})"


def plot_time_vs_nodes(records: Sequence[dict], path: str | Path, title: str) -> None:
    """Emulated time vs N, log-log; one line per (algorithm, size) for a few sizes; a panel per variant."""
    plt = _pyplot()
    variants = _unique(r["variant"] for r in records)
    algos = _unique(r["algo"] for r in records)
    sizes = pick_sizes([r["bytes"] for r in records])
    colors = {s: f"C{i}" for i, s in enumerate(sizes)}
    fig, axes = plt.subplots(1, len(variants), figsize=(8.5 * len(variants), 5.6), squeeze=False)
    for ax, variant in zip(axes[0], variants):
        rows = [r for r in records if r["variant"] == variant]
        ks = sorted({(r["nodes"], r["k"]) for r in rows})
        for size in sizes:
            for algo in algos:
                pts = sorted((r["nodes"], r["emulated_us"]) for r in rows
                             if r["bytes"] == size and r["algo"] == algo)
                if not pts:
                    continue
                ls, marker = ALGO_STYLE.get(algo, (":", "^"))
                ax.loglog([p[0] for p in pts], [p[1] for p in pts], ls=ls, marker=marker,
                          color=colors[size], label=f"M = {format_size(size)}, {algo_name(algo)}")
        ax.set_xticks([n for n, _ in ks])
        ax.set_xticklabels([_node_label(k, n) for n, k in ks])
        ax.minorticks_off()
        ax.set_xlabel("nodes N (6D torus K^6)")
        ax.set_ylabel("emulated AllReduce time (µs)")
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(f"{variant} links", fontsize=10)
        ax.legend(fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(0, -0.2), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _bin_width(sizes: Sequence[int]) -> int:
    """Width of an M/N bin in powers of two: the sweep's size step, clamped to x2 .. x4 (x4 gives 2)."""
    sizes = sorted(set(sizes))
    steps = [math.log2(b / a) for a, b in zip(sizes, sizes[1:])]
    return min(2, max(1, round(min(steps)))) if steps else 2


def gain_grid(records: Sequence[dict], variant: str, algo: str = "directreduce"):
    """(ks, nodes, centres, gain %, M) for the heat map: rows per N, columns = log-spaced M/N bins.

    A cell holds the point whose M/N lies closest to the bin centre (only one can
    fall in a bin when the bin is as wide as the sweep's size step).
    """
    rows = [r for r in records if r["variant"] == variant and r["algo"] == algo
            and r.get("gain_vs_ring") is not None]
    if not rows:
        return None
    width = _bin_width([r["bytes"] for r in records])
    ks = sorted({(r["nodes"], r["k"]) for r in rows})
    col = {id(r): math.floor(math.log2(r["bytes_per_node"]) / width + 0.5) for r in rows}
    lo, hi = min(col.values()), max(col.values())
    ncols = hi - lo + 1
    centres = [2.0 ** (width * (lo + c)) for c in range(ncols)]
    gain = [[None] * ncols for _ in ks]
    size = [[None] * ncols for _ in ks]
    dist = [[math.inf] * ncols for _ in ks]
    row_of = {n: i for i, (n, _) in enumerate(ks)}
    for r in rows:
        i, j = row_of[r["nodes"]], col[id(r)] - lo
        d = abs(math.log2(r["bytes_per_node"]) - math.log2(centres[j]))
        if d < dist[i][j]:
            dist[i][j], gain[i][j], size[i][j] = d, 100.0 * r["gain_vs_ring"], r["bytes"]
    return ks, centres, gain, size, width


def plot_gain_heatmap(records: Sequence[dict], path: str | Path, title: str) -> bool:
    """Heat map of DirectReduce's gain over ring (x = M/N bins, y = N); False if there is nothing to draw."""
    variants = [v for v in _unique(r["variant"] for r in records) if gain_grid(records, v)]
    if not variants:
        return False
    import numpy as np
    plt = _pyplot()
    from matplotlib.colors import Normalize
    grids = [gain_grid(records, v) for v in variants]
    ncols = max(len(g[1]) for g in grids)
    nrows = max(len(g[0]) for g in grids)
    every = [x for g in grids for row in g[2] for x in row if x is not None]
    span = max(1.0, max(abs(x) for x in every))
    norm = Normalize(vmin=-span, vmax=span)   # symmetric: 0 % is the neutral colour
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#eeeeee")
    fig, axes = plt.subplots(len(variants), 1, squeeze=False,
                             figsize=(max(8.0, 0.95 * ncols + 2.5), (0.8 * nrows + 2.2) * len(variants)))
    for ax, variant, (ks, centres, gain, size, width) in zip(axes[:, 0], variants, grids):
        data = np.array([[np.nan if g is None else g for g in row] for row in gain], dtype=float)
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm, aspect="auto", origin="lower")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if gain[i][j] is None:
                    continue
                r, g, b, _ = cmap(norm(data[i, j]))
                ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                ax.text(j, i + 0.1, f"{data[i, j]:.1f}%", ha="center", va="center", fontsize=10,
                        fontweight="bold", color=ink)
                ax.text(j, i - 0.25, f"M={format_size(size[i][j])}", ha="center", va="center",
                        fontsize=7.5, color=ink)
        ax.set_xticks(range(len(centres)))
        ax.set_xticklabels([format_bytes(c) for c in centres], rotation=40, ha="right")
        ax.set_yticks(range(len(ks)))
        ax.set_yticklabels([f"{n:,} ({k}^6)" for n, k in ks])
        ax.set_xlabel(f"M/N: message bytes per node (log bins ×{2 ** width} wide, labelled at their centre)")
        ax.set_ylabel("nodes N")
        ax.set_title(f"{variant} links", fontsize=10)
        fig.colorbar(im, ax=ax, label="DirectReduce latency reduction vs ring (%)", pad=0.01)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def figure_titles(records: Sequence[dict]) -> tuple[str, str]:
    profile = records[0].get("profile", "?") if records else "?"
    extra = records[0].get("overrides") if records else None
    what = f"profile {profile}" + (f" ({', '.join(extra)})" if extra else "")
    return (f"AllReduce on 6D tori (model executor, float32, {what})",
            f"DirectReduce gain over host ring, 1 − t_DR / t_ring ({what})")


def write_figures(records: Sequence[dict], prefix: str | Path) -> list[str]:
    """Write both figures next to ``prefix``; return the paths written."""
    time_title, gain_title = figure_titles(records)
    written = []
    path = f"{prefix}_time_vs_nodes.png"
    plot_time_vs_nodes(records, path, time_title)
    written.append(path)
    path = f"{prefix}_gain_heatmap.png"
    if plot_gain_heatmap(records, path, gain_title):
        written.append(path)
    return written


def redraw(prefix: str | Path) -> list[str]:
    """Draw both figures again from ``prefix.json``; return the paths written."""
    records = json.loads(Path(f"{prefix}.json").read_text())
    return write_figures(records, prefix)
