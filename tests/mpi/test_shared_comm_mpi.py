"""Dense calls, point-to-point transfers and sparse calls back to back on one communicator.

Every protocol receives from named sources with tags from its own range
(collectives/mpi/tags.py), so one Emulator serves them all: a rank that leaves
a call early (its last sends were eager) and starts the next one while a slower
rank is still in the previous call's event loop or step loop must not have its
messages taken by that call. Sleeps of different length on different ranks,
and random sleeps inside the spot protocol on some ranks, put the ranks in
different calls at once. Every result must be exact and every emulated time
the model's.

Run by tests/test_mpi_suite.py at 2, 3, 4 and 8 ranks.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_sparse, model_time, p2p_time, run_p2p, sparse_config
from nicemu.collectives.schedules.sparse_patterns import block_mask
from nicemu.nic.profile import load_profile

COMM = MPI.COMM_WORLD
PROFILE = load_profile("omniccl-paper")
ROUNDS = 6
COUNT, BLOCK = 900, 8
P2P_BYTES = 3000
SPARSE = {"block_size": BLOCK, "spots": 1, "spot_blocks": 2, "tx_spots": 2}


def skew(rank: int, it: int, step: int) -> None:
    """A different sleep (0-15 ms) on every rank, changing from call to call."""
    time.sleep(0.005 * ((rank * 7 + it * 3 + step) % 4))


def sparse_inputs(rng: np.random.Generator, nodes: int) -> np.ndarray:
    x = rng.integers(-50, 50, size=(nodes, COUNT)).astype(np.int32)
    keep = rng.random((nodes, -(-COUNT // BLOCK))) < 0.3
    return x * np.repeat(keep, BLOCK, axis=1)[:, :COUNT].astype(np.int32)


def p2p_buffers(it: int, pairs: list[tuple[int, int]], here: range) -> tuple[dict, dict]:
    """(what every source sends, this rank's buffers: its sources' payloads, zeros at its destinations)."""
    sent = {a: np.random.default_rng([it, a]).integers(0, 256, P2P_BYTES, dtype=np.uint8) for a, _ in pairs}
    buffers = {a: sent[a].copy() for a, _ in pairs if a in here}
    buffers.update({b: np.zeros(P2P_BYTES, dtype=np.uint8) for _, b in pairs if b in here})
    return sent, buffers


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("per_rank", [1, 2])
@pytest.mark.parametrize("aggregators", [None, 1])
def test_dense_p2p_and_sparse_calls_share_one_communicator(per_rank, aggregators):
    """``per_rank`` 1: dense calls on the lean transport; 2: on the plain one. One aggregator: the
    other ranks leave the sparse call first and start the dense one while its rank still collects
    the last Tx credits. The calls follow each other with nothing in between but the sleeps;
    results are checked after each round."""
    size, rank = COMM.size, COMM.rank
    sparse = dict(SPARSE) if aggregators is None else dict(SPARSE, aggregators=aggregators)
    with Emulator(COMM, f"ring:{per_rank * size}", PROFILE) as emu:
        n = emu.topology.nodes
        here = emu.node_range
        mine = slice(here.start, here.stop)
        rng = np.random.default_rng(5)            # the same draws on every rank
        # the first half sends to the second (with two nodes per rank, two pairs share a pair of ranks)
        pairs = [(i, n - 1 - i) for i in range(n // 2)]
        cfg = sparse_config("omniccl", n, **sparse)
        want_dense = model_time("allreduce", "ring", emu.topology, PROFILE, 1500, "int32").emulated_us
        want_rs = model_time("reducescatter", "directreduce", emu.topology, PROFILE, 1500, "int32").emulated_us
        want_p2p = p2p_time(emu.topology, PROFILE, pairs, P2P_BYTES, "nic").emulated_us
        off, cnt = emu.segments(1500)
        for it in range(ROUNDS):
            x = sparse_inputs(rng, n)
            d = rng.integers(-10**6, 10**6, size=(n, 1500)).astype(np.int32)
            sparse_work, dense_work, rs_work = x[mine].copy(), d[mine].copy(), d[mine].copy()
            sent, buffers = p2p_buffers(it, pairs, here)

            skew(rank, it, 0)
            t_sparse = emu.run_inplace("allreduce", sparse_work, "sum", "omniccl", sparse,
                                       jitter_us=300.0 if (rank + it) % 2 else 0.0)
            t_dense = emu.run_inplace("allreduce", dense_work, "sum", "ring")
            transport = emu.executor.last_transport.name
            skew(rank, it, 1)
            t_p2p = run_p2p(emu.comm, emu.executor.node_rank, emu.topology, PROFILE, pairs, buffers, "nic")
            t_rs = emu.run_inplace("reducescatter", rs_work, "sum", "directreduce")

            want = x.sum(axis=0, dtype=np.int64).astype(np.int32)
            assert all(np.array_equal(row, want) for row in sparse_work), f"sparse call {it}"
            assert t_sparse.emulated_us == model_sparse(cfg, block_mask(x, BLOCK), PROFILE, 4).emulated_us
            ref = d.sum(axis=0, dtype=np.int64).astype(np.int32)
            assert all(np.array_equal(row, ref) for row in dense_work), f"dense call {it}"
            assert t_dense.emulated_us == want_dense
            assert transport == ("lean" if per_rank == 1 else "plain")
            for a, b in pairs:
                if b in here:
                    assert np.array_equal(buffers[b], sent[a]), f"p2p into node {b}, call {it}"
            assert t_p2p.emulated_us == want_p2p
            for row, node in zip(rs_work, here):
                assert np.array_equal(row[off[node]:off[node] + cnt[node]], ref[off[node]:off[node] + cnt[node]])
            assert t_rs.emulated_us == want_rs
        # nothing was left over for another call to take
        assert not emu.comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG)
