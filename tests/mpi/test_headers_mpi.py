"""Packet headers on real MPI ranks: emulated times and framed bytes equal the model's."""

import numpy as np
import pytest
from mpi4py import MPI

from nicemu.collectives import Emulator, model_sparse, model_time, sparse_config
from nicemu.collectives.registry import names
from nicemu.nic.profile import load_profile

COMM = MPI.COMM_WORLD
PROFILE = load_profile("directreduce-paper", ["link.header_bytes=82"])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", ["ring", "directreduce", "ring-pipelined", "directreduce-pipelined", "rabenseifner"])
@pytest.mark.parametrize("count", [7, 5000])
def test_dense_with_headers(algo, count):
    p = max(4, COMM.size)
    with Emulator(COMM, f"ring:{p}", PROFILE) as emu:
        x = np.arange(p * count, dtype=np.int64).reshape(p, count) % 997
        lo, hi = emu.node_range.start, emu.node_range.stop
        res = emu.allreduce(x[lo:hi], algo=algo)
        for row in np.atleast_2d(res.data):
            np.testing.assert_array_equal(row, x.sum(axis=0))
        model = model_time("allreduce", algo, emu.topology, PROFILE, count, "int64")
        assert res.emulated_us == model.emulated_us
        assert res.framed_bytes == model.framed_bytes > res.wire_bytes


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algo", names(kind="sparse"))
def test_sparse_with_headers(algo):
    p, count = max(4, COMM.size), 4096
    with Emulator(COMM, f"ring:{p}", PROFILE) as emu:
        x = np.zeros((p, count), dtype=np.float32)
        x[:, :1024] = 1.0
        lo, hi = emu.node_range.start, emu.node_range.stop
        res = emu.allreduce(x[lo:hi], algo=algo)
        for row in np.atleast_2d(res.data):
            np.testing.assert_array_equal(row, x.sum(axis=0))
        cfg = sparse_config(algo, p)
        masks = (x.reshape(p, -1, cfg.block_size) != 0).any(axis=2)
        model = model_sparse(cfg, masks, PROFILE, 4)
        assert res.emulated_us == model.emulated_us
        assert res.framed_bytes == model.framed_bytes > res.wire_bytes == model.wire_bytes
