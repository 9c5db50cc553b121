"""End-to-end runs of ``scripts/bench_overhead.py`` (emulator vs bare mpi4py ring vs MPI_Allreduce).

Small sizes and three iterations keep it fast. Checked: the run succeeds under
``mpiexec -n 2`` and ``-n 3`` (3 ranks: chunks of unequal length), every
implementation's result is exact, the JSON/CSV/Markdown outputs are complete,
and a bad argument gives one ``bench_overhead: error:`` line and status 2 on
every rank. Timings themselves are not asserted: they depend on the machine.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import TIMEOUT_S, Run, run_python

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_overhead.py"
IMPLS = ("emulator", "bare_ring", "mpi_allreduce")
SIZES = [1024, 65536]
FAST = ["--sizes", "1K,64K", "--iters", "3", "--warmup", "1"]
ERROR_TIMEOUT_S = 60


def run_script(args: list[str], cwd: Path, nprocs: int | None, timeout: float = TIMEOUT_S) -> Run:
    """``python scripts/bench_overhead.py ARGS`` in ``cwd``, under ``mpiexec -n NPROCS`` if given."""
    return run_python([SCRIPT, *args], cwd, nprocs, timeout, "bench_overhead")


@pytest.mark.parametrize("nprocs", [2, 3])
def test_sizes_records_and_results(tmp_path: Path, nprocs: int):
    proc = run_script([*FAST, "--json", "out.json", "--csv", "out.csv", "--markdown", "out.md"], tmp_path, nprocs)
    assert proc.returncode == 0, str(proc)
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr, str(proc)

    records = json.loads((tmp_path / "out.json").read_text())
    assert [r["bytes"] for r in records] == SIZES, str(proc)
    for r in records:
        assert r["ranks"] == nprocs and r["topology"] == f"ring:{nprocs}", r
        assert r["count"] == r["bytes"] // 4 and r["iters"] == 3 and r["warmup"] == 1, r
        assert r["wrong"] == 0, r
        for name in IMPLS:
            assert r[f"{name}_wrong"] == 0 and r[f"{name}_wrong_iters"] == 0, r
            t = r[f"{name}_us"]
            assert math.isfinite(t) and t > 0, r
            assert 0 < r[f"{name}_min_us"] <= t, r
        assert r["emu_over_bare"] == pytest.approx(r["emulator_us"] / r["bare_ring_us"]), r
        assert r["emu_over_mpi"] == pytest.approx(r["emulator_us"] / r["mpi_allreduce_us"]), r

    with open(tmp_path / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["bytes"]) for row in rows] == SIZES
    assert all(int(row["ranks"]) == nprocs for row in rows)

    md = (tmp_path / "out.md").read_text()
    assert md.startswith(f"Regenerate (from the repository root): `mpiexec -n {nprocs} python scripts/bench_overhead.py "
                         f"{' '.join(FAST)} --json out.json"), md
    assert "| size | emulator_us | bare_ring_us | mpi_allreduce_us | emu/bare | emu/mpi |" in md
    assert "| 1K |" in md and "| 64K |" in md

    out = proc.stdout.splitlines()
    assert out[0].startswith("# bench_overhead:") and "MPI:" in out[0] and f"{nprocs} ranks" in out[0], str(proc)
    targets = [ln for ln in out if ln.startswith("# targets:")]
    assert len(targets) == 1 and targets[0].count("PASS") + targets[0].count("FAIL") + \
        targets[0].count("n/a") == 3, str(proc)


BAD = [
    pytest.param(["--sizes", "0"], 2, "positive", id="size-zero"),
    pytest.param(["--sizes", "1001"], 2, "multiple", id="size-not-float32"),
    pytest.param(["--sizes", "1K", "--iters", "0"], 3, "--iters", id="iters-zero"),
    pytest.param(["--sizes", "1K", "--json", "no/such/dir/out.json"], 2, "no/such/dir", id="json-dir-missing"),
    pytest.param(["--sizes", "1K"], None, "2 ranks", id="single-rank"),
]


@pytest.mark.parametrize("args, nprocs, keyword", BAD)
def test_bad_input(tmp_path: Path, args: list[str], nprocs: int | None, keyword: str):
    proc = run_script(args, tmp_path, nprocs, timeout=ERROR_TIMEOUT_S)
    assert proc.returncode == 2, str(proc)
    for stream in (proc.stdout, proc.stderr):
        assert "Traceback" not in stream, str(proc)
    assert "MPI_Abort" not in proc.stderr, str(proc)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bench_overhead: error:"), str(proc)
    assert keyword.lower() in lines[0].lower(), str(proc)
    assert proc.stdout == "", str(proc)


def test_bare_ring_chunks_match_the_emulator():
    """The bare ring must move the same chunks as the emulator: node i owns chunk i after the reduce-scatter."""
    from nicemu.collectives.schedules.steps import final_segments
    from nicemu.studies.overhead import chunk_bounds
    from nicemu.topologies import ring

    for ranks in (2, 3, 5, 8):
        for count in (1, 2, ranks - 1, ranks, ranks + 1, 1000, 16411):
            bounds = chunk_bounds(count, ranks)
            off, cnt = final_segments(ring(ranks), count)
            assert np.array_equal(np.diff(bounds), cnt) and np.array_equal(bounds[:-1], off), (ranks, count)
