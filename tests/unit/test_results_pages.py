"""The serving results page is rebuilt from its committed JSON, with figures that follow from the records."""

import json
import shutil
from pathlib import Path

from nicemu.studies import serve_page

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def test_page_from_committed_json(tmp_path):
    shutil.copy(RESULTS / f"{serve_page.STEM}.json", tmp_path)
    text = serve_page.write_page(tmp_path, "python scripts/serve_page.py --run").read_text()
    records = json.loads((tmp_path / f"{serve_page.STEM}.json").read_text())
    assert text.startswith("Regenerate (from the repository root): `python scripts/serve_page.py --run`")
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert [ln.split("`")[1] for ln in rows] == [r["algo"] for r in records]
    by = {r["algo"]: r for r in records}
    for base in ("ring", "host-best"):
        for r in records:
            if r["algo"] not in ("ring", "host-best"):
                cut = 100 * (1 - r["ttft_ms_mean"] / by[base]["ttft_ms_mean"])
                assert f"`{r['algo']}` cuts TTFT against `{base}` by {cut:.1f}% (mean)" in text
    cut = 100 * (1 - by["host-best"]["ttft_ms_mean"] / by["ring"]["ttft_ms_mean"])
    assert f"cuts TTFT against `ring` by {cut:.1f}% and TPOT" in text
    assert f"{sum(r['wrong'] for r in records)} wrong" in text


def test_committed_page_is_current(tmp_path):
    shutil.copy(RESULTS / f"{serve_page.STEM}.json", tmp_path)
    fresh = serve_page.write_page(tmp_path, "python scripts/serve_page.py --run").read_text()
    fresh = fresh.replace(str(tmp_path) + "/", "")
    assert (RESULTS / "serve.md").read_text() == fresh


def test_every_results_page_names_its_script():
    """Each page under docs/results starts with the command that regenerates it, naming a script that exists."""
    root = RESULTS.parents[1]
    for md in sorted(RESULTS.glob("*.md")):
        first = md.read_text().splitlines()[0]
        assert first.startswith("Regenerate (from the repository root): `"), md.name
        words = first.split("`")[1].split()
        script = next(w for w in words if w.startswith("scripts/") and w.endswith(".py"))
        assert (root / script).is_file(), f"{md.name}: {script} does not exist"
