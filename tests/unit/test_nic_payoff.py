"""The nic_payoff study in its quick mode: outputs exist, and every gain follows from the record's own times."""

import importlib.util
import json
from pathlib import Path

from nicemu.collectives import model_time
from nicemu.collectives.api import host_best
from nicemu.nic.profile import load_profile
from nicemu.studies import nic_payoff

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
    expected = len(grid) // 3           # three algorithms per record
    assert len(records) == expected
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
