"""nicemu.studies.growth_curve and scripts/growth_curve.py: the fit, the step counts, and a small sweep end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from nicemu.studies import growth_curve as study

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "growth_curve.py"
_spec = importlib.util.spec_from_file_location("growth_curve", SCRIPT)
gc = importlib.util.module_from_spec(_spec)
sys.modules["growth_curve"] = gc
_spec.loader.exec_module(gc)


@pytest.mark.parametrize("slope", [0.5, 1.0, 1.3])
def test_fit_recovers_a_power_law_and_skips_short_points(slope):
    xs = np.logspace(3, 8, 12)
    records = [{"nodes_x_steps": float(x), "wall_s": 2e-7 * x ** slope, "topology": "torus:3^6"} for x in xs]
    records.append({"nodes_x_steps": 1e3, "wall_s": 1e-9, "topology": "torus:3^6"})   # below min_s: ignored
    got, intercept, used = study.fit(records, min_s=1e-6)
    assert np.isnan(study.fit(records[:1] * 2, min_s=0)[0])        # one distinct size: no line
    assert got == pytest.approx(slope, rel=1e-9)
    assert intercept == pytest.approx(np.log10(2e-7), rel=1e-9)
    assert used == sum(1 for r in records if r["wall_s"] >= 1e-6)


def test_step_counts_are_the_schedules():
    from nicemu.topologies import parse_topology
    assert study.step_count("ring", parse_topology("ring:8"), 1024) == 2 * 7
    assert study.step_count("directreduce", parse_topology("torus:3^6"), 1024) == 2 * 6 * 2   # 2 sum(k-1)


def test_small_sweep_writes_outputs_and_refits_from_json(tmp_path):
    out = tmp_path / "g"
    assert gc.main(["--k", "2,3", "--rings", "8,16", "--sizes", "1K", "--repeats", "1", "--fit-min-s", "0",
                    "--out", str(out)]) == 0
    saved = json.loads(out.with_suffix(".json").read_text())
    assert {r["topology"] for r in saved["records"]} == {"torus:2^6", "torus:3^6", "ring:8", "ring:16"}
    assert all(np.isfinite(f[0]) for f in saved["fits"].values())
    assert all(r["nodes_x_steps"] == r["nodes"] * r["steps"] for r in saved["records"])
    assert out.with_suffix(".png").stat().st_size > 0
    again = tmp_path / "h"
    assert gc.main(["--from-json", str(out.with_suffix(".json")), "--fit-min-s", "0", "--out", str(again)]) == 0
    assert json.loads(again.with_suffix(".json").read_text())["slope"] == saved["slope"]
    page = again.with_suffix(".md").read_text().splitlines()
    assert page[0] == f"Regenerate (from the repository root): `{saved['command']}`"   # the measuring run's
    assert saved["command"].startswith("python scripts/growth_curve.py --k 2,3")
