"""The telemetry study (nicemu/studies/telemetry_cost.py): its page follows from its measurements."""

import json

from nicemu.nic.profile import load_profile
from nicemu.studies import telemetry_cost


def test_page_from_a_small_run(tmp_path):
    profile = load_profile("directreduce-paper")
    rows = telemetry_cost.cost("torus:2x3", ["ring", "directreduce"], 6 << 10, profile, 1, str(tmp_path),
                               progress=lambda m: None)
    sums = telemetry_cost.summaries("torus:2x3", ["ring", "directreduce"], 6 << 10, profile)
    assert [r["algo"] for r in rows] == ["ring", "directreduce"]
    for r in rows:
        assert r["off_s"] > 0 and r["file_bytes"] > 0
        assert r["summary_ratio"] == r["summary_s"] / r["off_s"]
    path = telemetry_cost.write_page(str(tmp_path / "telemetry"), "torus:2x3", 6 << 10, profile, rows, sums,
                                     "python scripts/telemetry_cost.py --topology torus:2x3")
    text = path.read_text()
    assert text.startswith("Regenerate (from the repository root): `python scripts/telemetry_cost.py")
    saved = json.loads((tmp_path / "telemetry.json").read_text())
    assert saved["cost"] == rows
    for r in sums:
        for s in r["summary"]:
            if s["bytes"]:
                assert (f"| `{r['algo']}` | {r['emulated_us']:,.1f} | {s['dim']} | {s['dir']:+d} | {s['bytes']:,} |"
                        in text)
        top = max((s for s in r["summary"] if s["bytes"]), key=lambda s: s["util_max"])
        assert f"`{r['algo']}`: the busiest links are in dimension {top['dim']}" in text
