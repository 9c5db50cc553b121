"""The soak test (scripts/soak.py) under ``mpiexec -n 4``: back-to-back AllReduces, no leaks.

CI runs 300 calls (3 cycles of 100, every algorithm); ``NICEMU_SOAK_FULL=1``
runs the full 10,000 with the communicator probe (about 10 minutes on a loaded
2-core machine). Wall times are not asserted: the machine is shared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Run, run_python

from nicemu.collectives.registry import ALGORITHMS

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"
FULL = os.environ.get("NICEMU_SOAK_FULL", "") not in ("", "0")
CALLS = 10_000 if FULL else 300


def run_soak(args: list[str], cwd: Path, nprocs: int, timeout: float) -> Run:
    return run_python([SCRIPT, *args], cwd, nprocs, timeout, "soak")


def test_soak_at_four_ranks(tmp_path: Path):
    args = ["--calls", str(CALLS), "--json", "soak.json", *(["--comm-probe"] if FULL else [])]
    proc = run_soak(args, tmp_path, 4, timeout=3600 if FULL else 300)
    assert proc.returncode == 0, str(proc)
    assert "Traceback" not in proc.stderr, str(proc)
    assert "soak: OK" in proc.stdout, str(proc)
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["ranks"] == 4 and report["calls"] == CALLS
    assert report["wrong"] == 0
    assert set(report["calls_by_algo"]) == set(ALGORITHMS)              # every algorithm ran
    assert sum(report["calls_by_algo"].values()) == CALLS
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert not failed, f"failed checks {failed}\n{proc}"
    assert report["rss_growth_pct_max_over_ranks"] < 5.0
    held = report["held"]
    assert held["after_warmup"]["windows"] >= 1, "the sparse algorithms hold a window during the run"
    assert held["end"]["requests"] == 0
    assert held["after_free"] == {k: 0 for k in held["after_free"]}, held
    if FULL:
        assert report["comm_headroom"]["before"] == report["comm_headroom"]["after"]


def test_soak_with_link_faults(tmp_path: Path):
    """The retransmission protocol (CRC32, ACKs, resends) leaks nothing either."""
    calls = 2_000 if FULL else 120
    args = ["--calls", str(calls), "--cycle", "60", "--faults", "drop=0.01,corrupt=0.01,seed=5", "--json", "soak.json"]
    proc = run_soak(args, tmp_path, 4, timeout=3600 if FULL else 300)
    assert proc.returncode == 0 and "soak: OK" in proc.stdout, str(proc)
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["faults"] and report["wrong"] == 0 and report["calls"] == calls
    failed = [name for name, ok in report["checks"].items() if not ok]
    assert not failed, f"failed checks {failed}\n{proc}"


@pytest.mark.parametrize("args, words", [
    (["--calls", "50"], ["two cycles"]),
    (["--algos", "ring,nope"], ["nope"]),
    (["--topology", "ring:1"], ["ring:1"]),
    (["--profile", "no-such-profile"], ["no-such-profile"]),
    (["--faults", "drop=2"], ["drop=2"]),
])
def test_soak_bad_arguments(tmp_path: Path, args: list[str], words: list[str]):
    proc = run_soak(args, tmp_path, 2, timeout=60)
    assert proc.returncode == 2, str(proc)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("soak: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, str(proc)
    assert all(w in lines[0] for w in words), str(proc)
