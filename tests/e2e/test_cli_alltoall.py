"""End to end: ``nicemu bench --collective alltoall`` under mpiexec and with the model executor.

Real data on 3 ranks (virtual nodes: 8 nodes on 3 ranks) must come back with
#wrong = 0 against the per-node reference, emulated times must equal the model
executor's, and algbw/busbw must follow nccl-tests' AllToAll convention.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e

ARGS = ["--collective", "alltoall", "--topology", "torus:2x4", "--sizes", "1K,64K", "--iters", "1",
        "--warmup", "0"]


def test_bench_alltoall_real_data_matches_model(bench_json):
    mpi = bench_json([*ARGS, "--algo", "ring,directreduce,mpi"], n=3)
    model = bench_json([*ARGS, "--algo", "ring,directreduce", "--executor", "model"])
    emulated = {(r["bytes"], r["algo"]): r["emulated_us"] for r in model}
    assert len(mpi) == 6 and len(model) == 4
    for r in mpi:
        assert r["collective"] == "alltoall" and r["nodes"] == 8 and r["ranks"] == 3
        assert r["wrong"] == 0, r
        if r["algo"] == "mpi":
            assert r["emulated_us"] is None
            continue
        assert r["emulated_us"] == emulated[(r["bytes"], r["algo"])]
        assert r["algbw_GBps"] == pytest.approx(r["bytes"] / (r["emulated_us"] * 1e3), rel=1e-12)
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * 7 / 8, rel=1e-12)
        # every dimension moves ((k-1)/2)·M per link: 8·(1/2 + 3/2)·M bytes in all
        assert r["wire_bytes"] == 16 * r["bytes"]
    big = {r["algo"]: r for r in mpi if r["bytes"] == 65536}
    assert big["directreduce"]["gain_vs_ring"] > 0
    assert big["ring"]["host_busy_us"] > 0 and big["directreduce"]["host_busy_us"] == 0
