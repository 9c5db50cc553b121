"""docs/results/serve_deployments.md follows from its committed JSON, and the JSON from serve's rules."""

import json
from pathlib import Path

from nicemu.studies import serve_deployments

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def test_page_is_its_json():
    data = json.loads((RESULTS / "serve_deployments.json").read_text())
    lines = serve_deployments.page_lines(
        data, "python scripts/serve_deployments.py --out docs/results/serve_deployments")
    assert (RESULTS / "serve_deployments.md").read_text() == "\n".join(lines) + "\n"


def test_rows_are_consistent():
    data = json.loads((RESULTS / "serve_deployments.json").read_text())
    assert {r["deployment"] for r in data} == {d for d, _ in serve_deployments.DEPLOYMENTS}
    for r in data:
        assert 0 <= r["slo_attainment"] <= 1
        assert (r["kv_transfer_ms_mean"] is None) == (r["disaggregated"] is None)
        assert r["accelerators"] == r["tp"] * (2 if r["disaggregated"] else r["replicas"])
    # inside one node no byte reaches a NIC: every algorithm gives the same times
    one = [r for r in data if r["deployment"].endswith("in one node")]
    assert len({(r["ttft_ms_mean"], r["tpot_ms_mean"]) for r in one}) == 1
