"""When does in-NIC reduction pay off? DirectReduce against the host ring and the best host algorithm.

Three sweeps with the model executor (``model_time``, float32 AllReduce), each
point timing ``directreduce``, ``directreduce-pipelined`` (segments forwarded
across ring steps, sized to the NIC memory, docs/model.md §4.6), ``ring`` and
``host-best`` (the fastest host algorithm of the registry for that call,
docs/model.md §16.4):

- **sizes x nodes** on the ``400g-gen5`` profile: message sizes 1 KiB .. 1 GiB
  on rings of 4 to 64 nodes, 2D and 3D tori, and ``switch:N`` (where MPICH's
  recursive doubling and Rabenseifner send to their partners in one hop);
- **link x PCIe**: the same sizes with ``link.bandwidth_GBps`` at 100, 200 and
  400 Gb/s and ``pcie.bandwidth_GBps`` at Gen4 and Gen5 x16 (profile overrides,
  as ``--set``), on a few topologies;
- **ranks per node**: the same sizes with 1, 2, 4 and 8 ranks per node sharing
  its host DRAM (``--ranks-per-node``, docs/model.md §19), each point also timed
  without its intra-node phases (the rails alone) to separate the two.

Every record carries the times and ``gain_vs_ring = 1 - t_dr / t_ring``,
``gain_vs_best_host = 1 - t_dr / t_host_best``; where the grid times the
pipelined variant, ``pipelined_us`` and its gains over host-best, the ring and
plain DirectReduce (``pipelined_gain_vs_*``; None where a grid leaves it out). ``run`` writes PREFIX.json,
PREFIX.csv, the page PREFIX.md and three heat maps beside it.

    from nicemu.studies import nic_payoff
    records = nic_payoff.sweep(quick=True)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from nicemu import sweep as grid_sweep
from nicemu.collectives import model_time, segment_elems
from nicemu.grid import load_grid
from nicemu.nic.profile import Profile, load_profile
from nicemu.report import write_result_files
from nicemu.sizes import format_size
from nicemu.studies.pages import page
from nicemu.topologies import parse_topology

SCRIPT = "nic_payoff"
PROFILE = "400g-gen5"
DTYPE, ITEMSIZE = "float32", 4
ALGO, RING, HOST_BEST = "directreduce", "ring", "host-best"
PIPELINED = "directreduce-pipelined"
#: the record keys of the pipelined variant (None where the grid does not time it)
PIPELINED_KEYS = ("pipelined_us", "pipelined_segment_bytes", "pipelined_gain_vs_best_host",
                  "pipelined_gain_vs_ring", "pipelined_gain_vs_directreduce")

#: the points of the study and of its quick mode (relative to the repository root); ``tag`` names the sweep
GRID = "sweeps/nic_payoff.yml"
QUICK_GRID = "sweeps/nic_payoff_quick.yml"
#: PCIe x16 rates after encoding and TLP/DLLP overhead (docs/model.md §7: Gen4 as directreduce-paper, Gen5 as
#: 400g-gen5): the names the page gives the grid's ``pcie.bandwidth_GBps`` values
PCIE_GBPS = {"Gen4": 25.0, "Gen5": 50.0}

SIZE_SWEEP, LINK_SWEEP, RANK_SWEEP = "sizes_nodes", "link_pcie", "ranks_per_node"
FIGURES = {SIZE_SWEEP: f"{SCRIPT}_sizes.png", LINK_SWEEP: f"{SCRIPT}_links.png",
           RANK_SWEEP: f"{SCRIPT}_ranks.png"}


# --------------------------------------------------------------------------
# The sweeps


def rail_profile(profile: Profile, ranks_per_node: int) -> Profile:
    """What one rail of a node with that many ranks sees: its share of host DRAM and DDIO (model.md §19)."""
    mem = profile.host.memory_GBps / ranks_per_node
    return profile.with_overrides([f"host.memory_GBps={'.inf' if mem == float('inf') else repr(mem)}",
                                   f"host.ddio_KiB={profile.host.ddio_KiB / ranks_per_node!r}"])


_LINK, _PCIE = "link.bandwidth_GBps", "pcie.bandwidth_GBps"


def points(grid: str | Path = GRID, profile_name: str | None = None) -> list[dict]:
    """The grid's points, with ``profile_name`` (if given) as every point's profile."""
    pts = load_grid(str(grid)).points()
    return [{**p, "profile": profile_name} if profile_name else p for p in pts]


def _record(rows: dict[str, dict], profile: Profile) -> dict:
    """One study record from the algorithms' sweep records of one point."""
    dr, ring, best = rows[ALGO], rows[RING], rows[HOST_BEST]
    sets = [f"{k}={dr[k]:g}" for k in (_LINK, _PCIE) if dr.get(k) is not None]
    prof = profile.with_overrides(sets)
    nodes = parse_topology(dr["topology"])
    rec = {"sweep": dr["tag"], "topology": dr["topology"], "kind": dr["topology"].split(":")[0],
           "nodes": nodes.nodes, "ranks_per_node": dr["ranks_per_node"], "bytes": dr["bytes"],
           "bytes_per_node": dr["bytes"] / nodes.nodes, "dtype": DTYPE,
           "link_Gbps": 8 * prof.link.bandwidth_GBps, "pcie_GBps": prof.pcie.bandwidth_GBps,
           "profile": prof.name, "overrides": ";".join(sets),
           "directreduce_us": float(dr["emulated_us"]), "ring_us": float(ring["emulated_us"]),
           "host_best_us": float(best["emulated_us"]), "best_host_algo": best["best_host_algo"],
           "gain_vs_ring": 1.0 - dr["emulated_us"] / ring["emulated_us"],
           "gain_vs_best_host": 1.0 - dr["emulated_us"] / best["emulated_us"]}
    rec.update(dict.fromkeys(PIPELINED_KEYS))
    if PIPELINED in rows:
        add_pipelined(rec, rows[PIPELINED], prof, nodes)
    rec.update(dict.fromkeys(("rail_directreduce_us", "rail_host_best_us", "rail_best_host_algo",
                              "rail_gain_vs_best_host", "intra_node_share", "rail_pipelined_us",
                              "rail_pipelined_gain_vs_best_host")))   # the ranks sweep only
    if rec["sweep"] == RANK_SWEEP:
        add_rails(rec, prof)
    rec["pcie"] = next((g for g, v in PCIE_GBPS.items() if v == rec["pcie_GBps"]), f"{rec['pcie_GBps']:g} GB/s")
    return rec


def add_pipelined(rec: dict, row: dict, profile: Profile, nodes) -> None:
    """The pipelined variant's time, its segment (docs/model.md §4.6: sized so a group fits the NIC memory)
    and its gains over host-best, the ring and plain DirectReduce."""
    t = float(row["emulated_us"])
    seg = segment_elems(profile, ITEMSIZE, PIPELINED, "allreduce", nodes)
    rec.update({"pipelined_us": t, "pipelined_segment_bytes": None if seg is None else seg * ITEMSIZE,
                "pipelined_gain_vs_best_host": 1.0 - t / rec["host_best_us"],
                "pipelined_gain_vs_ring": 1.0 - t / rec["ring_us"],
                "pipelined_gain_vs_directreduce": 1.0 - t / rec["directreduce_us"]})


def add_rails(rec: dict, profile: Profile) -> None:
    """The rails alone (phase 2 of docs/model.md §19.3: the algorithm on the nodes with a 1/P shard and a
    1/P share of DRAM) as ``rail_*`` keys, and the intra-node phases' share of host-best's time."""
    p = rec["ranks_per_node"]
    nodes = parse_topology(rec["topology"])
    rail = rail_profile(profile, p)
    shard = rec["bytes"] // ITEMSIZE // p
    r_dr = model_time("allreduce", ALGO, nodes, rail, shard, DTYPE).emulated_us
    r_best = model_time("allreduce", HOST_BEST, nodes, rail, shard, DTYPE)
    rec.update({"rail_directreduce_us": float(r_dr), "rail_host_best_us": float(r_best.emulated_us),
                "rail_best_host_algo": r_best.chosen_algo,
                "rail_gain_vs_best_host": 1.0 - r_dr / r_best.emulated_us,
                "intra_node_share": 1.0 - r_best.emulated_us / rec["host_best_us"]})
    if rec["pipelined_us"] is not None:
        r_pl = model_time("allreduce", PIPELINED, nodes, rail, shard, DTYPE).emulated_us
        rec.update({"rail_pipelined_us": float(r_pl),
                    "rail_pipelined_gain_vs_best_host": 1.0 - r_pl / r_best.emulated_us})


def sweep(quick: bool = False, profile_name: str = PROFILE, jobs: int | None = None, progress: bool = False,
          grid: str | Path | None = None) -> list[dict]:
    """The grid's points on the model executor (as ``nicemu sweep`` runs them), one record per (sweep,
    topology, ranks per node, link, PCIe, size) with the algorithms' times and their gains."""
    pts = points(grid or (QUICK_GRID if quick else GRID), profile_name)
    by_point: dict[tuple, dict[str, dict]] = {}
    for r in grid_sweep.records(pts, jobs, progress):
        key = (r["tag"], r["topology"], r["ranks_per_node"], r.get(_LINK), r.get(_PCIE), r["bytes"])
        by_point.setdefault(key, {})[r["algo"]] = r
    profile = load_profile(profile_name)
    return [_record(rows, profile) for rows in by_point.values()]


# --------------------------------------------------------------------------
# Reading the records


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _of(records: Sequence[dict], sweep_name: str) -> list[dict]:
    return [r for r in records if r["sweep"] == sweep_name]


def _rows(records: Sequence[dict], key) -> list:
    return list(dict.fromkeys(key(r) for r in records))


def gain_table(records: Sequence[dict], key: str, row_key, row_label) -> list[str]:
    """Markdown: one row per row_key, one column per size, cells the gain in percent."""
    sizes = sorted({r["bytes"] for r in records})
    cell = {(row_key(r), r["bytes"]): r[key] for r in records}
    lines = ["| " + " | ".join(["", *(format_size(m) for m in sizes)]) + " |",
             "|---|" + "---:|" * len(sizes)]
    for row in _rows(records, row_key):
        lines.append("| " + " | ".join([row_label(row), *(
            _pct(cell[(row, m)]) if (row, m) in cell else "—" for m in sizes)]) + " |")
    return lines


def host_best_picks(records: Sequence[dict]) -> list[str]:
    """Markdown: which host algorithm host-best ran, per topology, as size ranges."""
    lines = ["| topology | host-best runs |", "|---|---|"]
    for topo in _rows(records, lambda r: r["topology"]):
        runs: list[list] = []
        for r in sorted((r for r in records if r["topology"] == topo), key=lambda r: r["bytes"]):
            if runs and runs[-1][0] == r["best_host_algo"]:
                runs[-1][2] = r["bytes"]
            else:
                runs.append([r["best_host_algo"], r["bytes"], r["bytes"]])
        text = ", ".join(f"`{a}` {format_size(lo)}" + (f"–{format_size(hi)}" if hi != lo else "")
                         for a, lo, hi in runs)
        lines.append(f"| {topo} | {text} |")
    return lines


def _terms(profile: Profile) -> dict[str, float]:
    """The profile's per-step fixed costs and per-byte costs (docs/model.md §1, §3.6)."""
    per_byte = {k: (0.0 if v == float("inf") else 1.0 / (1e3 * v)) for k, v in (
        ("beta", profile.link.bandwidth_GBps), ("pi", profile.pcie.bandwidth_GBps),
        ("gamma", profile.host.reduce_GBps))}
    return {**per_byte, "alpha": profile.link.latency_us, "alpha_p": profile.pcie.latency_us,
            "o_h": profile.host.overhead_us, "alpha_n": profile.nic.latency_us,
            "switch": profile.switch.latency_us}


def _ceiling(profile: Profile) -> float:
    """The large-message gain of in-NIC reduction over a bandwidth-optimal host algorithm: γ / (2β + γ)."""
    t = _terms(profile)
    return t["gamma"] / (2 * t["beta"] + t["gamma"])


def _slower(gain: float) -> str:
    """A negative gain as the ratio 'N.N×' of the times (t / t_base = 1 − gain)."""
    return f"{1 - gain:.1f}×"


def win_ranges(rows: Sequence[dict], key: str) -> list[tuple[int, int]]:
    """The maximal runs of consecutive sizes at which DirectReduce beats the baseline, as (first, last)."""
    runs: list[list[int]] = []
    prev_won = False
    for r in sorted(rows, key=lambda r: r["bytes"]):
        won = r[key] > 0
        if won and prev_won:
            runs[-1][1] = r["bytes"]
        elif won:
            runs.append([r["bytes"], r["bytes"]])
        prev_won = won
    return [(a, b) for a, b in runs]


def crossover(rows: Sequence[dict], key: str) -> int | None:
    """The smallest size from which DirectReduce beats the baseline at every larger size (None: never)."""
    runs = win_ranges(rows, key)
    return runs[-1][0] if runs and runs[-1][1] == max(r["bytes"] for r in rows) else None


def _wins(records: Sequence[dict], key: str, row_key, row_label) -> str:
    out = []
    for row in _rows(records, row_key):
        runs = win_ranges([r for r in records if row_key(r) == row], key)
        text = " and ".join(format_size(a) + (f"–{format_size(b)}" if b != a else "") for a, b in runs)
        out.append(f"{row_label(row)} {text or 'never'}")
    return ", ".join(out)


def first_chunk(r: dict) -> float:
    """Bytes of DirectReduce's first-ring chunk at a record's size (M over the first dimension's nodes)."""
    return r["bytes"] / parse_topology(r["topology"]).shape[0]


def _range(rows: Sequence[dict], key: str) -> str:
    """'a to b' in percent over rows (one value: just it)."""
    lo, hi = min(r[key] for r in rows), max(r[key] for r in rows)
    return _pct(lo) if lo == hi else f"{_pct(lo)} to {_pct(hi)}"


def has_pipelined(records: Sequence[dict]) -> bool:
    """Whether the grid timed directreduce-pipelined at every one of these records."""
    return bool(records) and all(r.get("pipelined_us") is not None for r in records)


def _nic_buffer_note(records: Sequence[dict], profile: Profile) -> str | None:
    """Why plain DirectReduce can lose again at the largest sizes (its chunks outgrow the NIC buffer), and
    what the pipelined variant, which holds only a window of segments, does there."""
    limit = profile.nic.memory_KiB * 1024
    spill = [r for r in records if first_chunk(r) > limit]
    if not spill:
        return None
    big = max(r["bytes"] for r in records)
    starts = ", ".join(f"{topo} from {format_size(min(r['bytes'] for r in spill if r['topology'] == topo))}"
                       for topo in _rows(spill, lambda r: r["topology"]))
    at_big = [r for r in records if r["bytes"] == big]
    t = _terms(profile)
    text = (f"Why plain DirectReduce can lose again at the largest sizes: the NIC keeps at most nic.memory_KiB = "
            f"{profile.nic.memory_KiB:g} KiB of a chunk it forwards (model.md §4.3). Once a chunk does not fit "
            f"({starts}), the rest goes to host memory and is read back over PCIe in every step, beside the "
            f"operand, so the PCIe read engine carries up to twice the link's bytes"
            + (f"; with PCIe x16 at {profile.pcie.bandwidth_GBps:g} GB/s, no faster than the "
               f"{profile.link.bandwidth_GBps:g} GB/s link, that read is the bottleneck"
               if t["pi"] >= t["beta"] else "")
            + f". At {format_size(big)} its gain over host-best is {_range(at_big, 'gain_vs_best_host')}.")
    if has_pipelined(at_big):
        segs = sorted({r["pipelined_segment_bytes"] for r in at_big})
        seg_text = format_size(segs[0]) + (f" to {format_size(segs[-1])}" if len(segs) > 1 else "")
        text += (f" `directreduce-pipelined` spills nothing: it forwards each reduced segment on at once, "
                 f"across ring steps, and cuts segments small enough ({seg_text} here) that a wavefront "
                 f"group's operands and results fit the NIC (model.md §4.6), so it holds only a window of a "
                 f"chunk; at {format_size(big)} it is "
                 f"{_range(at_big, 'pipelined_gain_vs_best_host')} against host-best.")
    return text


def _crossovers(records: Sequence[dict], key: str, row_key, row_label) -> str:
    out = []
    for row in _rows(records, row_key):
        c = crossover([r for r in records if row_key(r) == row], key)
        out.append(f"{row_label(row)} {format_size(c) if c else 'never'}")
    return ", ".join(out)


def findings_sizes(records: Sequence[dict], profile: Profile) -> list[str]:
    """What the sizes x nodes sweep shows, read from its records."""
    out = []
    big, small = max(r["bytes"] for r in records), min(r["bytes"] for r in records)
    at_big = [r for r in records if r["bytes"] == big]
    at_small = [r for r in records if r["bytes"] == small]
    t = _terms(profile)
    by_topo = (lambda r: r["topology"], str)
    wins = [r for r in records if r["gain_vs_best_host"] > 0]
    losses = [r for r in records if r["gain_vs_best_host"] <= 0]
    text = (f"Against host-best, DirectReduce pays off at these sizes per node: "
            f"{_wins(records, 'gain_vs_best_host', *by_topo)}.")
    if wins:
        top = max(wins, key=lambda r: r["gain_vs_best_host"])
        text += (f" At {format_size(big)} its gain is {_pct(min(r['gain_vs_best_host'] for r in at_big))} to "
                 f"{_pct(max(r['gain_vs_best_host'] for r in at_big))}; at most "
                 f"{100 * top['gain_vs_best_host']:.1f}% ({top['topology']}, {format_size(top['bytes'])}).")
    out.append(text)
    if losses:
        worst = min(at_small, key=lambda r: r["gain_vs_best_host"])
        out.append(f"At small sizes it does not pay off: at {format_size(small)} DirectReduce is "
                   f"{_slower(max(r['gain_vs_best_host'] for r in at_small))} to "
                   f"{_slower(worst['gain_vs_best_host'])} slower than host-best (the worst: {worst['topology']}). The "
                   "switch is where the host algorithms are strongest: their partners are one hop away, while "
                   "DirectReduce's ring still walks 2(p − 1) steps.")
    algos = sorted({r["best_host_algo"] for r in at_small})
    host_step = t["alpha"] + 2 * t["alpha_p"] + t["o_h"]
    nic_step = t["alpha"] + t["alpha_n"]
    pow2 = sorted({r["nodes"] for r in records if r["nodes"] > 1 and r["nodes"] & (r["nodes"] - 1) == 0})
    out.append(
        f"Why, at small sizes: the per-step fixed costs decide. A host step costs α + 2α_P + o_H = "
        f"{host_step:g} µs beyond its bytes, a DirectReduce step α + α_N = {nic_step:g} µs"
        + (" (equal: nic.latency_us is calibrated so, model.md §7)" if abs(host_step - nic_step) < 1e-12 else "")
        + f", so against the ring DirectReduce is {_pct(min(r['gain_vs_ring'] for r in at_small))} to "
        f"{_pct(max(r['gain_vs_ring'] for r in at_small))} at {format_size(small)}: it saves only the "
        "bytes of one small chunk per step and pays its first PCIe fetch and last write once. "
        f"host-best runs {', '.join(f'`{a}`' for a in algos)} there"
        + (", whose lg p steps beat the rings' 2(p − 1)"
           + (" (" + ", ".join(f"{2 * (p - 1) / (p.bit_length() - 1):.1f}× fewer for p = {p}"
                               for p in (pow2[0], pow2[-1])) + ")" if pow2 else "")
           if algos == ["recursive-doubling"] else "")
        + ".")
    ceiling = _ceiling(profile)
    extra = [r for r in at_big if r["kind"] == "torus"]
    tori_at_big = ", ".join(f"{r['topology']} {_pct(r['gain_vs_best_host'])}" for r in extra)
    big_algos = ", ".join(f"`{a}`" for a in sorted({r["best_host_algo"] for r in at_big}))
    out.append(
        f"Why, at large sizes: the bandwidth terms decide. The ring and Rabenseifner move 2(p − 1)/p · M over "
        f"the links and reduce (p − 1)/p · M on the host CPU after each transfer; DirectReduce reduces in the "
        f"NIC while the link streams, so against them its gain tends to γ / (2β + γ) = {100 * ceiling:.1f}% with "
        f"this profile (β = {1e6 * t['beta']:g} ps/B, γ = {1e6 * t['gamma']:g} ps/B). At "
        f"{format_size(big)} host-best runs {big_algos}"
        + ((": the segmented ring reduces one segment while the next arrives, so its pipeline runs at the "
            "slower of the link and the host's reduction, and DirectReduce keeps an edge over it only "
            + ("because the host's reduction (γ) is slower than the link (β) here. "
               if t["gamma"] > t["beta"] else
               "in latency terms: with this profile the link (β), not the host's reduction (γ), is the "
               "slower stage. "))
           if big_algos == "`ring-pipelined`" else ". ")
        + "What else keeps it below the ceiling: in DirectReduce's "
        "first step one PCIe read engine fetches both the chunk it sends and the operand it reduces, "
        + ("which costs about c₀(2π − β) more than the link when 2π > β, as here (PCIe x16 at "
           f"{profile.pcie.bandwidth_GBps:g} GB/s against a {profile.link.bandwidth_GBps:g} GB/s link); "
           if 2 * t["pi"] > t["beta"] else "hidden behind the link with this profile; ")
        + "c₀ = M/k₀ is the first ring's chunk"
        + (f", larger on a torus (M/{parse_topology(extra[0]['topology']).shape[0]} on {extra[0]['topology']}) "
           f"than on a ring of as many nodes, so tori stay further from the ceiling "
           f"({tori_at_big})."
           if extra else "."))
    note = _nic_buffer_note(records, profile)
    if note:
        out.append(note)
    ring_cross = _crossovers(records, "gain_vs_ring", *by_topo)
    out.append(f"Against the ring (DirectReduce paper's baseline) it pays off much earlier: from {ring_cross}; "
               f"it is never more than {-100 * min(r['gain_vs_ring'] for r in records):.1f}% slower.")
    return out


def stream_bound_us(r: dict, profile: Profile) -> float:
    """The streaming bound of a bandwidth-optimal AllReduce at a record's rates (µs): each node sends
    2(p − 1)/p · M over its link, framed (h header bytes per P-byte packet), and moves as many across PCIe,
    so no such algorithm beats 2(p − 1)/p · M · max(β(1 + h/P), π)."""
    p = r["nodes"]
    beta = (1 + profile.link.header_bytes / profile.nic.packet_bytes) / (1e3 * r["link_Gbps"] / 8)
    return 2 * (p - 1) / p * r["bytes"] * max(beta, 1 / (1e3 * r["pcie_GBps"]))


def _excess(rows: Sequence[dict], key: str, profile: Profile) -> str:
    """'a to b' percent by which the times under key exceed the rows' streaming bound."""
    xs = [r[key] / stream_bound_us(r, profile) - 1 for r in rows]
    lo, hi = min(xs), max(xs)
    return f"{100 * lo:.1f}%" if f"{100 * lo:.1f}" == f"{100 * hi:.1f}" else f"{100 * lo:.1f}% to {100 * hi:.1f}%"


def findings_pipelined(records: Sequence[dict], profile: Profile) -> list[str]:
    """What the pipelined variant adds in the sizes x nodes sweep, read from its records."""
    if not has_pipelined(records):
        return []
    out = []
    by_topo = (lambda r: r["topology"], str)
    big = max(r["bytes"] for r in records)
    at_big = [r for r in records if r["bytes"] == big]
    top = max(records, key=lambda r: r["pipelined_gain_vs_best_host"])
    out.append(f"`directreduce-pipelined` (model.md §4.6) beats host-best at: "
               f"{_wins(records, 'pipelined_gain_vs_best_host', *by_topo)}; at most "
               f"{100 * top['pipelined_gain_vs_best_host']:.1f}% ({top['topology']}, {format_size(top['bytes'])}). "
               f"At {format_size(big)} it is {_range(at_big, 'pipelined_gain_vs_best_host')} against host-best, "
               f"where plain DirectReduce is {_range(at_big, 'gain_vs_best_host')}: host-best takes "
               f"{_excess(at_big, 'host_best_us', profile)} more than the streaming bound "
               f"2(p − 1)/p · M · max(β(1 + h/P), π) that no bandwidth-optimal AllReduce beats (h = "
               f"{profile.link.header_bytes:g} B of header per P = {profile.nic.packet_bytes} B packet), "
               f"`directreduce-pipelined` {_excess(at_big, 'pipelined_us', profile)} more.")
    same = [r for r in records if r["pipelined_us"] == r["directreduce_us"]]
    faster = [r for r in records if r["pipelined_gain_vs_directreduce"] > 0]
    slower = [r for r in records if r["pipelined_gain_vs_directreduce"] < 0]
    text = (f"Against plain DirectReduce it is faster at: "
            f"{_wins(records, 'pipelined_gain_vs_directreduce', *by_topo)}")
    if faster:
        best = max(faster, key=lambda r: r["pipelined_gain_vs_directreduce"])
        text += (f"; by up to {100 * best['pipelined_gain_vs_directreduce']:.1f}% ({best['topology']}, "
                 f"{format_size(best['bytes'])})")
    text += "."
    if same:
        text += (f" They take the same time at {len(same)} of {len(records)} points, up to "
                 f"{format_size(max(r['bytes'] for r in same))}"
                 + (": there every chunk is a single segment and the two run the same schedule."
                    if all(first_chunk(r) <= r["pipelined_segment_bytes"] for r in same) else "."))
    if slower:
        worst = min(slower, key=lambda r: r["pipelined_gain_vs_directreduce"])
        alpha = profile.link.latency_us
        text += (f" It is slower at {len(slower)} point{'s' if len(slower) > 1 else ''}, by at most "
                 f"{-100 * worst['pipelined_gain_vs_directreduce']:.1f}% ({worst['topology']}, "
                 f"{format_size(worst['bytes'])})"
                 + (": while plain DirectReduce's chunks still fit the NIC it already streams each one through "
                    "the NIC at line rate, so cutting them into segments hides no host pass and each extra "
                    f"wavefront group exposes one more latency (about (S − 1)·α, α = {alpha:g} µs)."
                    if all(first_chunk(r) <= 1024 * profile.nic.memory_KiB for r in slower) else "."))
    out.append(text)
    return out


def _links(records: Sequence[dict]) -> list[int]:
    """The link rates (Gb/s) of the link x PCIe sweep, slowest first."""
    return sorted({round(r["link_Gbps"]) for r in records})


def findings_links(records: Sequence[dict], base: Profile) -> list[str]:
    """What the link x PCIe sweep shows, read from its records."""
    out = []
    big, small = max(r["bytes"] for r in records), min(r["bytes"] for r in records)
    cell = {(r["topology"], r["bytes"], round(r["link_Gbps"]), r["pcie"]): r for r in records}
    links = _links(records)
    combos = [(link, gen) for link in links for gen in PCIE_GBPS]
    for topo in _rows(records, lambda r: r["topology"]):
        cells = [f"{link}G/{gen} {_pct(cell[(topo, big, link, gen)]['gain_vs_best_host'])}"
                 for link, gen in combos if (topo, big, link, gen) in cell]
        out.append(f"{topo} at {format_size(big)}, gain over host-best: " + ", ".join(cells) + ".")
    ceilings = ", ".join(
        f"{link} Gb/s {100 * _ceiling(base.with_overrides([f'link.bandwidth_GBps={link / 8:g}'])):.1f}%"
        for link in links)
    out.append(f"The faster the link, the larger the share of a host algorithm's time that is the host's own "
               f"reduction, so the large-message gain grows with the link rate, as γ / (2β + γ) = {ceilings} "
               f"(host.reduce_GBps = {base.host.reduce_GBps:g}).")
    gen4, gen5 = list(PCIE_GBPS)[0], list(PCIE_GBPS)[-1]
    top, below = links[-1], links[-2]
    pairs = [(topo, cell.get((topo, big, top, gen4)), cell.get((topo, big, below, gen4)),
              cell.get((topo, big, top, gen5))) for topo in _rows(records, lambda r: r["topology"])]
    pairs = [p for p in pairs if all(p[1:])]
    if pairs:
        out.append(
            f"PCIe {gen4} x16 ({PCIE_GBPS[gen4]:g} GB/s) holds a {top} Gb/s link back: at {format_size(big)} the "
            f"gain with {top}G/{gen4} is " + ", ".join(
                f"{_pct(a['gain_vs_best_host'])} on {topo} ({below}G/{gen4}: {_pct(b['gain_vs_best_host'])}, "
                f"{top}G/{gen5}: {_pct(c['gain_vs_best_host'])})" for topo, a, b, c in pairs)
            + ". Data that crosses PCIe on every step (the host algorithms' chunks, DirectReduce's operands "
            "in its first ring and its results in the allgather) streams at the PCIe rate, so only with "
            f"{gen5} does a {top} Gb/s link pay its full share.")
    cross = "; ".join(_wins([r for r in records if r["topology"] == topo], "gain_vs_best_host",
                                  lambda r: (round(r["link_Gbps"]), r["pcie"]), lambda x: f"{x[0]}G/{x[1]}")
                      + f" on {topo}" for topo in _rows(records, lambda r: r["topology"]))
    out.append(f"Where it pays off against host-best: {cross}.")
    at_small = [r["gain_vs_best_host"] for r in records if r["bytes"] == small]
    out.append(f"The link rate does not rescue small messages: at {format_size(small)} DirectReduce stays "
               f"{_slower(max(at_small))} to {_slower(min(at_small))} slower than host-best, latency-bound "
               "whatever the bandwidth.")
    out += findings_links_pipelined(records, cell, combos, big, base)
    return out


def _combo_names(rows: Sequence[dict]) -> str:
    return ", ".join(dict.fromkeys(f"{round(r['link_Gbps'])}G/{r['pcie']}" for r in rows))


def findings_links_pipelined(records: Sequence[dict], cell: dict, combos: list, big: int,
                             base: Profile) -> list[str]:
    """The pipelined variant by link rate and PCIe generation: it gains where PCIe is slower than twice the
    link (plain DirectReduce's read-back is then the bottleneck), and pays its per-group latency where not."""
    if not has_pipelined(records):
        return []
    out = []
    for topo in _rows(records, lambda r: r["topology"]):
        cells = [cell[(topo, big, link, gen)] for link, gen in combos if (topo, big, link, gen) in cell]
        out.append(f"{topo} at {format_size(big)}, `directreduce-pipelined` against host-best: " + ", ".join(
            f"{round(r['link_Gbps'])}G/{r['pcie']} {_pct(r['pipelined_gain_vs_best_host'])}" for r in cells)
            + "; against plain DirectReduce: " + ", ".join(
            f"{round(r['link_Gbps'])}G/{r['pcie']} {_pct(r['pipelined_gain_vs_directreduce'])}" for r in cells)
            + ".")
    at_big = [r for r in records if r["bytes"] == big]
    wide = [r for r in at_big if r["pcie_GBps"] >= 2 * r["link_Gbps"] / 8]
    narrow = [r for r in at_big if r["pcie_GBps"] < 2 * r["link_Gbps"] / 8]
    text = "Why: "
    if narrow:
        text += (f"where PCIe is slower than twice the link ({_combo_names(narrow)}), plain DirectReduce's spilled "
                 f"chunks and its operands share the PCIe read engine and each step runs at the PCIe rate, "
                 f"while the pipelined NIC reads only operands: at {format_size(big)} it is "
                 f"{_range(narrow, 'pipelined_gain_vs_directreduce')} against plain DirectReduce. ")
    if wide:
        text += (f"Where PCIe is at least twice the link ({_combo_names(wide)}), plain DirectReduce reads its spill "
                 f"back beside the operands at line rate, so there is nothing to win, and the pipelined ring "
                 f"is {_range(wide, 'pipelined_gain_vs_directreduce')} against it at {format_size(big)}: "
                 f"one latency per wavefront group (model.md §4.6).")
    out.append(text.strip())
    ahead = [r for r in at_big if r["pipelined_gain_vs_best_host"] > 0]
    behind = [r for r in at_big if r["pipelined_gain_vs_best_host"] <= 0]
    if behind:
        topos = ", ".join(t for t in _rows(at_big, lambda r: r["topology"]) if any(r["topology"] == t for r in behind))
        out.append(f"Against host-best, in-NIC reduction can win only the time host-best spends above the "
                   f"streaming bound 2(p − 1)/p · M · max(β(1 + h/P), π). Where the pipelined variant is behind "
                   f"host-best at {format_size(big)} (on {topos} with {_combo_names(behind)}), host-best is only "
                   f"{_excess(behind, 'host_best_us', base)} above that bound, and the pipelined ring "
                   f"{_excess(behind, 'pipelined_us', base)}"
                   + (f"; where it is ahead, host-best is {_excess(ahead, 'host_best_us', base)} above it and the "
                      f"pipelined ring {_excess(ahead, 'pipelined_us', base)}." if ahead else "."))
    return out


def _rank_row(r: dict) -> tuple:
    return (r["topology"], r["ranks_per_node"])


def _rank_label(row: tuple) -> str:
    return f"{row[0]} x{row[1]}"


def findings_ranks(records: Sequence[dict], profile: Profile) -> list[str]:
    """What the ranks-per-node sweep shows, read from its records."""
    out = []
    big = max(r["bytes"] for r in records)
    cell = {(r["topology"], r["ranks_per_node"], r["bytes"]): r for r in records}
    ranks = sorted({r["ranks_per_node"] for r in records})
    for topo in _rows(records, lambda r: r["topology"]):
        row = [cell[(topo, p, big)] for p in ranks if (topo, p, big) in cell]
        out.append(
            f"{topo} at {format_size(big)} per rank, P = " + "/".join(str(r["ranks_per_node"]) for r in row)
            + " ranks per node: gain over host-best " + " / ".join(_pct(r["gain_vs_best_host"]) for r in row)
            + "; the rails alone " + " / ".join(_pct(r["rail_gain_vs_best_host"]) for r in row)
            + "; the intra-node phases take " + " / ".join(f"{100 * r['intra_node_share']:.0f}%" for r in row)
            + " of host-best's time."
            + ("" if not has_pipelined(row) else
               " `directreduce-pipelined`: " + " / ".join(_pct(r["pipelined_gain_vs_best_host"]) for r in row)
               + " over host-best, " + " / ".join(_pct(r["pipelined_gain_vs_directreduce"]) for r in row)
               + " over plain DirectReduce."))
    mem = profile.host.memory_GBps
    out.append(
        f"Why: the P ranks of a node share its {mem:g} GB/s of DRAM ({mem / max(ranks):g} GB/s each at "
        f"P = {max(ranks)}). A host algorithm moves 3 to 5 DRAM bytes per byte it reduces (its DMA read and "
        "write, and the core's two reads and one write, less what DDIO keeps in the LLC); DirectReduce "
        "reads only its operand. So as P grows the rails of the host algorithms turn DRAM-bound and "
        "DirectReduce's edge on the rails grows, as the DirectReduce paper says it does with processes per "
        "node. Over the whole call that edge is diluted: the intra-node reduce-scatter and allgather, which "
        "every algorithm runs through host DRAM, grow with P and take the share given above "
        "(docs/model.md §19).")
    return out


NOT_MODELLED = [
    "packet headers are charged (82 B per packet, RoCEv2; docs/model.md §18), but the PCIe link's own "
    "framing is folded into its effective rate;",
    "pipelining across torus dimensions: ring-pipelined pipelines within a ring only (docs/model.md "
    "§4.5), so on tori host-best's large-message time is conservative;",
    "with several ranks per node, the intra-node phases run through host DRAM for every algorithm: no "
    "NVLink-class intra-node fabric, and no NIC help inside a node (docs/model.md §19.3).",
]


# --------------------------------------------------------------------------
# Figures


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def heatmap(records: Sequence[dict], path: str | Path, row_key, row_label, title: str) -> None:
    """Panels of gains, rows by row_key and columns by size: DirectReduce over ring and over host-best, and
    directreduce-pipelined over host-best where the records time it."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    plt = _pyplot()
    rows = _rows(records, row_key)
    sizes = sorted({r["bytes"] for r in records})
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#eeeeee")
    panels = [("gain_vs_ring", "DirectReduce", "ring"), ("gain_vs_best_host", "DirectReduce", "host-best")]
    if has_pipelined(records):
        panels.append(("pipelined_gain_vs_best_host", "directreduce-pipelined", "host-best"))
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (0.62 * len(sizes) + 2.8),
                                                      0.42 * len(rows) + 2.2), squeeze=False)
    for ax, (key, algo, name) in zip(axes[0], panels):
        cell = {(row_key(r), r["bytes"]): r[key] for r in records}
        data = np.array([[100 * cell.get((row, m), np.nan) for m in sizes] for row in rows], dtype=float)
        top = max(1.0, float(np.nanmax(data)))
        norm = TwoSlopeNorm(vmin=-100.0, vcenter=0.0, vmax=top)   # below -100 % clips to the darkest red
        im = ax.imshow(np.ma.masked_invalid(np.clip(data, -100.0, None)), cmap=cmap, norm=norm, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(sizes)):
                if np.isnan(data[i, j]):
                    continue
                r, g, b, _ = cmap(norm(max(data[i, j], -100.0)))
                ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                label = f"{data[i, j]:.0f}"
                ax.text(j, i, "0" if label == "-0" else label, ha="center", va="center", fontsize=7, color=ink)
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels([format_size(m) for m in sizes], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([row_label(row) for row in rows], fontsize=8)
        ax.set_xlabel("message size per node M")
        ax.set_title(f"{algo} vs {name}: 1 − t / t_{name} (%)", fontsize=9)
        fig.colorbar(im, ax=ax, pad=0.01, label="gain (%), clipped at −100")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _link_row(r: dict) -> tuple:
    return (r["topology"], round(r["link_Gbps"]), r["pcie"])


def _link_label(row: tuple) -> str:
    return f"{row[0]} {row[1]}G {row[2]}"


def write_figures(records: Sequence[dict], folder: Path, profile_name: str) -> list[str]:
    """The heat maps beside the page, one per sweep; [] without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    sizes, links, ranks = _of(records, SIZE_SWEEP), _of(records, LINK_SWEEP), _of(records, RANK_SWEEP)
    out = []
    if ranks:
        path = folder / FIGURES[RANK_SWEEP]
        heatmap(ranks, path, _rank_row, _rank_label,
                f"float32 AllReduce, profile {profile_name}, P ranks per node sharing host DRAM")
        out.append(str(path))
    if sizes:
        path = folder / FIGURES[SIZE_SWEEP]
        heatmap(sizes, path, lambda r: r["topology"], str,
                f"float32 AllReduce, model executor, profile {profile_name}")
        out.append(str(path))
    if links:
        path = folder / FIGURES[LINK_SWEEP]
        heatmap(links, path, _link_row, _link_label,
                f"float32 AllReduce, profile {profile_name} with link and PCIe rates overridden")
        out.append(str(path))
    return out


# --------------------------------------------------------------------------
# The page


def page_body(records: Sequence[dict], profile: Profile, figures: Sequence[str]) -> tuple[list[str], list[str]]:
    """The page's body (figures and tables) and its findings."""
    sizes, links, ranks = _of(records, SIZE_SWEEP), _of(records, LINK_SWEEP), _of(records, RANK_SWEEP)
    names = {Path(f).name for f in figures}
    body: list[str] = []
    shows: list[str] = []
    if sizes:
        body += ["## Message size × nodes", "",
                 f"Profile `{profile.name}` ({profile.description.rstrip('.')}; "
                 "[model.md §7](../model.md#7-shipped-profiles)).", ""]
        if FIGURES[SIZE_SWEEP] in names:
            body += ["![gain of DirectReduce over ring and host-best, and of the pipelined variant over host-best]"
                     f"({FIGURES[SIZE_SWEEP]})", ""]
        body += ["Gain over host-best, 1 − t_DR / t_host-best:", "",
                 *gain_table(sizes, "gain_vs_best_host", lambda r: r["topology"], str), "",
                 "Gain over ring, 1 − t_DR / t_ring:", "",
                 *gain_table(sizes, "gain_vs_ring", lambda r: r["topology"], str), ""]
        if has_pipelined(sizes):
            body += ["`directreduce-pipelined` ([model.md §4.6]"
                     "(../model.md#46-pipelined-directreduce-directreduce-pipelined)), gain over host-best, "
                     "1 − t_pipelined / t_host-best:", "",
                     *gain_table(sizes, "pipelined_gain_vs_best_host", lambda r: r["topology"], str), "",
                     "`directreduce-pipelined`, gain over plain DirectReduce, 1 − t_pipelined / t_DR:", "",
                     *gain_table(sizes, "pipelined_gain_vs_directreduce", lambda r: r["topology"], str), ""]
        body += [
                 "The host algorithm host-best ran:", "", *host_best_picks(sizes), ""]
        shows += findings_sizes(sizes, profile)
        shows += findings_pipelined(sizes, profile)
    if links:
        rates = _links(links)
        body += ["## Link rate × PCIe generation", "",
                 f"Profile `{profile.name}` with `--set link.bandwidth_GBps=` "
                 + ", ".join(f"{x / 8:g}" for x in rates) + " (" + ", ".join(f"{x} Gb/s" for x in rates)
                 + ") and `--set pcie.bandwidth_GBps=` "
                 + ", ".join(f"{v:g} ({k} x16)" for k, v in PCIE_GBPS.items()) + ".", ""]
        if FIGURES[LINK_SWEEP] in names:
            body += [f"![gain by link rate and PCIe generation]({FIGURES[LINK_SWEEP]})", ""]
        body += ["Gain over host-best:", "", *gain_table(links, "gain_vs_best_host", _link_row, _link_label), "",
                 "Gain over ring:", "", *gain_table(links, "gain_vs_ring", _link_row, _link_label), ""]
        if has_pipelined(links):
            body += ["`directreduce-pipelined`, gain over host-best:", "",
                     *gain_table(links, "pipelined_gain_vs_best_host", _link_row, _link_label), "",
                     "`directreduce-pipelined`, gain over plain DirectReduce:", "",
                     *gain_table(links, "pipelined_gain_vs_directreduce", _link_row, _link_label), ""]
        shows += findings_links(links, profile)
    if ranks:
        body += ["## Ranks per node", "",
                 f"Profile `{profile.name}` with `--ranks-per-node` " + ", ".join(
                     str(p) for p in sorted({r['ranks_per_node'] for r in ranks}))
                 + ": P ranks per node, each with its own NIC, sharing the node's "
                 f"{profile.host.memory_GBps:g} GB/s of DRAM and {profile.host.ddio_KiB:g} KiB of DDIO; sizes are "
                 "per rank ([model.md §19](../model.md#19-host-dram-ddio-and-ranks-per-node)).", ""]
        if FIGURES[RANK_SWEEP] in names:
            body += [f"![gain by ranks per node]({FIGURES[RANK_SWEEP]})", ""]
        body += ["Gain over host-best:", "", *gain_table(ranks, "gain_vs_best_host", _rank_row, _rank_label), "",
                 "Gain over ring:", "", *gain_table(ranks, "gain_vs_ring", _rank_row, _rank_label), "",
                 "The rails alone (phase 2: each algorithm on the nodes with a 1/P shard and 1/P of DRAM), "
                 "gain over host-best:", "",
                 *gain_table(ranks, "rail_gain_vs_best_host", _rank_row, _rank_label), ""]
        if has_pipelined(ranks):
            body += ["`directreduce-pipelined`, gain over host-best:", "",
                     *gain_table(ranks, "pipelined_gain_vs_best_host", _rank_row, _rank_label), "",
                     "`directreduce-pipelined`, gain over plain DirectReduce:", "",
                     *gain_table(ranks, "pipelined_gain_vs_directreduce", _rank_row, _rank_label), "",
                     "`directreduce-pipelined`, the rails alone, gain over host-best:", "",
                     *gain_table(ranks, "rail_pipelined_gain_vs_best_host", _rank_row, _rank_label), ""]
        shows += findings_ranks(ranks, profile)
    body += ["## When it pays off"]
    return body, shows


def write(out: str, records: Sequence[dict], profile_name: str = PROFILE, command: str = "") -> list[str]:
    """Write ``out.{json,csv,md}`` and the heat maps from the records; returns the figures' paths. The page
    follows from the records alone, so the committed JSON rebuilds the committed page."""
    profile = load_profile(profile_name)
    folder = Path(out).parent
    folder.mkdir(parents=True, exist_ok=True)
    figures = write_figures(records, folder, profile.name)
    body, shows = page_body(records, profile, figures)
    about = (f"DirectReduce (`directreduce` and `directreduce-pipelined`) "
             f"against `ring` and `host-best`, float32 AllReduce, model executor; gain = 1 − t / t_baseline. "
             f"Also writes {Path(out).name}.json and .csv"
             + (" and the heat maps " + ", ".join(Path(f).name for f in figures) if figures else "") + ".")
    lines = page(command, SCRIPT, about, body, shows)
    lines += ["", "## What the model does not have yet", "", *(f"- {line}" for line in NOT_MODELLED)]
    write_result_files(out, list(records), lines)
    return figures


def run(out: str, quick: bool = False, profile_name: str = PROFILE, command: str = "",
        log: TextIO | None = sys.stderr, jobs: int | None = None, progress: bool = False,
        grid: str | Path | None = None) -> list[dict]:
    """Run the grid, write ``out.{json,csv,md}`` and the heat maps; returns the records."""
    t0 = time.perf_counter()
    records = sweep(quick, profile_name, jobs, progress, grid)
    figures = write(out, records, profile_name, command)
    if log is not None:
        print(f"# {len(records)} points in {time.perf_counter() - t0:.1f} s; wrote {out}.md, .json, .csv"
              + "".join(f", {f}" for f in figures), file=log)
    return records
