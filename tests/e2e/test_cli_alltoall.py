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


#: ``--ranks-per-node 1`` on torus:2x4, 1 KiB and 64 KiB, measured on the commit before the hierarchical
#: all-to-all (main at 8b4bfab) with the model executor: (bytes, algo) -> emulated_us. directreduce-paper had
#: no packet framing then, so the comparison runs with ``link.header_bytes=0`` (docs/model.md §7).
BEFORE_P1 = {(1024, "ring"): 7.33768, (1024, "directreduce"): 7.69706, (65536, "ring"): 17.833440000000003,
             (65536, "directreduce"): 15.09388}


@pytest.mark.parametrize("per_node", [1, 2])
def test_bench_alltoall_ranks_per_node_real_data_matches_model(bench_json, per_node):
    """``--ranks-per-node P``: the rails, then the ranks of a node (docs/model.md §13.6); P = 1 as before."""
    topology, sizes = ("ring:3", "1536,96K") if per_node == 2 else ("torus:2x4", "1K,64K")
    args = [*ARGS[:3], topology, "--sizes", sizes, "--iters", "1", "--warmup", "0", "--ranks-per-node", str(per_node),
            "--set", "link.header_bytes=0"]
    mpi = bench_json([*args, "--algo", "ring,directreduce,mpi"], n=3)
    model = bench_json([*args, "--algo", "ring,directreduce", "--executor", "model"])
    emulated = {(r["bytes"], r["algo"]): r for r in model}
    ranks = 6 if per_node == 2 else 8
    for r in mpi:
        assert (r["ranks_per_node"], r["nodes"] * per_node, r["wrong"]) == (per_node, ranks, 0), r
        if r["algo"] == "mpi":
            continue
        m = emulated[(r["bytes"], r["algo"])]
        assert (r["emulated_us"], r["wire_bytes"], r["host_busy_us"]) == \
            (m["emulated_us"], m["wire_bytes"], m["host_busy_us"])
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * (ranks - 1) / ranks, rel=1e-12)
        if per_node == 1:
            assert r["emulated_us"] == BEFORE_P1[(r["bytes"], r["algo"])]
        else:     # each rank's rail moves its whole row as the node all-to-all of ring:3 does: ((3-1)/2)·M per link
            assert r["wire_bytes"] == ranks * r["bytes"]
