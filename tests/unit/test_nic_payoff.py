"""The nic_payoff study in its quick mode: outputs exist, and every gain follows from the record's own times."""

import importlib.util
import json
from pathlib import Path

from nicemu.collectives import model_time, segment_elems
from nicemu.collectives.api import host_best
from nicemu.nic.profile import load_profile
from nicemu.studies import nic_payoff
from nicemu.topologies import parse_topology

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "nic_payoff.py"
_spec = importlib.util.spec_from_file_location("nic_payoff_script", SCRIPT)
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


def test_quick_run_writes_page_json_csv_and_figures(tmp_path):
    out = tmp_path / "nic_payoff"
    assert script.main(["--quick", "--out", str(out)]) == 0
    for suffix in (".md", ".json", ".csv"):
        assert out.with_suffix(suffix).is_file(), suffix
    for name in nic_payoff.FIGURES.values():
        assert (tmp_path / name).stat().st_size > 0, name
    text = out.with_suffix(".md").read_text()
    assert text.startswith(f"Regenerate (from the repository root): `python scripts/nic_payoff.py --quick --out {out}`")

    records = json.loads(out.with_suffix(".json").read_text())
    sweeps = {r["sweep"] for r in records}
    assert sweeps == {nic_payoff.SIZE_SWEEP, nic_payoff.LINK_SWEEP, nic_payoff.RANK_SWEEP}
    grid = nic_payoff.points(Path(__file__).resolve().parents[2] / nic_payoff.QUICK_GRID)
    # one record per point of the grid without its algo axis (four algorithms in every sweep)
    assert len(records) == len({(p["tag"], p["topology"], p.get("ranks_per_node"), p.get("link.bandwidth_GBps"),
                                 p.get("pcie.bandwidth_GBps"), p["bytes"]) for p in grid})
    assert len(grid) == 4 * len(records)
    for r in records:
        assert r["gain_vs_ring"] == 1 - r["directreduce_us"] / r["ring_us"]
        assert r["gain_vs_best_host"] == 1 - r["directreduce_us"] / r["host_best_us"]
        # host-best is the fastest host algorithm, so never slower than the ring, and it names a registry entry
        assert r["host_best_us"] <= r["ring_us"]
        assert r["best_host_algo"] in host_best.candidates("allreduce")
    # the ranks sweep: P = 1 is the plain call, the rails alone are the algorithm on the nodes with a 1/P
    # shard and a 1/P share of DRAM, and the intra-node phases are what the whole call adds to them
    profile = load_profile(nic_payoff.PROFILE)
    for r in records:
        if r["sweep"] != nic_payoff.RANK_SWEEP:
            assert r["rail_gain_vs_best_host"] is None
            continue
        p, count = r["ranks_per_node"], r["bytes"] // 4
        whole = model_time("allreduce", "directreduce", r["topology"], profile, count, ranks_per_node=p)
        assert r["directreduce_us"] == whole.emulated_us
        rail = nic_payoff.rail_profile(profile, p)
        assert rail.host.memory_GBps == profile.host.memory_GBps / p
        alone = model_time("allreduce", "directreduce", r["topology"], rail, count // p).emulated_us
        assert r["rail_directreduce_us"] == alone
        if p == 1:
            assert r["rail_gain_vs_best_host"] == r["gain_vs_best_host"] and r["intra_node_share"] == 0
        else:
            assert 0 < r["intra_node_share"] < 1 and r["directreduce_us"] > alone
        # the pipelined variant's rails: the same 1/P shard and DRAM share, against the same rail host-best
        piped = model_time("allreduce", "directreduce-pipelined", r["topology"], rail, count // p).emulated_us
        assert r["rail_pipelined_us"] == piped
        assert r["rail_pipelined_gain_vs_best_host"] == 1 - piped / r["rail_host_best_us"]
        if p == 1:
            assert r["rail_pipelined_us"] == r["pipelined_us"]
    # directreduce-pipelined: timed in every sweep, recomputed here with model_time on the record's own
    # profile (and ranks per node); its segment is the one §4.6 gives for that topology (the rails' node
    # topology with several ranks per node)
    for r in records:
        if r["sweep"] != nic_payoff.RANK_SWEEP:
            assert r["rail_pipelined_us"] is None
        prof = profile.with_overrides(r["overrides"].split(";") if r["overrides"] else [])
        t = model_time("allreduce", "directreduce-pipelined", r["topology"], prof, r["bytes"] // 4,
                       ranks_per_node=r["ranks_per_node"]).emulated_us
        assert r["pipelined_us"] == t
        assert r["pipelined_gain_vs_best_host"] == 1 - t / r["host_best_us"]
        assert r["pipelined_gain_vs_ring"] == 1 - t / r["ring_us"]
        assert r["pipelined_gain_vs_directreduce"] == 1 - t / r["directreduce_us"]
        assert r["pipelined_segment_bytes"] == 4 * segment_elems(prof, 4, "directreduce-pipelined", "allreduce",
                                                                 parse_topology(r["topology"]))
    # at 64M on 400g-gen5 plain DirectReduce's 16 MiB chunks (ring:4) spill and the pipelined variant wins
    r = next(r for r in records if (r["sweep"], r["topology"], r["bytes"]) == (nic_payoff.SIZE_SWEEP, "ring:4", 64 << 20))
    assert r["bytes"] / 4 > 1024 * profile.nic.memory_KiB and r["pipelined_gain_vs_directreduce"] > 0
    assert "`directreduce-pipelined`, gain over host-best:" in text
    assert f"| ring:4 | {nic_payoff._pct(r['pipelined_gain_vs_best_host'])} |" not in text   # a row of 3 sizes
    row = next(ln for ln in text.split("gain over plain DirectReduce, 1 − t_pipelined / t_DR:")[1].splitlines()
               if ln.startswith("| ring:4 |"))
    assert row.split(" | ")[-1].rstrip(" |") == nic_payoff._pct(r["pipelined_gain_vs_directreduce"])
    # the link sweep's overrides are the ones the profile saw
    for r in records:
        if r["sweep"] == nic_payoff.LINK_SWEEP:
            assert r["overrides"] == f"link.bandwidth_GBps={r['link_Gbps'] / 8:g};pcie.bandwidth_GBps={r['pcie_GBps']:g}"
            assert r["pcie_GBps"] == nic_payoff.PCIE_GBPS[r["pcie"]]
            prof = profile.with_overrides(r["overrides"].split(";"))
            t = model_time("allreduce", "directreduce", r["topology"], prof, r["bytes"] // 4).emulated_us
            assert r["directreduce_us"] == t


def test_win_ranges_are_the_runs_of_consecutive_winning_sizes():
    rows = [{"bytes": m, "g": g} for m, g in ((1, -0.5), (2, 0.1), (4, 0.2), (8, -0.1), (16, 0.3), (32, -0.2))]
    assert nic_payoff.win_ranges(rows, "g") == [(2, 4), (16, 16)]
    assert nic_payoff.win_ranges(rows[:1], "g") == []


def test_crossover_is_the_start_of_the_last_winning_run():
    rows = [{"bytes": m, "g": g} for m, g in ((1, -0.5), (2, 0.1), (4, -0.1), (8, 0.2), (16, 0.3))]
    assert nic_payoff.crossover(rows, "g") == 8
    assert nic_payoff.crossover(rows[:3], "g") is None


def test_committed_page_follows_from_its_json(tmp_path):
    """docs/results/nic_payoff.md is what the study writes from docs/results/nic_payoff.json: every table cell
    and finding follows from the committed records (which test_sweep recomputes in part with model_time)."""
    results = Path(__file__).resolve().parents[2] / "docs" / "results"
    records = json.loads((results / "nic_payoff.json").read_text())
    nic_payoff.write(str(tmp_path / "nic_payoff"), records, command="python scripts/nic_payoff.py")
    assert (tmp_path / "nic_payoff.md").read_text() == (results / "nic_payoff.md").read_text()
    assert {r["sweep"] for r in records if r["pipelined_us"] is not None} == {
        nic_payoff.SIZE_SWEEP, nic_payoff.LINK_SWEEP, nic_payoff.RANK_SWEEP}
    assert all(r["pipelined_us"] is not None for r in records)
