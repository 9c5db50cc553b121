"""What ``--link-stats``, ``--trace`` and ``--plot-links`` write: per-link telemetry, traces, pictures.

The statistics come from :class:`nicemu.nic.telemetry.LinkStats` (one per bench record);
this module only formats them. The JSON form is a list with one entry per record::

    [{"algo": "ring", "bytes": 1024, "collective": ..., "topology": ..., "emulated_us": ...,
      "links": [{"src", "dst", "dim", "dir", "bytes", "framed_bytes", "busy_us", "utilization"}, ...],
      "resources": [{"node", "resource", "bytes", "busy_us", "utilization"}, ...]}, ...]

CSV has one row per link or resource with the record's ``algo`` and ``bytes`` in front and a
``kind`` column (``link`` or the resource name). The files are written a row at a time, so the
3 million links of ``torus:8^6`` stream out without a list of dicts in memory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from nicemu.errors import UsageError
from nicemu.nic.telemetry import RESOURCES, LinkStats


def _link_columns(stats: LinkStats) -> list[list]:
    """The link table as Python lists (whole numbers as ints, so they print without a fraction)."""
    t = stats.link_table()
    return [t["src"].tolist(), t["dst"].tolist(), t["dim"].tolist(), t["dir"].tolist(),
            _whole(t["bytes"]), _whole(t["framed_bytes"]), t["busy_us"].tolist(), t["utilization"].tolist()]


def _resource_columns(stats: LinkStats, quoted: bool = True) -> list[list]:
    t = stats.resource_table()
    names = [json.dumps(name) if quoted else name for name in RESOURCES]
    return [t["node"].tolist(), [names[k] for k in t["resource"].tolist()], _whole(t["bytes"]),
            t["busy_us"].tolist(), t["utilization"].tolist()]


def _whole(values: np.ndarray) -> list:
    """Byte counts (whole numbers below 2**53) as ints; framed bytes with fractional headers stay floats."""
    as_int = values.astype(np.int64)
    return as_int.tolist() if np.array_equal(as_int, values) else values.tolist()


def write_link_stats(path: str, entries: Sequence[dict]) -> None:
    """Write ``entries`` (record head keys plus ``stats``) as JSON, or as CSV when ``path`` ends in .csv.
    Rows are formatted in one pass per record (3 million links take a few seconds)."""
    if path.lower().endswith(".csv"):
        _write_csv(path, entries)
    else:
        _write_json(path, entries)


def _write_json(path: str, entries: Sequence[dict]) -> None:
    with open(path, "w") as f:
        f.write("[")
        for i, entry in enumerate(entries):
            stats: LinkStats = entry["stats"]
            head = {k: v for k, v in entry.items() if k != "stats"}
            head["emulated_us"] = stats.emulated_us
            f.write(("," if i else "") + "\n" + json.dumps(head)[:-1] + ', "links": [\n')
            f.write(",\n".join([f'{{"src": {a}, "dst": {b}, "dim": {c}, "dir": {d}, "bytes": {e}, '
                                 f'"framed_bytes": {g}, "busy_us": {h!r}, "utilization": {u!r}}}'
                                 for a, b, c, d, e, g, h, u in zip(*_link_columns(stats))]))
            f.write('],\n"resources": [\n')
            f.write(",\n".join([f'{{"node": {a}, "resource": {b}, "bytes": {c}, "busy_us": {h!r}, '
                                 f'"utilization": {u!r}}}' for a, b, c, h, u in zip(*_resource_columns(stats))]))
            f.write("]}")
        f.write("\n]\n")


def _write_csv(path: str, entries: Sequence[dict]) -> None:
    cols = ("algo", "bytes", "kind", "src", "dst", "dim", "dir", "node", "link_bytes", "framed_bytes",
            "busy_us", "utilization")
    with open(path, "w") as f:
        f.write(",".join(cols) + "\n")
        for entry in entries:
            stats: LinkStats = entry["stats"]
            lead = f"{entry['algo']},{entry['bytes']}"
            f.write("".join([f"{lead},link,{a},{b},{c},{d},,{e},{g},{h!r},{u!r}\n"
                             for a, b, c, d, e, g, h, u in zip(*_link_columns(stats))]))
            node, kind, nbytes, busy, util = _resource_columns(stats, quoted=False)
            f.write("".join([f"{lead},{b},,,,,{a},{c},,{h!r},{u!r}\n"
                             for a, b, c, h, u in zip(node, kind, nbytes, busy, util)]))


def summary_lines(summary: list[dict]) -> list[str]:
    """The table's lines under a record: per dimension and direction, utilisation and the hottest links."""
    lines = []
    for s in summary:
        if not s["bytes"]:
            continue
        hot = ", ".join(f"{h['src']} {100 * h['utilization']:.1f}%" for h in s["hottest"]) or "-"
        lines.append(f"#   links d{s['dim']} {s['dir']:+d}: {s['links']} links, {s['bytes']:,} B, utilisation "
                     f"min {100 * s['util_min']:.1f}% mean {100 * s['util_mean']:.1f}% "
                     f"max {100 * s['util_max']:.1f}%; hottest from {hot}")
    return lines


def resource_summary(stats: LinkStats) -> dict:
    """Busiest node's busy time and utilisation per resource (the record's ``resource_summary``)."""
    out = {}
    for i, name in enumerate(RESOURCES):
        busy = stats.resource_busy_us[i]
        out[name] = {"busy_us_max": float(busy.max(initial=0.0)),
                     "util_max": float(stats.utilization(busy).max(initial=0.0)),
                     "bytes": int(stats.resource_bytes[i].sum())}
    return out


def plot_links(path: str, entries: Sequence[dict]) -> None:
    """``--plot-links``: for a torus, a heatmap of link utilisation over a 2-D slice of the nodes per
    dimension and direction, with a bar chart per dimension; for a ring or switch, bytes and busy time
    per link. One row of panels per record."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot-links needs matplotlib: pip install 'nicemu[plot]'") from None
    first: LinkStats = entries[0]["stats"]
    flat = first.ndim <= 1
    ncols = 2 if flat else 1 + first.ndim
    per = 1 if flat else 2
    fig, axes = plt.subplots(per * len(entries), ncols, figsize=(3.0 * ncols, 2.7 * per * len(entries)),
                             squeeze=False, layout="constrained")
    for r, entry in enumerate(entries):
        stats: LinkStats = entry["stats"]
        title = f"{entry['algo']} {entry.get('size', entry['bytes'])}"
        if flat:
            _plot_ring(axes[r], stats, title)
        else:
            _plot_torus(axes[2 * r], axes[2 * r + 1], stats, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_ring(axes, stats: LinkStats, title: str) -> None:
    nodes = np.arange(stats.nodes)
    slots = [(slot, label) for slot, label in (((0, "+1"),) if stats.switched else ((0, "+1"), (1, "-1")))
             if stats.link_bytes[:, 0, slot].any()] or [(0, "+1")]
    width = 0.8 / len(slots)
    for k, (slot, label) in enumerate(slots):
        axes[0].bar(nodes + k * width, stats.link_bytes[:, 0, slot] / 1e6, width, label=f"dir {label}")
        axes[1].bar(nodes + k * width, stats.link_busy_us[:, 0, slot], width, label=f"dir {label}")
    axes[0].set_title(f"{title}: bytes per link", fontsize=9)
    axes[0].set(xlabel="source node", ylabel="MB")
    axes[1].set_title(f"{title}: busy time per link", fontsize=9)
    axes[1].set(xlabel="source node", ylabel="busy (µs)")
    axes[1].axhline(stats.emulated_us, color="k", lw=0.8, ls="--", label="call time")
    for ax in axes[:2]:
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)


def _plot_torus(top, bottom, stats: LinkStats, title: str) -> None:
    """Per dimension, a heatmap of link utilisation over a 2-D slice of the nodes (coordinates 0 and 1,
    the others 0), direction +1 on top and -1 below; on the left the mean and max utilisation per
    dimension and the busiest node's resources."""
    util = stats.utilization(stats.link_busy_us)
    k0, k1 = stats.shape[0], stats.shape[1]
    ids = np.arange(k0)[:, None] * stats.strides[0] + np.arange(k1)[None, :] * stats.strides[1]
    im = None
    for d in range(stats.ndim):
        for row, slot, label in ((top, 0, "+1"), (bottom, 1, "-1")):
            ax = row[1 + d]
            im = ax.imshow(util[ids, d, slot], vmin=0.0, vmax=1.0, cmap="viridis", origin="lower")
            ax.set_title(f"dim {d}, dir {label}", fontsize=9)
            ax.set_xlabel("coordinate 1", fontsize=8)
            ax.set_ylabel("coordinate 0", fontsize=8)
    if im is not None:
        top[-1].figure.colorbar(im, ax=[top[-1], bottom[-1]], shrink=0.8, label="link utilisation")
    dims = np.arange(stats.ndim)
    top[0].bar(dims - 0.2, util.mean(axis=(0, 2)), 0.4, label="mean")
    top[0].bar(dims + 0.2, util.max(axis=(0, 2)), 0.4, label="max")
    top[0].set_title(f"{title}: links", fontsize=9)
    top[0].set(xlabel="dimension", ylabel="utilisation", ylim=(0, 1.05))
    top[0].legend(fontsize=7)
    res = stats.utilization(stats.resource_busy_us).max(axis=1)
    bottom[0].bar(np.arange(len(RESOURCES)), res)
    bottom[0].set_xticks(np.arange(len(RESOURCES)), [r.replace("_", " ") for r in RESOURCES], rotation=30,
                         fontsize=7)
    bottom[0].set_title("busiest node's resources", fontsize=9)
    bottom[0].set(ylabel="utilisation", ylim=(0, 1.05))
