"""The watchdog's waits (collectives/mpi/watchdog.py) in one process, on ``MPI.COMM_SELF``.

A request that never completes is an ``Irecv`` that no one matches; it is
cancelled afterwards. Limits are tiny (0.2 s), so the timeouts are quick; the
only time bounds asserted are loose ones that separate "timed out" from
"hung", never performance.
"""

from __future__ import annotations

import math
import re
import threading
import time

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, build_schedule
from nicemu.collectives.mpi.executor import MpiExecutor, node_blocks
from nicemu.collectives.mpi.plans import request_owners
from nicemu.collectives.mpi.watchdog import (
    DEFAULT_LIMIT_S,
    ENV_FAIL_MODE,
    ENV_FAIL_RANK,
    ENV_FAIL_STEP,
    ENV_LIMIT,
    CollectiveStalled,
    FaultHook,
    InjectedFault,
    Watchdog,
    culprit_text,
    fault_hook,
    local_fault_hook,
    nodes_text,
    resolve_limit,
)
from nicemu.errors import CollectiveError
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

LIMIT = 0.2
TAG = 4242
#: far above LIMIT: a wait that takes longer has not timed out, it hung
HUNG_S = 30.0


def describe(elapsed, pending, *context):
    return f"waited {elapsed:.1f} s; pending {pending}; context {context}"


@pytest.fixture
def comm():
    c = MPI.COMM_SELF.Dup()
    yield c
    c.Free()


@pytest.fixture
def unmatched(comm):
    """An Irecv that nobody matches, cancelled (and completed) after the test."""
    buf = np.empty(4)
    req = comm.Irecv(buf, 0, TAG)
    yield req
    if req != MPI.REQUEST_NULL:
        req.Cancel()
        req.Wait()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for name in (ENV_LIMIT, ENV_FAIL_RANK, ENV_FAIL_MODE, ENV_FAIL_STEP):
        monkeypatch.delenv(name, raising=False)
    fault_hook.cache_clear()
    yield
    fault_hook.cache_clear()


def completed_pair(comm) -> list[MPI.Request]:
    out = np.arange(3.0)
    inp = np.empty(3)
    return [comm.Irecv(inp, 0, TAG + 1), comm.Isend(out, 0, TAG + 1)]   # never matches `unmatched`


# --------------------------------------------------------------------------- the limit

def test_limit_default_env_and_keyword(monkeypatch):
    assert resolve_limit() == DEFAULT_LIMIT_S == 60.0
    monkeypatch.setenv(ENV_LIMIT, "7.5")
    assert resolve_limit() == 7.5
    assert resolve_limit(2) == 2.0          # the keyword wins over the environment
    monkeypatch.setenv(ENV_LIMIT, "0")
    assert resolve_limit() == 0.0
    monkeypatch.setenv(ENV_LIMIT, " ")
    assert resolve_limit() == DEFAULT_LIMIT_S


@pytest.mark.parametrize("value", ["abc", "-1", "inf", "nan"])
def test_bad_env_limit_is_a_user_error(monkeypatch, value):
    monkeypatch.setenv(ENV_LIMIT, value)
    with pytest.raises(CollectiveError, match=ENV_LIMIT):
        resolve_limit()


@pytest.mark.parametrize("value", [-0.5, "x", float("inf")])
def test_bad_keyword_limit_is_a_user_error(value):
    with pytest.raises(CollectiveError, match="watchdog_s"):
        resolve_limit(value)


def test_emulator_keyword(monkeypatch):
    monkeypatch.setenv(ENV_LIMIT, "5")
    with Emulator(MPI.COMM_SELF, "ring:4", watchdog_s=0.25) as emu:
        assert emu.executor.watchdog.limit == 0.25
    with Emulator(MPI.COMM_SELF, "ring:4") as emu:
        assert emu.executor.watchdog.limit == 5.0
    with pytest.raises(CollectiveError, match="watchdog_s"):
        Emulator(MPI.COMM_SELF, "ring:4", watchdog_s=-1)


# --------------------------------------------------------------------------- wait

def test_wait_on_completed_and_empty_requests(comm):
    wd = Watchdog(LIMIT, comm)
    wd.wait([], describe)
    reqs = completed_pair(comm)
    wd.wait(reqs, describe)
    assert all(r == MPI.REQUEST_NULL for r in reqs)
    wd.wait(reqs, describe)                 # null requests count as complete


def test_wait_completes_after_the_spin(comm):
    """A request completed by another thread after ~50 ms (past the spin, in the back-off)."""
    wd = Watchdog(HUNG_S, comm)
    inp = np.empty(3)
    req = comm.Irecv(inp, 0, TAG)
    timer = threading.Timer(0.05, lambda: comm.Send(np.arange(3.0), 0, TAG))
    timer.start()
    wd.wait([req], describe)
    timer.join()
    np.testing.assert_array_equal(inp, np.arange(3.0))


def test_wait_times_out_with_the_message(comm, unmatched):
    wd = Watchdog(LIMIT, comm)
    done = completed_pair(comm)
    t0 = time.monotonic()
    with pytest.raises(CollectiveStalled) as info:
        wd.wait([done[0], unmatched, done[1]], describe, "ctx")
    elapsed = time.monotonic() - t0
    assert LIMIT <= elapsed < HUNG_S
    exc = info.value
    assert isinstance(exc, RuntimeError) and not exc.secondary
    assert re.fullmatch(r"waited 0\.2 s; pending \[1\]; context \('ctx',\)", str(exc)), str(exc)
    assert "\n" not in str(exc)


def test_wait_that_never_sleeps_times_out_too(comm, unmatched):
    wd = Watchdog(LIMIT, comm)
    with pytest.raises(CollectiveStalled, match=r"^waited 0\.2 s; pending \[0\]"):
        wd.wait([unmatched], describe, spin_s=math.inf)


def test_disabled_watchdog_does_not_time_out(comm):
    """limit 0: the plain blocking Waitall; a request completed after 0.6 s (3x the small limit) is fine."""
    wd = Watchdog(0, comm)
    assert not wd.enabled
    inp = np.empty(3)
    req = comm.Irecv(inp, 0, TAG)
    timer = threading.Timer(3 * LIMIT, lambda: comm.Send(np.arange(3.0), 0, TAG))
    timer.start()
    wd.wait([req], describe)                # must not raise
    timer.join()
    np.testing.assert_array_equal(inp, np.arange(3.0))


def test_disabled_by_environment(monkeypatch, comm):
    monkeypatch.setenv(ENV_LIMIT, "0")
    assert not Watchdog(None, comm).enabled


def test_secondary_when_a_notice_is_waiting(comm, unmatched):
    """Another rank already reported (here: a notice this rank sent itself): the stall is secondary."""
    wd = Watchdog(LIMIT, comm)
    notice = comm.Isend(np.array([0.0, 0.0]), 0, wd.notice_tag)
    try:
        with pytest.raises(CollectiveStalled) as info:
            wd.wait([unmatched], describe)
        assert info.value.secondary
        assert "rank 0 reported the stall" in str(info.value)
    finally:
        if comm.Iprobe(0, wd.notice_tag):      # the watchdog reads a waiting notice to compare starts
            comm.Recv(np.empty(2), 0, wd.notice_tag)
        notice.Wait()


def test_notice_from_a_later_wait_does_not_make_this_rank_stand_down(comm, unmatched):
    """A notice from a wait that began after this one (scheduling put it first): this rank reports."""
    wd = Watchdog(LIMIT, comm)
    late = comm.Isend(np.array([time.time() + 3600.0, 0.0]), 0, wd.notice_tag)
    try:
        with pytest.raises(CollectiveStalled) as info:
            wd.wait([unmatched], describe)
        assert not info.value.secondary
    finally:
        while comm.Iprobe(0, wd.notice_tag):     # this rank's own election notice
            comm.Recv(np.empty(2), 0, wd.notice_tag)
        late.Wait()


# --------------------------------------------------------------------------- wait_some

def test_wait_some_returns_the_completed_request(comm, unmatched):
    wd = Watchdog(LIMIT, comm)
    inp = np.empty(5, dtype=np.int64)
    reqs = [unmatched, comm.Irecv(inp, 0, 7)]
    send = comm.Isend(np.arange(5, dtype=np.int64), 0, 7)
    assert wd.wait_some(reqs, describe) == [1]
    np.testing.assert_array_equal(inp, np.arange(5))
    assert reqs[1] == MPI.REQUEST_NULL and reqs[0] is unmatched
    send.Wait()


def test_wait_some_completes_after_the_spin(comm, unmatched):
    wd = Watchdog(HUNG_S, comm)
    inp = np.empty(3)
    reqs = [unmatched, comm.Irecv(inp, 0, TAG + 2)]
    timer = threading.Timer(0.05, lambda: comm.Send(np.arange(3.0), 0, TAG + 2))
    timer.start()
    assert wd.wait_some(reqs, describe) == [1]
    timer.join()
    np.testing.assert_array_equal(inp, np.arange(3.0))


def test_wait_some_with_nothing_active(comm):
    wd = Watchdog(LIMIT, comm)
    assert wd.wait_some([MPI.REQUEST_NULL], describe) == []


def test_wait_some_times_out_with_the_message(comm, unmatched):
    wd = Watchdog(LIMIT, comm)
    with pytest.raises(CollectiveStalled, match=r"^waited 0\.2 s; pending \[0\]; context \('loop',\)$"):
        wd.wait_some([unmatched], describe, "loop")


def test_wait_some_turns_a_notice_into_a_secondary_stall(comm, unmatched):
    wd = Watchdog(HUNG_S, comm)
    send = comm.Isend(np.array([0.0, 0.0]), 0, wd.notice_tag)
    with pytest.raises(CollectiveStalled) as info:
        wd.wait_some([unmatched], describe)
    assert info.value.secondary and "rank 0" in str(info.value)
    send.Wait()                              # the notice was consumed by the wait
    assert not comm.Iprobe(0, wd.notice_tag)


def test_notice_tag_is_above_every_protocol_tag(comm):
    from nicemu.collectives.mpi import tags
    wd = Watchdog(LIMIT, comm)
    protocol = [v for k, v in vars(tags).items() if k.isupper() and isinstance(v, int) and k != "MIN_TAG_UB"]
    assert wd.notice_tag == tags.tag_ub(comm) >= tags.MIN_TAG_UB
    assert max(protocol) < wd.notice_tag
    assert len(set(protocol)) == len(protocol)      # no two kinds of message share a tag


# --------------------------------------------------------------------------- blocking sections

def test_blocking_section_that_outlasts_the_limit_aborts():
    fired = []
    wd = Watchdog(LIMIT, MPI.COMM_SELF, abort=fired.append)
    with wd.blocking(lambda elapsed, what: f"{what} took {elapsed:.1f} s", "win.Flush"):
        deadline = time.monotonic() + HUNG_S
        while not fired and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(fired) == 1 and re.fullmatch(r"win\.Flush took 0\.\d s", fired[0]), fired


def test_quick_blocking_section_does_not_abort():
    fired = []
    wd = Watchdog(LIMIT, MPI.COMM_SELF, abort=fired.append)
    for _ in range(3):
        with wd.blocking(lambda elapsed: "unused"):
            pass
    time.sleep(3 * LIMIT)
    assert fired == []


def test_disabled_blocking_section_is_free():
    fired = []
    wd = Watchdog(0, MPI.COMM_SELF, abort=fired.append)
    with wd.blocking(lambda elapsed: "unused"):
        time.sleep(0.05)
    assert fired == []


# --------------------------------------------------------------------------- messages

def test_message_helpers():
    assert nodes_text([3]) == "node 3"
    assert nodes_text([4, 3, 3]) == "nodes 3, 4"
    assert nodes_text(range(10)) == "nodes 0, 1, 2, 3 and 6 more"
    assert culprit_text([1]) == "that rank is stalled or gone"
    assert culprit_text([1, 2]) == "those ranks are stalled or gone"
    assert culprit_text([]) == "some rank is stalled or gone"


def _as_rank(ex: MpiExecutor, rank: int, size: int) -> None:
    """Make a one-process executor plan and describe as rank ``rank`` of ``size`` would."""
    nodes = ex.topology.nodes
    ex.rank, ex.size = rank, size
    ex.bounds = node_blocks(nodes, size)
    ex.lo, ex.hi = int(ex.bounds[rank]), int(ex.bounds[rank + 1])
    ex.node_rank = np.searchsorted(ex.bounds, np.arange(nodes), side="right") - 1
    ex.plans.clear()


def _describe_all(ex: MpiExecutor, elapsed: float, schedule, plan, group, receiving: bool) -> str:
    """The message for a group whose every request (as the plain transport makes them) is pending."""
    owner = group.recv_owner if receiving else group.send_owner
    assert owner == request_owners(group.steps, receiving)
    return ex.describe_wait(elapsed, list(range(len(owner))), schedule, plan.plans, group.steps, receiving, owner)


def test_executor_message_names_node_peer_and_step():
    topo = parse_topology("ring:8")
    ex = MpiExecutor(MPI.COMM_SELF, topo, load_profile("directreduce-paper"), watchdog_s=LIMIT)
    _as_rank(ex, 2, 4)                       # rank 2 hosts nodes 4 and 5
    schedule = build_schedule("allreduce", "ring", topo, 1000)
    plan = ex.rank_plan(schedule, 4)
    group = plan.groups[2]
    assert _describe_all(ex, 30.0, schedule, plan, group, True) == (
        "ring allreduce: node 4 (rank 2) waited 30.0 s in reduce-scatter step 2 of dim 0 for data from "
        "node 3 (rank 1); that rank is stalled or gone")
    assert _describe_all(ex, 30.0, schedule, plan, group, False) == (
        "ring allreduce: node 5 (rank 2) waited 30.0 s in reduce-scatter step 2 of dim 0 for node 6 "
        "(rank 3) to receive its data; that rank is stalled or gone")
    ag = plan.groups[8]
    text = ex.describe_wait(1.5, [0], schedule, plan.plans, ag.steps, True, ag.recv_owner)
    assert text.startswith("ring allreduce: node 4 (rank 2) waited 1.5 s in allgather step 1 of dim 0 ")


def test_executor_message_bidirectional_torus():
    topo = parse_topology("torus:2x4")
    ex = MpiExecutor(MPI.COMM_SELF, topo, load_profile("directreduce-paper"), watchdog_s=LIMIT)
    _as_rank(ex, 1, 4)
    schedule = build_schedule("allreduce", "directreduce", topo, 1000, True)
    plan = ex.rank_plan(schedule, 4)
    group = plan.groups[1]
    assert [p.step.direction for p in group.steps] == [1, -1]
    text = _describe_all(ex, 2.0, schedule, plan, group, True)
    assert text == ("directreduce allreduce: nodes 2, 3 (rank 1) waited 2.0 s in reduce-scatter step 0 of "
                    "dim 1 (direction +1) for data from node 1 (rank 0); and in reduce-scatter step 0 of dim 1 "
                    "(direction -1) for data from node 0 (rank 0); that rank is stalled or gone")


def test_single_process_run_is_unchanged_by_the_watchdog():
    """Same data and emulated time with the watchdog on, off, and tiny (nothing waits across ranks)."""
    x = np.random.default_rng(1).standard_normal((8, 1000)).astype(np.float32)
    results = []
    for limit in (None, 0, LIMIT):
        with Emulator(MPI.COMM_SELF, "ring:8", "directreduce-paper", watchdog_s=limit) as emu:
            res = emu.allreduce(x, algo="directreduce")
            results.append((res.data, res.emulated_us))
    for data, emulated in results[1:]:
        np.testing.assert_array_equal(data, results[0][0])
        assert emulated == results[0][1]


# --------------------------------------------------------------------------- the test hook

def test_hook_unset_costs_nothing():
    assert fault_hook() is None
    assert local_fault_hook(0) is None


def test_hook_from_environment(monkeypatch):
    monkeypatch.setenv(ENV_FAIL_RANK, "1")
    monkeypatch.setenv(ENV_FAIL_MODE, "stall")
    monkeypatch.setenv(ENV_FAIL_STEP, "3")
    hook = fault_hook()
    assert (hook.rank, hook.mode, hook.step) == (1, "stall", 3)
    assert fault_hook() is hook             # read once
    assert local_fault_hook(1) is hook and local_fault_hook(0) is None


@pytest.mark.parametrize("env, match", [
    ({ENV_FAIL_RANK: "1", ENV_FAIL_MODE: "explode"}, ENV_FAIL_MODE),
    ({ENV_FAIL_RANK: "one"}, ENV_FAIL_RANK),
    ({ENV_FAIL_RANK: "1", ENV_FAIL_STEP: "x"}, ENV_FAIL_STEP),
])
def test_bad_hook_values(monkeypatch, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(CollectiveError, match=match):
        fault_hook()


def test_hook_raises_once_at_its_step(capsys):
    hook = FaultHook(0, "raise", 2)
    hook.at_step(0, "ring allreduce")
    hook.at_step(1, "ring allreduce")
    with pytest.raises(InjectedFault, match="rank 0 at step 2 of ring allreduce"):
        hook.at_step(2, "ring allreduce")
    hook.at_step(2, "ring allreduce")       # fired already
    assert "test hook: rank 0 raises InjectedFault at step 2" in capsys.readouterr().err


def test_hook_in_a_single_process_run(monkeypatch):
    monkeypatch.setenv(ENV_FAIL_RANK, "0")
    monkeypatch.setenv(ENV_FAIL_MODE, "raise")
    monkeypatch.setenv(ENV_FAIL_STEP, "1")
    with Emulator(MPI.COMM_SELF, "ring:4") as emu:
        with pytest.raises(InjectedFault, match="step 1 of ring allreduce"):
            emu.allreduce(np.ones((4, 8), dtype=np.float32), algo="ring")
        emu.allreduce(np.ones((4, 8), dtype=np.float32), algo="ring")   # once per process
