"""``bench --concurrent K`` with sparse algorithms (nicemu/bench_concurrent.py, docs/model.md §21.6): each call
has its own block pattern (seed + j) and shares the fabric as flows. One call is the plain record; calls that
share no link keep their alone times exactly; calls on the same nodes are never faster than alone."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from nicemu import bench
from nicemu import bench_concurrent as bc
from nicemu.cli import main
from nicemu.collectives.model import sparse_flows
from nicemu.collectives.registry import names
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology

SPARSE = names(kind="sparse")
F32 = np.dtype("float32")


def _args(*extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(["--executor", "model", "--density", "0.3", "--block-size", "64", *extra])


def _alone(algo: str, topology: str, profile, nbytes: int, seed: int, *extra: str) -> dict:
    """The plain bench record of one call on ``topology`` with the pattern of ``seed``."""
    args = _args("--seed", str(seed), *extra)
    return bench.model_record(args, algo, parse_topology(topology), profile, F32, nbytes)


def test_every_sparse_algorithm_is_covered():
    assert {"omniccl", "omniccl-cpu", "omnireduce"} <= set(SPARSE)


@pytest.mark.parametrize("topology", ["ring:4", "switch:4", "torus:2x2"])
@pytest.mark.parametrize("algo", SPARSE)
def test_one_call_is_the_plain_record_exactly(algo, topology):
    prof = load_profile("400g-gen5")
    args = _args("--concurrent", "1", "--seed", "3")
    rec = bc.model_fields(args, algo, parse_topology(topology), prof, F32, 1 << 18)
    plain = _alone(algo, topology, prof, 1 << 18, 3)
    shared = [k for k in rec if k in plain]
    assert {"emulated_us", "host_busy_us", "nic_busy_us", "wire_bytes", "framed_bytes", "upstream_bytes",
            "downstream_bytes", "spots_spilled"} <= set(shared)
    assert {k: rec[k] for k in shared} == {k: plain[k] for k in shared}
    assert rec["alone_us"] == rec["emulated_us"] and rec["slowdown_vs_alone"] == 1.0
    assert rec["concurrent_us"] == [plain["emulated_us"]] and rec["nodes_per_call"] == 4


@pytest.mark.parametrize("topology,groups,k,per_call", [("torus:2x4", "disjoint", 2, "ring:4"),
                                                         ("torus:2x2x2", "disjoint", 4, "ring:2"),
                                                         ("switch:8", "disjoint", 2, "switch:4"),
                                                         ("switch:8", "interleaved", 4, "switch:2")])
@pytest.mark.parametrize("algo", ["omniccl", "omnireduce"])
def test_calls_that_share_no_link_keep_their_alone_times_exactly(algo, topology, groups, k, per_call):
    """Sub-tori of a torus, blocks or interleaved ports of a switch: call j's time is the plain record of a call
    on its nodes with the pattern of seed j (omnireduce's dedicated aggregators: beside its own nodes on a
    torus, ports of their own on a switch)."""
    prof = load_profile("omniccl-paper")
    args = _args("--concurrent", str(k), "--concurrent-groups", groups)
    rec = bc.model_fields(args, algo, parse_topology(topology), prof, F32, 1 << 18)
    alone = [_alone(algo, per_call, prof, 1 << 18, j) for j in range(k)]
    assert rec["concurrent_us"] == [a["emulated_us"] for a in alone]
    assert len(set(rec["concurrent_us"])) > 1            # each call its own pattern, so its own time
    assert rec["slowdown_vs_alone"] == 1.0 and rec["emulated_us"] == max(rec["concurrent_us"])
    assert rec["wire_bytes"] == sum(a["wire_bytes"] for a in alone)
    assert rec["upstream_bytes"] == sum(a["upstream_bytes"] for a in alone)
    slowest = alone[int(np.argmax(rec["concurrent_us"]))]
    assert (rec["host_busy_us"], rec["nic_busy_us"]) == (slowest["host_busy_us"], slowest["nic_busy_us"])


@pytest.mark.parametrize("profile", ["ideal", "omniccl-paper", "400g-gen5"])
@pytest.mark.parametrize("topology,k", [("ring:4", 2), ("switch:4", 3), ("torus:2x2", 2)])
@pytest.mark.parametrize("algo", SPARSE)
def test_calls_on_the_same_nodes_are_never_faster_and_some_are_slower(algo, topology, k, profile):
    prof = load_profile(profile)
    rec = bc.model_fields(_args("--concurrent", str(k)), algo, parse_topology(topology), prof, F32, 1 << 18)
    alone = [_alone(algo, topology, prof, 1 << 18, j)["emulated_us"] for j in range(k)]
    assert all(t >= a for t, a in zip(rec["concurrent_us"], alone, strict=True))
    assert max(t / a for t, a in zip(rec["concurrent_us"], alone)) > 1.01
    i = int(np.argmax(rec["concurrent_us"]))
    assert rec["alone_us"] == alone[i] and rec["slowdown_vs_alone"] == rec["emulated_us"] / alone[i] > 1.0


def test_interleaved_calls_on_a_ring_share_its_links():
    """On a ring every other node's messages cross the nodes between them: slower than alone."""
    prof = load_profile("omniccl-paper")
    rec = bc.model_fields(_args("--concurrent", "2", "--concurrent-groups", "interleaved"), "omniccl",
                          parse_topology("ring:8"), prof, F32, 1 << 20)
    alone = [_alone("omniccl", "ring:4", prof, 1 << 20, j)["emulated_us"] for j in range(2)]
    assert all(t > a for t, a in zip(rec["concurrent_us"], alone))


def _run(tmp_path, capsys, *argv: str) -> tuple[int, list[dict] | None, str]:
    out = tmp_path / "out.json"
    status = main(["bench", "--executor", "model", "--iters", "1", "--warmup", "0", *argv, "--json", str(out)])
    err = capsys.readouterr().err
    return status, (json.loads(out.read_text()) if status == 0 else None), err


def test_dense_and_sparse_in_one_list_each_keep_their_own_run(tmp_path, capsys):
    common = ["--topology", "ring:4", "--sizes", "64K,256K", "--density", "0.3", "--concurrent", "2"]
    status, mixed, _ = _run(tmp_path, capsys, *common, "--algo", "ring,omniccl,omnireduce")
    assert status == 0
    _, dense, _ = _run(tmp_path, capsys, *common, "--algo", "ring")
    _, sparse, _ = _run(tmp_path, capsys, *common, "--algo", "omnireduce")
    assert [r for r in mixed if r["algo"] == "ring"] == dense
    ours = [r for r in mixed if r["algo"] == "omnireduce"]
    assert [{k: v for k, v in r.items() if k != "gain_vs_ring"} for r in ours] == \
           [{k: v for k, v in r.items() if k != "gain_vs_ring"} for r in sparse]
    for r in mixed:
        assert r["concurrent"] == 2 and r["concurrent_groups"] == "same" and r["nodes_per_call"] == 4
        assert len(r["concurrent_us"]) == 2 and r["emulated_us"] == max(r["concurrent_us"])
        assert r["alone_us"] is not None and r["slowdown_vs_alone"] >= 1.0
        if r["algo"] != "ring":
            assert r["gain_vs_ring"] == 1.0 - r["emulated_us"] / next(
                d["emulated_us"] for d in mixed if d["algo"] == "ring" and d["bytes"] == r["bytes"])


def test_the_flow_limit_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sparse_flows, "MAX_FLOWS", 100)
    status, _, err = _run(tmp_path, capsys, "--topology", "ring:4", "--sizes", "1M", "--algo", "omniccl",
                          "--density", "0.3", "--concurrent", "2")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith("nicemu: error: --concurrent 2 --algo omniccl at 1M:")
    assert "over the 100 the fabric replay holds" in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("argv,words", [
    (["--topology", "ring:8", "--concurrent-groups", "interleaved", "--algo", "omnireduce", "--aggregators", "6"],
     ["omnireduce on 4 nodes per call", "aggregators 6"]),
    (["--algo", "omniccl", "--faults", "drop=0.01"], ["--concurrent does not cover", "--faults"]),
    (["--algo", "omniccl", "--link-summary"], ["--concurrent does not cover", "--link-summary"]),
])
def test_what_sparse_concurrent_calls_do_not_cover_is_refused_in_one_line(tmp_path, capsys, argv, words):
    status, _, err = _run(tmp_path, capsys, "--sizes", "64K", "--concurrent", "2", *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert status == 2 and len(lines) == 1 and lines[0].startswith("nicemu: error: "), err
    for w in words:
        assert w in lines[0], lines[0]
