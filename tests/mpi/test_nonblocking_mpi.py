"""Non-blocking calls and groups in the API (collectives/api/nonblocking.py): the data checked against numpy,
the settled times against the model's concurrent replay computed here independently of the request
plumbing (run with: mpiexec -n N python -m pytest --with-mpi tests/mpi)."""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import CollectiveError, Emulator, build_schedule, model_time
from nicemu.collectives.model.concurrent import Call, run_concurrent
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

COMM = MPI.COMM_WORLD
PROFILE = "400g-gen5"
COUNT = 8 * 4096


def _rows(node: int, seed: int) -> np.ndarray:
    return (np.arange(COUNT, dtype=np.int64) * (node + 1) + seed) % 11 - 5


@pytest.mark.mpi(min_size=2)
def test_requests_in_flight_together_share_the_fabric():
    n = COMM.size
    with Emulator(COMM, f"ring:{n}", PROFILE) as emu:
        x = [_rows(COMM.rank, s) for s in range(2)]
        reqs = [emu.iallreduce(x[0], algo="ring"), emu.iallreduce(x[1], algo="directreduce")]
        res = emu.waitall(reqs)
        for s, r in enumerate(res):
            want = sum(_rows(v, s) for v in range(n))
            assert np.array_equal(r.data, want)
        prof, topo = load_profile(PROFILE), parse_topology(f"ring:{n}")
        calls = [Call(build_schedule("allreduce", a, topo, COUNT, False, None), np.arange(n), 8)
                 for a in ("ring", "directreduce")]
        ref = run_concurrent(calls, topo, prof)
        assert [r.emulated_us for r in res] == [t.emulated_us for t in ref]
        assert [q.alone_us for q in reqs] == [model_time("allreduce", a, topo, prof, COUNT, "int64").emulated_us
                                             for a in ("ring", "directreduce")]
        assert all(q.slowdown_vs_alone > 1.0 for q in reqs)
        one = emu.iallreduce(x[0], algo="ring")
        alone = one.wait()
        assert alone.emulated_us == reqs[0].alone_us and one.slowdown_vs_alone == 1.0
        with pytest.raises(CollectiveError, match="already waited"):
            emu.waitall(reqs)
        with pytest.raises(CollectiveError, match="non-blocking calls cover"):
            emu.iallreduce(x[0], algo="omniccl")


@pytest.mark.mpi(min_size=4)
def test_groups_settle_together_on_the_parent_fabric():
    n = COMM.size - COMM.size % 2
    world = COMM.Split(0 if COMM.rank < n else MPI.UNDEFINED, COMM.rank)
    if world == MPI.COMM_NULL:
        return
    try:
        with Emulator(world, f"ring:{n}", PROFILE) as emu:
            groups = [list(range(0, n, 2)), list(range(1, n, 2))]     # interleaved: every link shared
            sub = emu.split(groups)
            mine = world.rank % 2
            logical = world.rank // 2
            req = sub.iallreduce(_rows(logical, mine), algo="directreduce")
            own = emu.iallgather(np.full(4, world.rank, dtype=np.int32), algo="ring")
            res = emu.waitall([req, own] if mine == 0 else [own, req])
            got = res[0] if mine == 0 else res[1]
            assert np.array_equal(got.data, sum(_rows(v, mine) for v in range(n // 2)))
            gathered = (res[1] if mine == 0 else res[0]).data
            off, cnt = emu.segments(4)
            want = np.concatenate([np.full(c, i, dtype=np.int32) for i, c in enumerate(cnt)])
            assert np.array_equal(gathered, want) and off.tolist() == np.cumsum([0, *cnt[:-1]]).tolist()
            # the same replay, built by hand: both groups' calls and the parent's own
            prof, topo = load_profile(PROFILE), parse_topology(f"ring:{n}")
            half = parse_topology(f"ring:{n // 2}")
            calls = [Call(build_schedule("allreduce", "directreduce", half, COUNT, False, None),
                          np.asarray(g), 8) for g in groups]
            calls.append(Call(build_schedule("allgather", "ring", topo, 4, False, None), np.arange(n), 4))
            ref = run_concurrent(calls, topo, prof)
            assert got.emulated_us == ref[mine].emulated_us
            assert req.slowdown_vs_alone > 1.0      # the other group crosses every link it uses
            sub.free()
    finally:
        world.Free()


@pytest.mark.mpi(min_size=2)
def test_bad_groups_are_refused_on_every_rank():
    n = COMM.size
    with Emulator(COMM, f"ring:{n}", PROFILE) as emu:
        with pytest.raises(CollectiveError, match="overlap"):
            emu.split([[0, 1], [1, 0]])
        with pytest.raises(CollectiveError, match="at least 2 nodes"):
            emu.split([[0]])
        with pytest.raises(CollectiveError, match="topology of 2 nodes"):
            emu.split([[0, 1]], ["ring:3"])
