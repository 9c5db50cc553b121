"""End-to-end runs of ``scripts/bench_fabric.py`` (wall time of the shared-fabric model).

A small torus keeps it fast. Checked: every pattern runs, the JSON rows are complete and their makespans
equal the model's called directly; bad arguments give one ``bench_fabric: error:`` line and status 2.
Wall times are not asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Run, run_python

from nicemu.studies.fabric_bench import PATTERNS, make_case, run_model

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_fabric.py"


def run_script(args: list[str], cwd: Path) -> Run:
    return run_python([SCRIPT, *args], cwd, None, 120, "bench_fabric")


def test_patterns_and_records(tmp_path: Path):
    proc = run_script(["--topology", "torus:4^3", "--flows", "96", "--json", "out.json"], tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, str(proc)
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [r["pattern"] for r in rows] == list(PATTERNS)
    for row in rows:
        assert set(row) == {"pattern", "topology", "flows", "makespan_us", "model_s"}
        fin, _ = run_model(make_case(row["pattern"], "torus:4^3", 96))
        assert row["makespan_us"] == float(fin.max())
    assert len(proc.stdout.splitlines()) == 2 + len(PATTERNS)


@pytest.mark.parametrize("args", [["--flows", "0"], ["--topology", "torus:9x"], ["--patterns", "storm"],
                                  ["--topology", "ring:4", "--set", "link.bandwidth_GBps=-1"]])
def test_bad_arguments_give_one_line(tmp_path: Path, args: list[str]):
    proc = run_script(args, tmp_path)
    assert proc.returncode == 2, str(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench_fabric: error:"), str(proc)
