"""Watchdog-aware waits: a stalled collective becomes an error that names who waited for whom.

Every wait of the MPI executor and of the spot protocol goes through a
:class:`Watchdog` instead of a blocking ``Waitall``/``Probe``:

* :meth:`Watchdog.wait` tests the requests once (the common case: they are
  already complete), then spins on ``MPI.Request.Testall`` for about
  :data:`SPIN_S` (1 ms) so that fast paths stay as fast as a blocking wait,
  then sleeps between tests with a back-off from :data:`NAP_FIRST_S` to
  :data:`NAP_MAX_S` (1 ms). The spin yields the CPU (``sched_yield``) after
  every test, as MPICH's own blocking wait does: a pure spin made a 1 KiB step
  20-30x slower with 4 ranks on 2 cores, because the peer that should send
  could not run. When every rank has a CPU, the MPI executor makes the wait
  poll without yielding for its first 50 µs and never sleep
  (``Watchdog.busy_s``, ``Watchdog.spin_s``);
* :meth:`Watchdog.wait_some` does the same with ``Testsome`` for the spot
  protocol's event loop, which keeps one receive posted per peer and kind of
  message and handles every one that has completed;
* :meth:`Watchdog.blocking` covers the few calls that are not polled (RMA
  ``Flush`` and ``Unlock_all``, which may need the target's progress, and the
  MPI executor's final ``Allreduce``, which is faster blocking): a daemon
  thread, started on first use, aborts the job with the same kind of message
  if such a call outlasts the limit (it cannot raise in the blocked thread).

When nothing completes for the limit, the wait raises :class:`CollectiveStalled`
(a ``RuntimeError``) with a one-line message built only then, naming the
waiting node(s), the peer rank and node, the collective, the algorithm and the
step, e.g.::

    ring allreduce: node 3 (rank 1) waited 30.0 s in reduce-scatter step 2 of dim 0
    for data from node 2 (rank 0); that rank is stalled or gone

The limit counts from the moment this rank started the wait, so time spent
computing elsewhere never counts. It comes from ``Emulator(..., watchdog_s=...)``
or else from the environment variable ``NICEMU_WATCHDOG_S`` (default
:data:`DEFAULT_LIMIT_S`, 60 s); ``0`` disables the watchdog and restores the
blocking ``Waitall``/``Waitany``. After a stall the communicator is in an
undefined state: the only sensible reaction is to end the job (the ``nicemu``
CLI prints the message once and calls ``Abort``).

Only one rank should report a stall: the one that has waited longest, which is
the one closest to the culprit (the others wait, directly or not, for it). All
limits are equal, so it is normally the first whose watchdog fires. That rank
sends every other rank of the communicator a small *stall notice* (carrying
when its wait began), then listens for :data:`NOTICE_GRACE_S` for notices of
ranks that fired at about the same time; the earliest start wins (ties: the
lower rank). A rank that finds a notice from an earlier-begun wait already
waiting when its own watchdog fires, or whose spot-protocol loop receives one,
raises a *secondary* :class:`CollectiveStalled` (``exc.secondary`` is true),
which the CLI does not print.

The notice channel is the one place that receives from any source: any rank
may report. It shares the executor's communicator but has a tag of its own,
``MPI.TAG_UB`` (collectives/mpi/tags.py), above every protocol's range, and its
receives (``Iprobe``/``Recv``) name that tag, so a notice never matches a
protocol receive and a protocol message never matches a notice receive. A
duplicated communicator would do the same at the cost of one more
communicator per Emulator and a collective ``Dup`` when it is made.

Test hook (for tests/e2e/test_aborts.py; never set it in normal use)
---------------------------------------------------------------------
Three environment variables, read once per process, inject a failure into one
rank at one step of the first collective call that reaches that step::

    NICEMU_TEST_FAIL_RANK=r          rank of the executor's communicator to fail
    NICEMU_TEST_FAIL_MODE=raise      raise InjectedFault (an unexpected exception)
                         exit       os._exit(3) in the middle of the collective
                         stall      sleep forever (the peers' watchdogs must fire)
    NICEMU_TEST_FAIL_STEP=k          dense executor: step group k (0-based) of the call, or,
                                     for k = the number of groups, the final timing reduction;
                                     spot protocol: before event k of the call's event
                                     loop (0: before the first records are written)

The hook fires once per process, before the rank sends anything of that step.
When ``NICEMU_TEST_FAIL_RANK`` is unset (or names another rank) the executors
hold ``None`` and pay one ``is not None`` test per step.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
from mpi4py import MPI

from nicemu.collectives.mpi import tags
from nicemu.errors import CollectiveError, CollectiveStalled  # noqa: F401 (re-exported)

ENV_LIMIT = "NICEMU_WATCHDOG_S"
DEFAULT_LIMIT_S = 60.0
#: tight Testall/Testany loop before the first sleep (fast paths never sleep)
SPIN_S = 1e-3
#: first sleep of the back-off, doubled up to NAP_MAX_S
NAP_FIRST_S = 50e-6
NAP_MAX_S = 1e-3
#: how long a rank whose watchdog fired listens for notices of ranks that fired at the same time
NOTICE_GRACE_S = 0.2
#: how long a secondary reporter waits for the first reporter's abort (CLI)
SECONDARY_GRACE_S = 3.0

_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))

ENV_FAIL_RANK = "NICEMU_TEST_FAIL_RANK"
ENV_FAIL_MODE = "NICEMU_TEST_FAIL_MODE"
ENV_FAIL_STEP = "NICEMU_TEST_FAIL_STEP"
FAIL_MODES = ("raise", "exit", "stall")
FAIL_EXIT_STATUS = 3


class InjectedFault(RuntimeError):
    """Raised by the test hook (NICEMU_TEST_FAIL_MODE=raise)."""


# --------------------------------------------------------------------------- the limit

def resolve_limit(watchdog_s: float | None = None) -> float:
    """The limit in seconds: ``watchdog_s`` if given, else ``$NICEMU_WATCHDOG_S``, else 60; 0 = off."""
    if watchdog_s is None:
        text = os.environ.get(ENV_LIMIT, "").strip()
        if not text:
            return DEFAULT_LIMIT_S
        try:
            value = float(text)
        except ValueError:
            raise CollectiveError(f"{ENV_LIMIT}={text!r} is not a number of seconds "
                                  f"(use e.g. 60, or 0 to disable the watchdog)") from None
        source = f"{ENV_LIMIT}={text}"
    else:
        try:
            value = float(watchdog_s)
        except (TypeError, ValueError):
            raise CollectiveError(f"watchdog_s={watchdog_s!r} is not a number of seconds") from None
        source = f"watchdog_s={watchdog_s!r}"
    if not math.isfinite(value) or value < 0:
        raise CollectiveError(f"{source}: the watchdog limit must be a finite number of seconds >= 0 "
                              f"(0 disables it)")
    return value


# --------------------------------------------------------------------------- message helpers

def listing(noun: str, values: Sequence[int], limit: int = 4) -> str:
    """``node 3`` / ``nodes 3, 4`` / ``nodes 0, 1, 2, 3 and 12 more`` (sorted, without repeats)."""
    values = sorted({int(v) for v in values})
    if not values:
        return f"no {noun}"
    if len(values) == 1:
        return f"{noun} {values[0]}"
    shown = ", ".join(map(str, values[:limit]))
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"{noun}s {shown}{more}"


def nodes_text(nodes: Sequence[int], limit: int = 4) -> str:
    return listing("node", nodes, limit)


def ranks_text(ranks: Sequence[int], limit: int = 4) -> str:
    return listing("rank", ranks, limit)


def culprit_text(ranks: Sequence[int]) -> str:
    """The closing clause of a stall message."""
    ranks = sorted(set(ranks))
    if not ranks:
        return "some rank is stalled or gone"
    if len(ranks) == 1:
        return "that rank is stalled or gone"
    return "those ranks are stalled or gone"


# --------------------------------------------------------------------------- the watchdog

Describe = Callable[..., str]


class Watchdog:
    """Waits with a wall-clock limit on one communicator (see the module docstring)."""

    def __init__(self, watchdog_s: float | None = None, comm: MPI.Comm | None = None,
                 abort: Callable[[str], None] | None = None) -> None:
        self.limit = resolve_limit(watchdog_s)
        self.comm = comm
        #: what a blocking section that outlasts the limit does (default: print and Abort)
        self.abort = abort if abort is not None else self._abort_job
        self.notice_tag = -1
        if comm is not None and comm != MPI.COMM_NULL:
            self.notice_tag = tags.notice_tag(comm)
        self._notices: list[MPI.Request] = []
        self._wait_began = 0.0    # wall-clock start of the current wait (time.time())
        #: how long :meth:`wait` polls without yielding the CPU (0: yield from the first miss;
        #: oversubscribed ranks must let their peers run), and how long it spins (yielding)
        #: before it sleeps. The MPI executor sets 50 µs and ``math.inf`` when every rank has a
        #: CPU: a short message then never pays a yield, and a long transfer never sleeps
        #: (MPI's progress engine is only driven while this rank tests), while other jobs on
        #: the machine still get the CPU at every yield
        self.busy_s = 0.0
        self.spin_s = SPIN_S

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    # ---- waits ---------------------------------------------------------------------

    def wait(self, requests: list[MPI.Request], describe: Describe, *context,
             spin_s: float | None = None, began: float | None = None) -> None:
        """Complete ``requests`` (like ``MPI.Request.Waitall``) or raise :class:`CollectiveStalled`.

        ``describe(elapsed_s, pending, *context)`` builds the message, only on a
        timeout; ``pending`` lists the indices of the requests still incomplete.
        ``spin_s`` (default ``self.spin_s``, normally :data:`SPIN_S`) is how long to spin before sleeping;
        ``math.inf`` never sleeps, which a nonblocking *collective* needs: it
        advances only while every rank drives MPI progress, so sleeping ranks
        would hold up the others (measured: 4 ranks on 2 cores, an
        ``Iallreduce`` of 3 doubles went from 0.1 ms to several ms).
        ``began`` (``time.time()``) is when the wait counts as begun for the
        election of the reporting rank (default: now, if the first test fails).
        """
        if self.limit <= 0:
            MPI.Request.Waitall(requests)
            return
        if MPI.Request.Testall(requests):
            return
        testall = MPI.Request.Testall
        clock = time.perf_counter
        t0 = clock()
        # the election compares wait starts, and with one node per rank the waits of neighbouring
        # ranks start microseconds apart: take the start now, not as "now - elapsed" at the timeout
        self._wait_began = time.time() if began is None else began
        busy_end = t0 + self.busy_s
        spin_end = max(t0 + (self.spin_s if spin_s is None else spin_s), busy_end)
        deadline = t0 + self.limit
        nap = NAP_FIRST_S
        while True:
            now = clock()
            if now >= deadline:
                pending = [i for i, r in enumerate(requests) if not r.Test()]
                if not pending:
                    return
                self._stalled(now - t0, describe, now - t0, pending, *context)
            if now < busy_end:
                pass
            elif now < spin_end:
                _yield()
            else:
                time.sleep(nap)
                if nap < NAP_MAX_S:
                    nap = min(nap * 2, NAP_MAX_S)
            if testall(requests):
                return

    def wait_some(self, requests: list[MPI.Request], describe: Describe, *context) -> list[int]:
        """Complete at least one of ``requests`` (like ``MPI.Request.Waitsome``) and return the indices of
        all that completed, in increasing order, or raise :class:`CollectiveStalled`; an empty list when
        none is active. One scan hands back every message that has arrived, so a loop over thousands of
        posted receives pays the scan once per batch, not once per message.

        ``describe(elapsed_s, pending, *context)`` builds the message, only on a timeout. While it
        waits, a stall notice from another rank raises a secondary :class:`CollectiveStalled` at
        once (the spot protocol's event loop waits here for whatever comes next, so this is where
        it learns that the job is ending).
        """
        if self.limit <= 0:
            return sorted(MPI.Request.Waitsome(requests) or [])
        testsome = MPI.Request.Testsome
        done = testsome(requests)
        if done is None:
            return []
        if done:
            return sorted(done)
        clock = time.perf_counter
        t0 = clock()
        self._wait_began = time.time()
        busy_end = t0 + self.busy_s
        spin_end = max(t0 + self.spin_s, busy_end)
        deadline = t0 + self.limit
        nap = NAP_FIRST_S
        while True:
            now = clock()
            if now >= deadline:
                done = testsome(requests)
                if done:
                    return sorted(done)
                self._stalled(now - t0, describe, now - t0, list(range(len(requests))), *context)
            self._notice_raises()
            if now < busy_end:
                pass
            elif now < spin_end:
                _yield()
            else:
                time.sleep(nap)
                if nap < NAP_MAX_S:
                    nap = min(nap * 2, NAP_MAX_S)
            done = testsome(requests)
            if done is None:
                return []
            if done:
                return sorted(done)

    def _notice_raises(self) -> None:
        """Raise a secondary :class:`CollectiveStalled` if another rank's stall notice is waiting."""
        source = self._notice_from()
        if source is not None:
            self.comm.Recv(np.empty(2), source, self.notice_tag)
            raise CollectiveStalled(f"rank {self.comm.rank} stops: rank {source} reported a stalled "
                                    f"collective first", secondary=True)

    def blocking(self, describe: Describe, *context) -> _Section | _NullSection:
        """Context manager around a call that cannot be polled (``win.Flush``, ``win.Unlock_all``).

        If the call outlasts the limit, a daemon thread calls ``self.abort(message)``
        (by default: print the message and ``Abort`` the job), because the blocked
        thread cannot raise. ``describe(elapsed_s, *context)`` builds the message.
        """
        if self.limit <= 0:
            return _NULL_SECTION
        return _Section(self, describe, context)

    # ---- stalls --------------------------------------------------------------------

    def _stalled(self, elapsed: float, describe: Describe, *args) -> None:
        """Raise :class:`CollectiveStalled`, secondary unless this rank is the one to report."""
        first = self._earlier_notice(self._wait_began)
        if first is None:
            first = self._elect(self._wait_began)
        message = describe(*args)
        if first is not None:
            raise CollectiveStalled(f"{message} (rank {first} reported the stall)", secondary=True)
        raise CollectiveStalled(message)

    def _usable(self) -> bool:
        comm = self.comm
        return comm is not None and comm != MPI.COMM_NULL and self.notice_tag >= 0

    def _notice_from(self) -> int | None:
        """Rank of a stall notice already waiting, or None."""
        if not self._usable():
            return None
        status = MPI.Status()
        if self.comm.Iprobe(MPI.ANY_SOURCE, self.notice_tag, status):
            return status.Get_source()
        return None

    def _earlier_notice(self, started: float) -> int | None:
        """The rank of a stall notice already waiting from a wait that began before this one's, or None.

        A notice from a rank that began later does not make this rank stand down: ranks a step
        apart begin microseconds apart, and scheduling noise can make the later one fire first.
        This rank then elects, and the other rank, still in its grace period, stands down.
        """
        if not self._usable():
            return None
        status = MPI.Status()
        other = np.empty(2)
        best = None
        while self.comm.Iprobe(MPI.ANY_SOURCE, self.notice_tag, status):
            self.comm.Recv(other, status.Get_source(), self.notice_tag)
            cand = (float(other[0]), int(other[1]))
            if best is None or cand < best:
                best = cand
        if best is not None and best < (started, self.comm.rank):
            return best[1]
        return None

    def _elect(self, started: float) -> int | None:
        """Send this rank's notice, gather those of ranks that fired at the same time; the rank
        whose wait began first reports (None: this one)."""
        if not self._usable() or self.comm.size == 1:
            return None
        comm = self.comm
        mine = np.array([started, comm.rank], dtype=np.float64)
        for r in range(comm.size):
            if r != comm.rank:
                # never waited for: the job is about to end; the requests are kept referenced
                self._notices.append(comm.Isend(mine, r, self.notice_tag))
        best = (started, comm.rank)
        status = MPI.Status()
        other = np.empty(2)
        end = time.perf_counter() + NOTICE_GRACE_S
        while time.perf_counter() < end:
            if comm.Iprobe(MPI.ANY_SOURCE, self.notice_tag, status):
                comm.Recv(other, status.Get_source(), self.notice_tag)
                best = min(best, (float(other[0]), int(other[1])))
            else:
                time.sleep(NAP_MAX_S)
        return None if best[1] == comm.rank else best[1]

    def _abort_job(self, message: str) -> None:
        sys.stderr.write(f"nicemu: error: {message} (watchdog: aborting the job)\n")
        sys.stderr.flush()
        if MPI.Is_initialized() and not MPI.Is_finalized():
            comm = self.comm if self.comm is not None and self.comm != MPI.COMM_NULL else MPI.COMM_WORLD
            comm.Abort(1)
        os._exit(1)


class _NullSection:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None


_NULL_SECTION = _NullSection()


class _Section:
    """One armed blocking section; the guard thread checks its deadline."""

    __slots__ = ("watchdog", "describe", "context", "start")

    def __init__(self, watchdog: Watchdog, describe: Describe, context: tuple) -> None:
        self.watchdog, self.describe, self.context = watchdog, describe, context
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()
        _GUARD.arm(self)

    def __exit__(self, *exc) -> None:
        _GUARD.armed = None


class _Guard:
    """One daemon thread per process that watches the armed blocking section, if any."""

    def __init__(self) -> None:
        self.armed: _Section | None = None
        self.interval = 0.5
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def arm(self, section: _Section) -> None:
        interval = min(0.5, max(0.005, section.watchdog.limit / 10))
        if self.thread is None or interval < self.interval:
            with self.lock:
                self.interval = min(self.interval, interval)
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="nicemu-watchdog", daemon=True)
                    self.thread.start()
        self.armed = section

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            section = self.armed
            if section is None:
                continue
            elapsed = time.perf_counter() - section.start
            if elapsed < section.watchdog.limit or self.armed is not section:
                continue
            if self.armed is not section:
                continue
            self.armed = None
            wd = section.watchdog
            try:
                first = wd._notice_from()
                if first is None:
                    first = wd._elect(time.time() - elapsed)
                message = section.describe(elapsed, *section.context)
            except Exception as exc:   # the message must not keep the job from ending
                first = None
                message = f"a blocking MPI call waited {elapsed:.1f} s ({exc!r} while describing it)"
            if first is not None:
                time.sleep(SECONDARY_GRACE_S)     # rank `first` reports and aborts; normally it ends us
                message += f" (rank {first} reported the stall)"
            wd.abort(message)


_GUARD = _Guard()


# --------------------------------------------------------------------------- the test hook

class FaultHook:
    """The test hook of the module docstring, for one rank."""

    def __init__(self, rank: int, mode: str, step: int) -> None:
        self.rank, self.mode, self.step = rank, mode, step
        self.fired = False

    def at_step(self, step: int, where: str) -> None:
        """Called by an executor at the start of step ``step``; fires once, at ``self.step``."""
        if step != self.step or self.fired:
            return
        self.fired = True
        sys.stderr.write(f"nicemu: test hook: rank {self.rank} {self._verb()} at step {step} of {where} "
                         f"({ENV_FAIL_MODE}={self.mode})\n")
        sys.stderr.flush()
        if self.mode == "raise":
            raise InjectedFault(f"injected failure on rank {self.rank} at step {step} of {where}")
        if self.mode == "exit":
            os._exit(FAIL_EXIT_STATUS)
        while True:
            time.sleep(3600)

    def _verb(self) -> str:
        return {"raise": "raises InjectedFault", "exit": f"calls os._exit({FAIL_EXIT_STATUS})",
                "stall": "stalls forever"}[self.mode]


@functools.lru_cache(maxsize=1)
def fault_hook() -> FaultHook | None:
    """The hook from ``NICEMU_TEST_FAIL_*`` (read once per process), or None when unset."""
    rank = os.environ.get(ENV_FAIL_RANK, "").strip()
    if not rank:
        return None
    mode = os.environ.get(ENV_FAIL_MODE, "raise").strip() or "raise"
    step = os.environ.get(ENV_FAIL_STEP, "0").strip() or "0"
    if mode not in FAIL_MODES:
        raise CollectiveError(f"{ENV_FAIL_MODE}={mode!r}: use one of {', '.join(FAIL_MODES)}")
    try:
        return FaultHook(int(rank), mode, int(step))
    except ValueError:
        raise CollectiveError(f"{ENV_FAIL_RANK} and {ENV_FAIL_STEP} must be integers "
                              f"(got {rank!r} and {step!r})") from None


def local_fault_hook(rank: int) -> FaultHook | None:
    """The hook if it targets ``rank``, else None (what the executors keep)."""
    hook = fault_hook()
    return hook if hook is not None and hook.rank == rank else None
