"""Every program in examples/ runs (under mpiexec where it uses MPI) and prints what its docstring promises.

The expected lines are emulated numbers, so they are exact; each run has a hang guard.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_python

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: file -> (ranks under mpiexec, or None for a plain run; arguments after the file; a line the output holds)
CASES = {
    "directreduce_vs_ring.py": (2, [], "directreduce vs ring: 15.7% lower latency"),
    "sparse_gradient.py": (2, [], "omniccl speedup over ring: 2.40x"),
    "model_sweep.py": (None, [], "    ring:8   67108864    13109.324         10180.383   22.3%"),
    "faults_stragglers.py": (4, [], "model executor agrees: True"),
    "test_allreduce_mpi.py": (2, None, "5 passed"),
}


def test_every_example_is_run():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(CASES)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name: str, tmp_path: Path):
    ranks, args, expected = CASES[name]
    path = EXAMPLES / name
    argv = [path, *args] if args is not None else ["-m", "pytest", "-q", "--with-mpi", "-p", "no:cacheprovider", path]
    run = run_python(argv, tmp_path, ranks, timeout=120, what=f"examples/{name}")
    assert run.returncode == 0, str(run)
    assert expected in run.stdout.splitlines() or expected in run.stdout, str(run)
    assert "Traceback" not in run.stderr, str(run)
