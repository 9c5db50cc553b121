"""Helpers for the end-to-end tests: run ``nicemu`` in a subprocess, alone or under ``mpiexec``.

Every run gets a timeout, so a hang (e.g. a rank left waiting in a collective)
fails the test with a clear message instead of blocking CI. Runs happen in the
test's ``tmp_path`` so output files never land in the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

#: hang guard only (a run past it is killed and fails): generous, because eight ranks on a loaded
#: two-core machine may take minutes for what takes seconds on an idle one
TIMEOUT_S = 600

#: environment variables of an enclosing MPI job; a child mpiexec must not inherit them
_MPI_ENV_PREFIXES = ("PMI_", "PMIX_", "HYDI_", "HYDRA_", "MPIR_", "MPI_LOCALNRANKS", "MPI_LOCALRANKID",
                     "OMPI_")


def mpiexec_path() -> str | None:
    """The venv's mpiexec (the mpich wheel puts it next to python), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    if local.exists():
        return str(local)
    return shutil.which("mpiexec")


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


@dataclass(repr=False)
class Run:
    """One finished CLI run; ``str(run)`` is the command and its output, for assertion messages."""

    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __repr__(self) -> str:
        return (f"command: {' '.join(self.cmd)}\nexit code: {self.returncode} after {self.seconds:.1f} s\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


def run_python(args: list, cwd: Path, nprocs: int | None = None, timeout: float = TIMEOUT_S,
               what: str = "the command", env: dict[str, str] | None = None) -> Run:
    """Run ``python ARGS`` in ``cwd`` (under ``mpiexec -n NPROCS`` if given), outside any enclosing MPI
    job, with a hang guard: past ``timeout`` the test fails naming ``what`` and showing the output."""
    cmd = [sys.executable, *map(str, args)]
    if nprocs is not None:
        mpiexec = mpiexec_path()
        if mpiexec is None:
            pytest.skip("mpiexec not found next to python or on PATH")
        cmd = [mpiexec, "-n", str(nprocs), *cmd]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=_child_env() | (env or {}), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"{what} did not finish within {timeout:.0f} s (hang?): {' '.join(cmd)}\n"
            f"--- stdout ---\n{_text(exc.stdout)[-3000:]}\n--- stderr ---\n{_text(exc.stderr)[-3000:]}",
            pytrace=False,
        )
    return Run(cmd, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


def run_nicemu(args: list, cwd: Path, nprocs: int | None = None, timeout: float = TIMEOUT_S) -> Run:
    """Run ``python -m nicemu ARGS`` (under ``mpiexec -n NPROCS`` if given) in ``cwd``."""
    return run_python(["-m", "nicemu", *args], cwd, nprocs, timeout, "nicemu")


#: a small Llama-shaped config.json for train runs that move real data in seconds
TINY_LLAMA = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
              "vocab_size": 1024, "model_type": "llama"}


def model_and_mpi(args: list, cwd: Path, nprocs: int) -> tuple[list[dict], list[dict], Run]:
    """``nicemu ARGS --json`` with the model executor alone, then with ``--executor mpi`` under mpiexec (its
    real data all correct): (model records, MPI records, the model run)."""
    model = run_nicemu([*args, "--json", "model.json"], cwd)
    assert model.returncode == 0, str(model)
    real = run_nicemu([*args, "--executor", "mpi", "--json", "mpi.json"], cwd, nprocs)
    assert real.returncode == 0, str(real)
    assert "out of bounds values : 0 OK" in real.stdout, str(real)
    return json.loads((cwd / "model.json").read_text()), json.loads((cwd / "mpi.json").read_text()), model


@pytest.fixture
def nicemu(tmp_path: Path) -> Callable[..., Run]:
    """``nicemu(args, n=None, timeout=...)``: run the CLI in ``tmp_path``; ``n`` ranks under mpiexec."""

    def _run(args: list[str], n: int | None = None, timeout: float = TIMEOUT_S) -> Run:
        return run_nicemu(args, tmp_path, n, timeout)

    return _run


@pytest.fixture(scope="session")
def bench_json(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict]]:
    """``bench_json(args, n=None)``: run ``nicemu bench ARGS --json FILE`` (under ``mpiexec -n N`` if
    given), assert it succeeded, and return the records. Identical runs are made once per session
    (the reference runs several tests compare against)."""
    cache: dict[tuple, list[dict]] = {}

    def _run(args: list[str], n: int | None = None) -> list[dict]:
        key = (tuple(map(str, args)), n)
        if key not in cache:
            cwd = tmp_path_factory.mktemp("bench")
            proc = run_nicemu(["bench", *args, "--json", "out.json"], cwd, n)
            assert proc.returncode == 0, str(proc)
            assert "Traceback" not in proc.stderr, str(proc)
            out = cwd / "out.json"
            assert out.is_file(), f"--json file not written\n{proc}"
            records = json.loads(out.read_text())
            assert isinstance(records, list) and records, f"no records in the JSON\n{proc}"
            cache[key] = records
        return cache[key]

    return _run


#: One job runs several ``nicemu`` invocations in turn: each rank calls ``nicemu.cli.main`` (what
#: ``python -m nicemu`` calls) in the case's own directory with its stdout and stderr captured, and
#: records its status and output. A hang, an ``MPI_Abort`` or a crash ends the job, which fails every
#: case of the batch; a traceback escaping ``main`` is recorded as the case's output.
_BATCH_DRIVER = r"""
import contextlib, io, json, os, sys, traceback
from mpi4py import MPI
from nicemu.cli import main

comm = MPI.COMM_WORLD
for case_dir in sys.argv[1:]:
    os.chdir(case_dir)
    args = json.loads(open("args.json").read())
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(args)
        except SystemExit as exc:
            status = exc.code
        except BaseException:
            traceback.print_exc()
            status = "raised"
    with open(f"rank{comm.rank}.json", "w") as f:
        json.dump({"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}, f)
    comm.Barrier()
"""


@dataclass(repr=False)
class Outcome:
    """One case of a batched job: every rank's status, the ranks' output joined, and its directory."""

    what: str
    statuses: list
    stdout: str
    stderr: str
    cwd: Path

    def __repr__(self) -> str:
        return (f"{self.what}\nper-rank statuses: {self.statuses}\n--- stdout ---\n{self.stdout[-4000:]}\n"
                f"--- stderr ---\n{self.stderr[-4000:]}")


def run_cli_batch(where: Path, cases: list[tuple[str, list[str]]], nprocs: int | None,
                  files: dict[str, str] | None = None, timeout: float = TIMEOUT_S) -> dict[str, Outcome]:
    """Run ``cases`` ((id, argv) pairs: ``nicemu ARGV``) in one job of ``nprocs`` ranks (plain python
    if None), each in ``where/id`` with ``files`` written there; the outcomes by id."""
    dirs = []
    for cid, argv in cases:
        d = where / cid
        d.mkdir()
        for name, text in (files or {}).items():
            (d / name).write_text(text)
        (d / "args.json").write_text(json.dumps(list(map(str, argv))))
        dirs.append(d)
    run = run_python(["-c", _BATCH_DRIVER, *dirs], where, nprocs, timeout + 60,
                     f"the batch of {len(cases)} nicemu runs (mpiexec -n {nprocs})")
    assert run.returncode == 0, f"the batched job failed (a case aborted or crashed the job?)\n{run}"
    out = {}
    for (cid, argv), d in zip(cases, dirs):
        ranks = [json.loads((d / f"rank{r}.json").read_text()) for r in range(nprocs or 1)]
        out[cid] = Outcome(f"nicemu {' '.join(map(str, argv))} (mpiexec -n {nprocs})",
                           [r["status"] for r in ranks], "".join(r["stdout"] for r in ranks),
                           "".join(r["stderr"] for r in ranks), d)
    return out
