"""Serve jobs of ``nicemu jobs`` (nicemu/jobs_serve.py, workloads/jobs_fabric.py): alone, a serve job is
``nicemu serve --tp N`` on its topology, exactly; its passes alone on the chains keep their times; beside a
job that shares its links it is slowed, never sped up, in first order, and its batches re-form to a fixed
point; jobs that share nothing keep their alone metrics."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from nicemu import jobs_serve, serve
from nicemu.collectives.model.chains import Chains
from nicemu.errors import UsageError
from nicemu.nic.profile import load_profile
from nicemu.workloads.jobs import parse_jobs
from nicemu.workloads.jobs_fabric import end_delays
from tests.jobs_cases import Comm, coll_job, refused, run_jobs

SMALL = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
         "intermediate_size": 1024, "vocab_size": 4096, "model_type": "llama"}
METRICS = ("ttft_ms_mean", "ttft_ms_p99", "tpot_ms_mean", "tpot_ms_p99", "e2e_ms_mean")


@pytest.fixture
def small(tmp_path):
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps(SMALL))
    return str(cfg)


def serve_job(name, nodes, model, algo="ring", extra=""):
    return (f"  - name: {name}\n    nodes: {nodes}\n    workload: serve\n    model: {model}\n    requests: 6\n"
            f"    rate: 2000\n    algo: {algo}\n{extra}")


@pytest.mark.parametrize("algo", ["ring", "directreduce", "omniccl"])
def test_a_serve_job_alone_is_nicemu_serve(tmp_path, small, algo):
    [r] = run_jobs(tmp_path, "topology: ring:8\nprofile: 400g-gen5\njobs:\n" + serve_job("s", '"0-3"', small, algo))
    p = argparse.ArgumentParser()
    serve.add_arguments(p)
    out = tmp_path / "serve.json"
    args = p.parse_args(["--executor", "model", "--model", small, "--tp", "4", "--topology", "ring:4", "--requests",
                         "6", "--rate", "2000", "--algo", algo, "--profile", "400g-gen5", "--jobs", "1", "--json",
                         str(out)])
    assert serve.run(args, Comm()) == 0
    ref = json.loads(out.read_text())[0]
    for k in METRICS:
        assert r[k + "_alone"] == ref[k] and r[k] == ref[k], k
    assert r["alone_us"] == r["emulated_us"] == ref["duration_s"] * 1e6 and r["slowed_passes"] == 0


@pytest.mark.parametrize("algo", ["ring", "omniccl"])
def test_a_serve_jobs_passes_alone_on_the_chains_keep_their_times(small, algo):
    jf = parse_jobs("topology: ring:8\njobs:\n" + serve_job("s", '"0,2,4,6"', small, algo))
    prof = load_profile("400g-gen5")
    chains = Chains(jf.topology, prof)
    sv = jobs_serve.build(jf.jobs[0], "400g-gen5", [], chains)
    [(start, end)] = end_delays(chains, [sv.work])
    assert len(end) == len(sv.result.iterations) > 10
    if algo == "ring":
        assert start.tolist() == [0.0] * len(start) and end.tolist() == [0.0] * len(end)
    else:   # a sparse call's messages placed late in the run replay with rounding of 1e-13 us
        assert np.abs(start).max() < 1e-9 and np.abs(end).max() < 1e-9


def test_a_serve_job_beside_a_job_on_its_links_is_slowed_never_sped_up(tmp_path, small):
    text = ("topology: ring:8\nprofile: 400g-gen5\njobs:\n" + serve_job("s", '"0,2,4,6"', small)
            + coll_job("c", '"1,3,5,7"', "ring", "4M", 20))
    # in first order (the idle fabric's batches, moved) sharing only delays; re-formed batches may differ
    s, c = run_jobs(tmp_path, text, "--fabric-rounds", "0")
    assert s["slowed_passes"] > 0 and c["slowdown_vs_alone"] > 1.0
    for k in METRICS:
        assert s[k] >= s[k + "_alone"], k
    assert s["ttft_ms_mean"] > s["ttft_ms_mean_alone"] and s["emulated_us"] >= s["alone_us"]


def test_a_serve_job_that_shares_nothing_keeps_its_alone_metrics(tmp_path, small):
    text = ("topology: torus:2x4\nprofile: 400g-gen5\njobs:\n" + serve_job("s", '{block: "0-0,0-3"}', small)
            + coll_job("c", '{block: "1-1,0-3"}', "ring", "4M", 20))
    s, c = run_jobs(tmp_path, text)
    assert c["slowdown_vs_alone"] == 1.0 and s["slowed_passes"] == 0
    for k in METRICS:
        assert s[k] == s[k + "_alone"], k
    assert s["fabric_reform_rounds"] == 0 and s["fabric_reform_residual_us"] == 0.0 and s["fabric_reform_converged"]


@pytest.mark.parametrize("change, words", [
    ("    requests: 6\n", ["'s'", "'requests'", "int"]),
    ("    rate: 2000\n", ["'s'", "arrival rate", "-1"]),
    ("    algo: ring\n", ["'s'", "unknown key 'iterations' for a serve job"]),
])
def test_a_bad_serve_job_is_one_line(tmp_path, small, change, words):
    bad = {"    requests: 6\n": "    requests: many\n", "    rate: 2000\n": "    rate: -1\n",
           "    algo: ring\n": "    algo: ring\n    iterations: 2\n"}[change]
    text = "topology: ring:8\nprofile: 400g-gen5\njobs:\n" + serve_job("s", '"0-3"', small).replace(change, bad)
    refused(tmp_path, text, words)


@pytest.mark.parametrize("algo", ["ring", "omniccl"])
def test_the_overlap_search_agrees_with_replaying_every_serve_call(small, algo):
    """Only the serve calls that meet another job become flows; replaying all of them gives the same delays
    (omniccl: its sparse embedding AllReduce's messages among them)."""
    from nicemu import jobs as jobs_cli
    from nicemu.workloads.jobs_fabric import JobWork, sharing_delays
    text = ("topology: ring:8\njobs:\n" + serve_job("s", '"0,2,4,6"', small, algo)
            + coll_job("c", '"1,3,5,7"', "ring", "4M", 3))
    jf = parse_jobs(text)
    prof = load_profile("400g-gen5")
    chains = Chains(jf.topology, prof)
    sv = jobs_serve.build(jf.jobs[0], "400g-gen5", [], chains)
    c = jf.jobs[1]
    call = jobs_cli._calls([c], prof)[0][0]
    w = JobWork("c", c.nodes, call.itemsize, ((call.schedule, 0.0),), 0.0, 0.0, 3, 0.0, True)
    searched = sharing_delays(chains, [sv.work, w])
    every = end_delays(chains, [sv.work, w])
    calls = sum(len(p.calls) for p in sv.work.passes)
    assert np.count_nonzero(searched[0][1]) > 0
    assert searched[0][0] == pytest.approx(every[0][0], abs=1e-9) and searched[0][1] == pytest.approx(every[0][1],
                                                                                                      abs=1e-9)
    assert searched[1] + end_delays(chains, [w])[0] == pytest.approx(every[1], abs=1e-9) and calls > 100


def test_a_serve_job_that_starts_after_the_other_job_has_ended_is_not_slowed(tmp_path, small):
    base = ("topology: ring:8\nprofile: 400g-gen5\njobs:\n" + serve_job("s", '"0,2,4,6"', small, extra="{start}")
            + coll_job("c", '"1,3,5,7"', "ring", "4M", 3))
    s0, c0 = run_jobs(tmp_path, base.format(start=""))
    late, c1 = run_jobs(tmp_path, base.format(start="    start_us: 1000000\n"))
    assert s0["slowed_passes"] > 0 and late["slowed_passes"] == 0 and c1["slowdown_vs_alone"] == 1.0
    for k in METRICS:
        assert late[k] == late[k + "_alone"] == s0[k + "_alone"], k


def test_a_serve_jobs_sparse_embedding_calls_share_the_fabric(tmp_path, small):
    # with omniccl the embedding AllReduce is the spot protocol: its messages are flows of the replay and load
    # the links, so an AllReduce job beside it is slowed more than beside the same job's dense calls alone
    from nicemu.collectives.model.sparse_flows import SparseFlows
    jf = parse_jobs("topology: ring:8\njobs:\n" + serve_job("s", '"0,2,4,6"', small, "omniccl"))
    sv = jobs_serve.build(jf.jobs[0], "400g-gen5", [], Chains(jf.topology, load_profile("400g-gen5")))
    sparse = [c for p in sv.work.passes for c in p.calls if isinstance(c[0], SparseFlows)]
    assert len(sparse) == len(sv.work.passes)          # one embedding AllReduce per pass
    text = ("topology: ring:8\nprofile: 400g-gen5\njobs:\n" + serve_job("s", '"0,2,4,6"', small, "omniccl")
            + coll_job("c", '"1,3,5,7"', "ring", "4M", 20))
    s, c = run_jobs(tmp_path, text, "--fabric-rounds", "0")
    assert s["slowed_passes"] > 0 and c["slowdown_vs_alone"] > 1.0
    for k in METRICS:
        assert s[k] >= s[k + "_alone"], k


@pytest.mark.parametrize("algo", ["ring", "omniccl"])
def test_a_serve_jobs_batches_reform_under_sharing_to_a_fixed_point(tmp_path, small, algo):
    # beside an AllReduce job on its links a serve job's passes run late; its batches re-form on the slower
    # timeline (docs/model.md §21.7, step 6) until the replay moves no pass by more than 1e-3 us
    text = ("topology: ring:8\nprofile: 400g-gen5\njobs:\n" + serve_job("s", '"0,2,4,6"', small, algo)
            + coll_job("c", '"1,3,5,7"', "ring", "4M", 20))
    s0, _ = run_jobs(tmp_path, text, "--fabric-rounds", "0")
    s, c = run_jobs(tmp_path, text)
    assert s0["fabric_reform_rounds"] == 0 and not s0["fabric_reform_converged"]
    # round 0's residual: what sharing moved the idle fabric's passes by, at least the largest pass delay
    assert s0["fabric_reform_residual_us"] > 0
    assert 1 <= s["fabric_reform_rounds"] <= 4 and s["fabric_reform_converged"]
    assert s["fabric_reform_residual_us"] <= 1e-3
    for k in ("ttft_ms_mean", "tpot_ms_mean", "e2e_ms_mean"):
        assert s[f"{k}_first_order"] == s0[k] == s0[f"{k}_first_order"], k
        assert s[f"{k}_alone"] == s0[f"{k}_alone"], k
    # the batches changed: the passes differ in number or in what they hold, so the run's times do
    assert (s["iterations"], s["ttft_ms_mean"]) != (s0["iterations"], s0["ttft_ms_mean"])
    assert s["alone_us"] == s0["alone_us"] and c["slowdown_vs_alone"] > 1.0


def test_fabric_rounds_out_of_range_is_one_line(tmp_path, small):
    text = "topology: ring:8\nprofile: 400g-gen5\njobs:\n" + serve_job("s", '"0-3"', small)
    with pytest.raises(UsageError) as err:
        run_jobs(tmp_path, text, "--fabric-rounds", "-1")
    assert "--fabric-rounds -1 is outside 0..100" in str(err.value) and "\n" not in str(err.value)
