"""``nicemu bench --concurrent K`` end to end: every call's real data under mpiexec, the times from the one
fabric model (docs/model.md §21.6), identical in both executors."""

import pytest

pytestmark = pytest.mark.e2e

SAME = ("emulated_us", "alone_us", "slowdown_vs_alone", "concurrent_us", "wire_bytes", "host_busy_us",
        "nic_busy_us", "best_host_algo", "busbw_GBps", "nodes_per_call", "concurrent", "concurrent_groups")


@pytest.mark.parametrize("topology,groups,per_call", [("ring:4", "same", 4), ("ring:4", "interleaved", 2),
                                                      ("torus:2x2", "disjoint", 2)])
def test_concurrent_calls_move_real_data_and_agree_with_the_model(bench_json, topology, groups, per_call):
    args = ["--topology", topology, "--concurrent", "2", "--concurrent-groups", groups, "--sizes", "64K,1M",
            "--algo", "ring,directreduce,host-best", "--iters", "1", "--warmup", "0", "--dtype", "int32"]
    model = bench_json([*args, "--executor", "model"])
    real = bench_json(args, n=4)
    for m, r in zip(model, real, strict=True):
        assert r["wrong"] == 0 and r["wall_us"] > 0
        for key in SAME:
            assert m[key] == r[key], (m["algo"], key)
        assert r["nodes_per_call"] == per_call and len(r["concurrent_us"]) == 2
        assert r["emulated_us"] == max(r["concurrent_us"])
        if groups == "disjoint":          # the two rows share no link: exactly their alone times
            assert r["slowdown_vs_alone"] == 1.0
        else:                             # both calls cross every link: slower, never more than twice
            assert 1.0 < r["slowdown_vs_alone"] <= 2.0


def test_one_call_keeps_the_plain_record(bench_json):
    args = ["--topology", "ring:4", "--sizes", "64K", "--algo", "ring,directreduce", "--executor", "model"]
    plain = bench_json(args)
    one = bench_json([*args, "--concurrent", "1"])
    assert plain == one
    assert all(r["slowdown_vs_alone"] is None for r in one)


@pytest.mark.parametrize("topology,groups", [("ring:4", "same"), ("ring:4", "interleaved"), ("torus:2x2", "disjoint")])
def test_sparse_concurrent_calls_move_real_data_and_their_records_match_the_model(bench_json, topology, groups):
    """Each sparse call reduces its own pattern (seed + j) with real data, checked; its MPI time alone equals the
    model's (else the run stops), and the records, keys and values, are the model executor's."""
    args = ["--topology", topology, "--concurrent", "2", "--concurrent-groups", groups, "--sizes", "64K,1M",
            "--algo", "omniccl,omnireduce,ring", "--density", "0.3", "--iters", "1", "--warmup", "0",
            "--dtype", "int32"]
    model = bench_json([*args, "--executor", "model"])
    real = bench_json(args, n=4)
    own = {"ranks", "executor", "wall_us", "wrong"}
    for m, r in zip(model, real, strict=True):
        assert r["wrong"] == 0 and r["wall_us"] > 0 and m["wrong"] is None
        assert m.keys() == r.keys()
        assert {k: v for k, v in m.items() if k not in own} == {k: v for k, v in r.items() if k not in own}
        assert len(r["concurrent_us"]) == 2 and r["emulated_us"] == max(r["concurrent_us"])
        if r["algo"] != "ring":
            assert r["upstream_bytes"] + r["downstream_bytes"] <= r["wire_bytes"]
        if groups == "disjoint":
            assert r["slowdown_vs_alone"] == 1.0
        else:
            assert r["slowdown_vs_alone"] > 1.0
