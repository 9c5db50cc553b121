"""The collective methods as the API: every algorithm, ``out=`` and in place, sparse options as keywords,
and bad input refused on every rank (run with: mpiexec -n N python -m pytest --with-mpi tests/mpi)."""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import COLLECTIVES, CollectiveError, Emulator, model_sparse, model_time, names, sparse_config
from nicemu.collectives.schedules.sparse_patterns import block_mask

COMM = MPI.COMM_WORLD
NODES = 4 if COMM.size <= 4 else 8
TOPOLOGY = f"ring:{NODES}"
COUNT = 96                       # a multiple of the nodes (alltoall) and of the block size below
ROOT = NODES - 1                 # broadcast and reduce
EMU = {}


def emu() -> Emulator:
    """One emulator per session (creating one is collective, and cheap calls keep the cases quick)."""
    if "e" not in EMU:
        EMU["e"] = Emulator(COMM, TOPOLOGY, "directreduce-paper")
    return EMU["e"]


def inputs(dtype=np.int64) -> np.ndarray:
    rows = np.arange(NODES * COUNT, dtype=np.int64).reshape(NODES, COUNT) % 7 - 3
    rows[:, 32:64] = 0                                # a zero block for the sparse algorithms
    return rows.astype(dtype)


def expected(collective: str, x: np.ndarray) -> np.ndarray:
    """Every node's full output row, from numpy."""
    if collective in ("allreduce", "reducescatter", "reduce"):
        return np.broadcast_to(x.sum(axis=0), x.shape)
    if collective == "broadcast":
        return np.broadcast_to(x[ROOT], x.shape)
    off, cnt = emu().segments(COUNT)
    if collective == "allgather":
        row = np.concatenate([x[i, off[i]:off[i] + cnt[i]] for i in range(NODES)])
        return np.broadcast_to(row, x.shape)
    blocks = x.reshape(NODES, NODES, COUNT // NODES)
    return blocks.transpose(1, 0, 2).reshape(NODES, COUNT)


CASES = [(c, a) for c in COLLECTIVES for a in names(collective=c)]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("collective, algo", CASES, ids=[f"{c}-{a}" for c, a in CASES])
def test_every_algorithm_through_the_methods(collective, algo):
    e = emu()
    x = inputs()
    mine = x[e.node_range.start:e.node_range.stop]
    method = {"allreduce": e.allreduce, "reducescatter": e.reduce_scatter, "allgather": e.allgather,
              "alltoall": e.alltoall, "broadcast": lambda m, **kw: e.broadcast(m, root=ROOT, **kw),
              "reduce": lambda m, **kw: e.reduce(m, root=ROOT, **kw)}[collective]
    options = {"block_size": 32} if algo in names(kind="sparse") else {}
    res = method(mine, algo=algo, **options)
    out = np.full_like(mine, -99)
    res_out = method(mine, algo=algo, out=out, **options)
    work = mine.copy()
    method(work, algo=algo, out=work, **options)                     # in place
    want = expected(collective, x)[e.node_range.start:e.node_range.stop]
    off, cnt = e.segments(COUNT)
    for i, node in enumerate(e.node_range):
        if collective == "reduce" and node != ROOT:      # only the root's row is defined
            continue
        cols = slice(off[node], off[node] + cnt[node]) if collective == "reducescatter" else slice(None)
        got = res.data[i] if not isinstance(res.data, np.ndarray) or res.data.ndim == 2 else res.data
        assert np.array_equal(got, want[i, cols])
        assert np.array_equal(out[i, cols], want[i, cols])
        assert np.array_equal(work[i, cols], want[i, cols])
    assert np.array_equal(mine, x[e.node_range.start:e.node_range.stop])     # x is only read
    if collective != "reducescatter":
        assert res_out.data is out
    assert res.emulated_us == res_out.emulated_us
    if algo in names(scheduled=True) or algo == "host-best":
        assert res.emulated_us == model_time(collective, algo, TOPOLOGY, "directreduce-paper", COUNT,
                                             dtype="int64", root=ROOT if collective in ("broadcast", "reduce")
                                             else 0).emulated_us
    elif algo in names(kind="sparse"):                                  # block_size=32 reached the protocol
        masks = block_mask(x, 32).reshape(NODES, -1)
        cfg = sparse_config(algo, NODES, block_size=32)
        assert res.emulated_us == model_sparse(cfg, masks, "directreduce-paper", 8).emulated_us
        assert res.emulated_us != model_sparse(algo, masks, "directreduce-paper", 8).emulated_us


def _refused(call, match: str, bad_rank: int) -> None:
    """``call`` fails with a one-line CollectiveError on every rank; other ranks name the bad one."""
    with pytest.raises(CollectiveError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text and match in text, text
    if COMM.rank != bad_rank and "disagree" not in text:
        assert text.startswith(f"rank {bad_rank}: "), text


@pytest.mark.mpi(min_size=2)
def test_bad_input_on_one_rank_is_refused_on_every_rank():
    e = emu()
    x = inputs(np.float32)[e.node_range.start:e.node_range.stop].copy()
    last = COMM.size - 1
    me = COMM.rank
    _refused(lambda: e.allreduce(x if me != last else x[:, None], algo="ring"), "pass an array of shape", last)
    _refused(lambda: e.allreduce(x if me != last else x.astype(np.complex64), algo="ring"), "dtype", last)
    ro = x.copy()
    ro.flags.writeable = False
    _refused(lambda: e.allreduce(x, algo="ring", out=ro if me == 0 else None), "read-only", 0)
    strided = np.empty((x.shape[0], 2 * COUNT), np.float32)[:, ::2]
    _refused(lambda: e.allreduce(x, algo="ring", out=strided if me == last else None), "C-contiguous", last)
    _refused(lambda: e.allreduce(x, algo="directreduce", block_size=64), "sparse option", 0)
    _refused(lambda: e.allreduce(x, algo="omniccl", blocksize=64), "unknown option blocksize=", 0)
    _refused(lambda: e.allreduce(x, algo="omniccl", op="max"), "cannot compute 'max'", 0)
    _refused(lambda: e.allreduce(x, algo="no-such"), "unknown algorithm", 0)
    _refused(lambda: e.allreduce(list(x), algo="ring"), "numpy array", 0)
    _refused(lambda: e.allreduce(x, algo="ring", call=-1 if me == last else None), "call must be", last)
    _refused(lambda: e.allreduce(x if me != last else x[:, :COUNT // 2].copy(), algo="ring"), "disagree", last)
    res = e.allreduce(x, algo="ring")                     # the emulator still works afterwards
    assert np.array_equal(res.data, np.broadcast_to(inputs(np.float32).sum(axis=0), x.shape))


def teardown_module():
    if "e" in EMU:
        EMU.pop("e").free()
