"""``nicemu bench --faults/--straggler`` end to end: real data under mpiexec vs the model executor.

The records of both executors must agree exactly (mean emulated time, drop and
corruption counts, retransmitted bytes, the per-link breakdown), the data must
be exact (#wrong 0), and the slowdown against the fault-free run is reported.
"""

import pytest

pytestmark = pytest.mark.e2e

ARGS = ["--topology", "ring:4", "--sizes", "16K", "--iters", "2", "--warmup", "1",
        "--algo", "ring,directreduce,omniccl", "--set", "nic.packet_bytes=256",
        "--faults", "drop=0.01,corrupt=0.01,seed=5", "--straggler", "2:1.5"]
SAME = ("emulated_us", "drops", "corruptions", "retransmit_bytes", "fault_links", "clean_emulated_us",
        "slowdown_vs_clean", "host_busy_us", "nic_busy_us", "wire_bytes")


def test_faults_model_equals_mpi(bench_json):
    dense = list(ARGS)
    dense[dense.index("ring,directreduce,omniccl")] = "ring,directreduce"
    model = bench_json([*dense, "--executor", "model"])
    real = bench_json(dense, n=3)
    for m, r in zip(model, real, strict=True):
        assert r["wrong"] == 0
        for key in SAME:
            assert m[key] == r[key], (m["algo"], key)
        assert r["slowdown_vs_clean"] > 1.0
        assert r["drops"] + r["corruptions"] > 0
        assert sum(link["retransmit_bytes"] for link in r["fault_links"]) == r["retransmit_bytes"]
        assert r["faults"].startswith("drop=0.01,corrupt=0.01,seed=5")
        assert r["stragglers"] == "2:1.5"


def test_sparse_faults_model_equals_mpi(bench_json):
    args = [a for a in ARGS if a not in ("--straggler", "2:1.5")]
    args[args.index("ring,directreduce,omniccl")] = "omniccl"
    model = bench_json([*args, "--executor", "model"])
    real = bench_json(args, n=2)
    for m, r in zip(model, real, strict=True):
        assert r["wrong"] == 0
        for key in SAME:
            assert m[key] == r[key], key
