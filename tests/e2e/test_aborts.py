"""Clean aborts end to end: a failing rank ends the whole ``mpiexec`` job, promptly and legibly.

``nicemu bench`` runs under ``mpiexec -n 4`` with the executors' test hook
(collectives/mpi/watchdog.py) making rank 1 fail at step 2 of the first call, for a
dense algorithm (``ring``, MPI executor) and a sparse one (``omniccl``, spot
protocol), in three ways:

- ``raise``: an unexpected exception. The failing rank prints
  ``nicemu: internal error on rank 1:`` and one short traceback, and aborts the
  job. The watchdog is off (``NICEMU_WATCHDOG_S=0``), so the abort is the only
  thing that can end the job: that it ended at all is the proof.
- ``exit``: ``os._exit(3)`` in the middle of the collective. MPICH's hydra sees
  a process vanish without ``MPI_Finalize`` and kills the others; ``mpiexec``
  then exits 3 (the dead rank's status, no banner) or 9 (a killed rank's, with
  a "BAD TERMINATION" banner), whichever it reports first. With another
  launcher the peers' watchdogs (:data:`WATCHDOG_S`) would report instead.
  Either is accepted.
- ``stall``: rank 1 sleeps forever. The peers' watchdogs (:data:`WATCHDOG_S`)
  fire and exactly one ``nicemu: error:`` line (the ranks elect the one that
  waited longest) names a waiting node, the peer it waited for and the step.

What is asserted holds on any schedule, however loaded the machine: the exit
status, which lines appear and how often, and for a stall that the reporter
waited at least the watchdog limit and is not the stalled rank. Nothing is
asserted about how long the job took or which of two ranks that could
equally report did: a loaded machine may take longer, and may reorder ranks
that wait at the same time. :data:`RUN_TIMEOUT_S` is only the hang guard (a
run that outlives it is killed and fails); the time from the failure to the
end of the job is shown in failure messages for diagnosis.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import _child_env, mpiexec_path

from nicemu.collectives.mpi.watchdog import FAIL_EXIT_STATUS

pytestmark = pytest.mark.e2e

NPROCS = 4
FAIL_RANK = 1
FAIL_STEP = 2
#: the peers' watchdog limit in the exit and stall cases: short to keep the tests quick, long enough
#: that no wait of a running (but descheduled) rank reaches it before the stall
WATCHDOG_S = 10
#: hang guard only: a loaded machine may be slow to start four ranks, but never this slow
RUN_TIMEOUT_S = 300
ALGOS = {
    "ring": ["--algo", "ring"],
    "omniccl": ["--algo", "omniccl", "--density", "0.5"],
}
BENCH = ["bench", "--topology", f"ring:{NPROCS}", "--sizes", "64K", "--iters", "3", "--warmup", "1"]
#: ring:4 AllReduce has 6 step groups; the hook's step 6 is the final timing reduction
FINAL_STEP = 6


def hook_line(step: int) -> re.Pattern:
    return re.compile(rf"^nicemu: test hook: rank {FAIL_RANK} .* at step {step} of ")


MAX_STDERR_LINES = 30


@dataclass
class Job:
    cmd: list[str]
    returncode: int
    stdout: str
    stderr_lines: list[tuple[float, str]] = field(default_factory=list)   # (monotonic time, line)
    ended: float = 0.0

    @property
    def stderr(self) -> str:
        return "".join(line for _, line in self.stderr_lines)

    def hook_fired_at(self, step: int = FAIL_STEP) -> float | None:
        for t, line in self.stderr_lines:
            if hook_line(step).match(line):
                return t
        return None

    def __str__(self) -> str:
        fired = self.hook_fired_at()
        after = f", {self.ended - fired:.1f} s after the hook fired" if fired is not None and self.ended else ""
        return (f"command: {' '.join(self.cmd)}\nexit code: {self.returncode}{after}\n"
                f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


def _pump(stream, sink: list, stamped: bool) -> None:
    for line in iter(stream.readline, ""):
        sink.append((time.monotonic(), line) if stamped else line)
    stream.close()


def run_failing(algo: str, mode: str, tmp_path: Path, watchdog_s: float | None, step: int = FAIL_STEP) -> Job:
    """``mpiexec -n 4 python -m nicemu bench ...`` with the hook armed; stderr lines are timestamped."""
    mpiexec = mpiexec_path()
    if mpiexec is None:
        pytest.skip("mpiexec not found next to python or on PATH")
    cmd = [mpiexec, "-n", str(NPROCS), sys.executable, "-m", "nicemu", *BENCH, *ALGOS[algo]]
    env = _child_env()
    env.update({"NICEMU_TEST_FAIL_RANK": str(FAIL_RANK), "NICEMU_TEST_FAIL_MODE": mode,
                "NICEMU_TEST_FAIL_STEP": str(step)})
    env.pop("NICEMU_WATCHDOG_S", None)
    if watchdog_s is not None:
        env["NICEMU_WATCHDOG_S"] = str(watchdog_s)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    out: list[str] = []
    err: list[tuple[float, str]] = []
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, out, False), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, err, True), daemon=True)]
    for p in pumps:
        p.start()
    try:
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        for p in pumps:
            p.join(5)
        job = Job(cmd, proc.returncode, "".join(out), list(err))
        pytest.fail(f"the job did not end within {RUN_TIMEOUT_S} s (hang)\n{job}", pytrace=False)
    ended = time.monotonic()
    for p in pumps:
        p.join(10)
    return Job(cmd, proc.returncode, "".join(out), list(err), ended)


def check_common(job: Job, step: int = FAIL_STEP) -> None:
    assert job.returncode != 0, f"a failed job must exit non-zero\n{job}"
    fired = job.hook_fired_at(step)
    assert fired is not None, f"the test hook did not fire on rank {FAIL_RANK}\n{job}"
    assert job.stderr.count("Traceback") <= 1, f"more than one traceback\n{job}"
    assert len(job.stderr_lines) <= MAX_STDERR_LINES, f"{len(job.stderr_lines)} stderr lines\n{job}"
    assert sum(1 for _, line in job.stderr_lines if hook_line(step).match(line)) == 1, str(job)


def error_lines(job: Job) -> list[str]:
    return [line.strip() for _, line in job.stderr_lines if line.startswith("nicemu: error:")]


def check_stall_report(msg: str, job: Job) -> None:
    """Facts of any watchdog report: it waited at least the limit, and the reporter is not the stalled rank
    (rank 1 sleeps; it cannot notice anything)."""
    waited = re.search(r"waited (\d+\.\d) s", msg)
    assert waited and float(waited.group(1)) >= WATCHDOG_S, f"reported before the limit\n{job}"
    reporter = re.search(r"nodes? [\d, ]+ \(rank (\d+)\) waited", msg)
    assert reporter and int(reporter.group(1)) != FAIL_RANK, f"the stalled rank reported\n{job}"


@pytest.mark.parametrize("algo", list(ALGOS))
def test_exception_on_one_rank_aborts_the_job(algo, tmp_path):
    job = run_failing(algo, "raise", tmp_path, watchdog_s=0)   # no watchdog: only the abort can end the job
    check_common(job)
    assert job.stderr.count(f"nicemu: internal error on rank {FAIL_RANK}:") == 1, str(job)
    assert job.stderr.count("nicemu: internal error") == 1, str(job)
    assert "InjectedFault: injected failure on rank 1 at step 2" in job.stderr, str(job)
    assert job.stderr.count("Traceback") == 1, str(job)
    assert error_lines(job) == [], str(job)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_rank_that_exits_early_ends_the_job(algo, tmp_path):
    job = run_failing(algo, "exit", tmp_path, watchdog_s=WATCHDOG_S)
    check_common(job)
    assert "Traceback" not in job.stderr, str(job)
    errors = error_lines(job)
    # hydra kills the other ranks and exits with the status of the first process it reports: the
    # dead rank's own (3, no banner), or 9 for a rank it killed, with its "BAD TERMINATION" banner
    # (on stdout)
    hydra = job.returncode == FAIL_EXIT_STATUS or "BAD TERMINATION" in job.stdout + job.stderr
    watchdog = len(errors) == 1 and "(rank 1)" in errors[0]
    assert hydra or watchdog, f"neither MPICH's report of the dead process nor one watchdog message\n{job}"
    assert len(errors) <= 1, str(job)


@pytest.mark.parametrize("algo", list(ALGOS))
def test_stalled_rank_is_named_by_the_watchdog(algo, tmp_path):
    job = run_failing(algo, "stall", tmp_path, watchdog_s=WATCHDOG_S)
    check_common(job)
    assert "Traceback" not in job.stderr, str(job)
    errors = error_lines(job)
    assert len(errors) == 1, f"expected exactly one watchdog message\n{job}"
    msg = errors[0]
    check_stall_report(msg, job)
    if algo == "ring":
        # at step 2 nodes 0 and 2 wait for node 1 (to take, to send its data); node 3 waits from step 3 on,
        # for node 2 (which waits for node 1). The longest waiter reports; which of them that is depends
        # on the scheduling, but a report from step 2 can only name node 1.
        m = re.fullmatch(r"nicemu: error: ring allreduce: node (\d) \(rank \1\) waited \d+\.\d s in "
                         r"reduce-scatter step (\d) of dim 0 for (?:data from node (\d) \(rank \3\)|"
                         r"node (\d) \(rank \4\) to receive its data); that rank is stalled or gone", msg)
        assert m, msg
        node, step, peer = int(m.group(1)), int(m.group(2)), int(m.group(3) or m.group(4))
        assert step >= FAIL_STEP and (step > FAIL_STEP or peer == FAIL_RANK), msg
        assert peer in ((node + 1) % NPROCS, (node - 1) % NPROCS), msg
    else:
        assert re.fullmatch(r"nicemu: error: omniccl allreduce: nodes? [\d, ]+ \(rank \d\) waited \d+\.\d s "
                            r"in the spot protocol \(event \d+\) for .*(round \d+).*; "
                            r"(that rank is|those ranks are) stalled or gone", msg), msg


def test_stall_before_the_final_reduction(tmp_path):
    """Rank 1 stalls after its last step: the others wait in the final (blocking) Allreduce, which the
    watchdog's thread guards; it aborts the job with one message."""
    job = run_failing("ring", "stall", tmp_path, watchdog_s=WATCHDOG_S, step=FINAL_STEP)
    check_common(job, step=FINAL_STEP)
    assert "Traceback" not in job.stderr, str(job)
    errors = error_lines(job)
    assert len(errors) == 1, f"expected exactly one watchdog message\n{job}"
    check_stall_report(errors[0], job)
    assert re.fullmatch(r"nicemu: error: ring allreduce: node [023] \(rank [023]\) waited \d+\.\d s for the "
                        r"other ranks to finish the collective \(final timing reduction\); some rank is "
                        r"stalled or gone \(watchdog: aborting the job\)", errors[0]), errors[0]
