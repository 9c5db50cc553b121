"""Runs the pytest-mpi suite (tests/mpi) under mpiexec at 2, 3, 4 and 8 ranks.

This keeps the README's single test command complete: a plain `pytest tests`
also exercises the collectives on real MPI ranks.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MPI_TESTS = Path(__file__).parent / "mpi"


def mpiexec() -> str:
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        pytest.fail("mpiexec not found: install the 'mpich' wheel (pip install -e '.[mpich]') or a system MPI")
    return found


@pytest.mark.parametrize("ranks", [2, 3, 4, 8])
def test_mpi_suite_under_mpiexec(ranks):
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "pytest", "-q", "--with-mpi",
           "-p", "no:cacheprovider", str(MPI_TESTS)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"MPI suite at {ranks} ranks did not finish in {exc.timeout} s (hang?)")
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert " passed" in r.stdout and " failed" not in r.stdout
