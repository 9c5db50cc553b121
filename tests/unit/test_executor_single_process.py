"""The MPI executor with every node in one process (no mpiexec): data and timing."""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_time
from nicemu.errors import CollectiveError
from nicemu.nic.profile import load_profile

PROFILE = load_profile("directreduce-paper")
TOPOLOGIES = ["ring:2", "ring:5", "ring:8", "torus:2x2x2", "torus:3x3", "torus:3x2x2"]
DTYPES = ["float32", "float64", "float16", "int32", "int64"]


def random_inputs(nodes, count, dtype, seed):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "i":
        return rng.integers(-1000, 1000, size=(nodes, count)).astype(dtype)
    return rng.standard_normal((nodes, count)).astype(dtype)


def check(result, reference, dtype, nodes):
    if np.dtype(dtype).kind == "i":
        np.testing.assert_array_equal(result, reference.astype(dtype))
    else:
        tol = {"float16": 2e-2, "float32": 1e-5, "float64": 1e-12}[np.dtype(dtype).name] * nodes
        np.testing.assert_allclose(result.astype(np.float64), reference, rtol=tol, atol=tol)


@pytest.fixture(scope="module", params=TOPOLOGIES)
def emu(request):
    with Emulator(MPI.COMM_SELF, request.param, PROFILE) as e:
        yield e


@pytest.mark.parametrize("algo", ["ring", "directreduce", "mpi"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["sum", "max", "min"])
@pytest.mark.parametrize("count", [1, 3, 7, 1000])
def test_allreduce_matches_numpy_float64(emu, algo, dtype, op, count):
    n = emu.topology.nodes
    x = random_inputs(n, count, dtype, seed=count)
    ref = {"sum": np.sum, "max": np.max, "min": np.min}[op](x.astype(np.float64), axis=0)
    res = emu.allreduce(x, op=op, algo=algo)
    for row in res.data:
        check(row, ref, dtype, n)
    if algo != "mpi":
        t = model_time("allreduce", algo, emu.topology, PROFILE, count, dtype)
        assert res.emulated_us == t.emulated_us          # bit-identical to the model executor
        assert res.wire_bytes == t.wire_bytes
        assert res.host_busy_us == t.host_busy_us and res.nic_busy_us == t.nic_busy_us
    else:
        assert res.emulated_us is None


@pytest.mark.parametrize("algo", ["ring", "directreduce", "mpi"])
@pytest.mark.parametrize("count", [2, 9, 1001])
def test_reduce_scatter_and_allgather(emu, algo, count):
    n = emu.topology.nodes
    x = random_inputs(n, count, "int64", seed=7)
    ref = x.sum(axis=0)
    off, cnt = emu.segments(count)
    rs = emu.reduce_scatter(x, algo=algo)
    for i, seg in enumerate(rs.data):
        np.testing.assert_array_equal(seg, ref[off[i]:off[i] + cnt[i]])
    ag = emu.allgather(x, algo=algo)
    expect = np.concatenate([x[i, off[i]:off[i] + cnt[i]] for i in range(n)])
    for row in ag.data:
        np.testing.assert_array_equal(row, expect)
    if algo != "mpi":
        assert rs.emulated_us == model_time("reducescatter", algo, emu.topology, PROFILE, count,
                                            "int64").emulated_us
        assert ag.emulated_us == model_time("allgather", algo, emu.topology, PROFILE, count,
                                            "int64").emulated_us


def test_input_is_not_modified(emu):
    x = random_inputs(emu.topology.nodes, 100, "float32", 1)
    before = x.copy()
    emu.allreduce(x, algo="directreduce")
    np.testing.assert_array_equal(x, before)


def test_nan_and_inf_travel():
    with Emulator(MPI.COMM_SELF, "ring:4", PROFILE) as e:
        x = np.ones((4, 10), dtype=np.float32)
        x[1, 3] = np.nan
        x[2, 5] = np.inf
        out = e.allreduce(x, algo="directreduce").data
        assert np.isnan(out[:, 3]).all() and np.isinf(out[:, 5]).all()
        assert (out[:, 0] == 4).all()


def test_bad_shapes_and_types_are_refused():
    with Emulator(MPI.COMM_SELF, "ring:4", PROFILE) as e:
        with pytest.raises(CollectiveError, match="shape"):
            e.allreduce(np.ones(10))
        with pytest.raises(CollectiveError, match="unsupported dtype"):
            e.allreduce(np.ones((4, 10), dtype=np.complex64))
        with pytest.raises(CollectiveError, match="unknown algorithm"):
            e.allreduce(np.ones((4, 10)), algo="nope")
        with pytest.raises(CollectiveError, match="unknown op"):
            e.allreduce(np.ones((4, 10)), op="mulsum")


@pytest.mark.parametrize("topology", ["ring:2", "ring:5", "torus:3x2x2"])
@pytest.mark.parametrize("collective", ["allreduce", "reducescatter", "allgather"])
@pytest.mark.parametrize("algo", ["ring", "directreduce"])
@pytest.mark.parametrize("count", [1, 7, 1001])
def test_bidirectional_rings_with_real_data(topology, collective, algo, count):
    prof = load_profile("directreduce-paper", ["topology.bidirectional=true"])
    with Emulator(MPI.COMM_SELF, topology, prof) as e:
        n = e.topology.nodes
        x = random_inputs(n, count, "int64", seed=count)
        res = e.run(collective, x, algo=algo)
        off, cnt = e.segments(count)
        if collective == "allreduce":
            np.testing.assert_array_equal(np.atleast_2d(res.data), np.broadcast_to(x.sum(0), (n, count)))
        elif collective == "reducescatter":
            for i, seg in enumerate(res.data):
                np.testing.assert_array_equal(seg, x.sum(0)[off[i]:off[i] + cnt[i]])
        else:
            expect = np.concatenate([x[i, off[i]:off[i] + cnt[i]] for i in range(n)])
            np.testing.assert_array_equal(res.data, np.broadcast_to(expect, (n, count)))
        assert res.emulated_us == model_time(collective, algo, e.topology, prof, count, "int64").emulated_us


# --------------------------------------------------------------------------- the step loop itself

def test_step_loop_runs_halves_and_transport_in_order():
    """Per group: hook, open (receives first), every sender half before any receive, the receiver
    halves after the receives completed, the sends last; steps that neither send nor receive skip
    their half. Recorded with a transport and a clock that only log."""
    from types import SimpleNamespace

    from nicemu.collectives.mpi.step_loop import Transport, run_steps

    log = []

    class Clock:
        def reset(self):
            log.append("reset")

        def send(self, s):
            log.append(f"send-half {s.name}")
            return (s.name, "first"), (s.name, "last")

        def receive(self, s, first, last):
            log.append(f"receive-half {s.name} {first} {last}")

    class Logged(Transport):
        def start(self, plan, data, op):
            return plan

        def open(self, g):
            log.append(f"open {g.name}")

        def send(self, g, i, first, last):
            log.append(f"send {g.steps[i].name} {first[0]}")

        def wait_receives(self, g, began):
            log.append(f"wait-receives {g.name}")

        def deliver(self, g, i):
            log.append(f"deliver {g.steps[i].name}")
            return 1.0, 2.0

        def wait_sends(self, g, began):
            log.append(f"wait-sends {g.name}")

    class Hook:
        def at_step(self, k, where):
            log.append(f"hook {k} {where}")

    def step(name, sending=True, receiving=True):
        return SimpleNamespace(name=name, sending=sending, receiving=receiving)

    groups = [SimpleNamespace(name="g0", steps=[step("a"), step("b", receiving=False)]),
              SimpleNamespace(name="g1", steps=[step("c", sending=False)])]
    run_steps(Logged(), Clock(), groups, Hook(), "ring allreduce")
    assert log == [
        "reset",
        "hook 0 ring allreduce", "open g0", "send-half a", "send a a", "send-half b", "send b b",
        "wait-receives g0", "deliver a", "receive-half a 1.0 2.0", "wait-sends g0",
        "hook 1 ring allreduce", "open g1", "wait-receives g1", "deliver c", "receive-half c 1.0 2.0",
        "wait-sends g1",
        "hook 2 ring allreduce (final timing reduction)"]


@pytest.mark.parametrize("faults, stragglers, transport", [
    (None, None, "plain"), ("drop=1e-3,seed=1", None, "reliable"), (None, "1:2", "plain")])
def test_transport_choice_in_one_process(faults, stragglers, transport):
    """Several nodes per rank never take the lean path; link faults take the reliable transport."""
    with Emulator(MPI.COMM_SELF, "ring:4", PROFILE, faults=faults, stragglers=stragglers) as e:
        e.allreduce(np.ones((4, 64), dtype=np.float32), algo="ring")
        assert e.executor.last_transport.name == transport
