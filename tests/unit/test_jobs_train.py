"""Train jobs of ``nicemu jobs`` (nicemu/jobs_train.py, workloads/jobs_fabric.py): alone, a train job is
``nicemu train``'s iteration on the same nodes, exactly; beside a job that shares its links it is slowed,
never sped up; jobs that share nothing keep their alone times exactly; the chained replay of a job alone
agrees with ``run_concurrent``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nicemu import jobs_train
from nicemu.collectives.model.chains import Chains
from nicemu.errors import CollectiveError, UsageError
from nicemu.nic.profile import load_profile
from nicemu.topologies import parse_topology
from nicemu.train import iteration
from nicemu.workloads.accelerators import load_accelerator
from nicemu.workloads.jobs import parse_jobs
from nicemu.workloads.jobs_fabric import JobWork, end_delays
from nicemu.workloads.models import load_model
from nicemu.workloads.training import plan
from tests.jobs_cases import coll_job, refused, run_jobs

TINY = {"hidden_size": 64, "num_hidden_layers": 8, "num_attention_heads": 4, "intermediate_size": 256,
        "vocab_size": 512, "model_type": "llama"}


@pytest.fixture
def tiny(tmp_path):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    return str(cfg)


def train_job(name, nodes, model, algo="ring", iterations=1, extra="", batch=8):
    return (f"  - name: {name}\n    nodes: {nodes}\n    workload: train\n    model: {model}\n    global_batch: {batch}\n"
            f"    seq_len: 32\n    bucket_mb: 0.25\n    algo: {algo}\n    iterations: {iterations}\n{extra}")


def train_iteration(model, topology, algo, profile="400g-gen5", batch=8):
    """``nicemu train``'s iteration (its own function) for the jobs' settings on ``topology``."""
    topo, prof = parse_topology(topology), load_profile(profile)
    tp = plan(load_model(model), load_accelerator("H100-SXM"), batch // topo.nodes, 32, 4, int(0.25 * 2**20))
    return iteration(algo, tp, topo, prof, 4)


@pytest.mark.parametrize("algo", ["ring", "directreduce", "host-best"])
def test_a_train_job_alone_is_nicemu_trains_iteration(tmp_path, tiny, algo):
    ref = train_iteration(tiny, "ring:8", algo)
    [r] = run_jobs(tmp_path, "topology: ring:8\nprofile: 400g-gen5\njobs:\n" + train_job("t", '"0-7"', tiny, algo, 3))
    assert r["iteration_alone_us"] == ref["iteration_us"] and r["compute_us"] == ref["compute_us"]
    assert r["exposed_alone_us"] == ref["exposed_us"] and r["model"] == load_model(tiny).name
    assert r["alone_us"] == r["emulated_us"] == 3 * ref["iteration_us"] and r["slowdown_vs_alone"] == 1.0


def test_a_train_job_on_a_block_is_nicemu_train_on_that_torus(tmp_path, tiny):
    # the block spans two whole dimensions of torus:4x4x4, so its routes are those of torus:4x4
    ref = train_iteration(tiny, "torus:4x4", "directreduce", batch=32)
    text = ("topology: torus:4x4x4\nprofile: 400g-gen5\njobs:\n"
            + train_job("t", '{block: "0-3,0-3,2-2"}', tiny, "directreduce", batch=32))
    [r] = run_jobs(tmp_path, text)
    assert r["topology"] == "torus:4x4" and r["iteration_alone_us"] == ref["iteration_us"]
    assert r["emulated_us"] == ref["iteration_us"]


@pytest.mark.parametrize("algo", ["ring", "directreduce"])
def test_the_chained_replay_of_a_train_job_alone_agrees_with_run_concurrent(tiny, algo):
    """The chains (used when jobs meet) time a train job alone as ``nicemu train`` does, to 1e-12."""
    fabric, prof = parse_topology("ring:8"), load_profile("400g-gen5")
    jf = parse_jobs("topology: ring:8\njobs:\n" + train_job("t", '"0-7"', tiny, algo, 2))
    t = jobs_train.build(jf.jobs[0], fabric, prof)
    chains = Chains(fabric, prof)
    w = t.work()
    free = max([w.compute_us, *(off + chains.collective(("x", id(s)), s, w.nodes, 4).span_us for s, off in w.calls)])
    delay = end_delays(chains, [w])[0]
    assert delay > 0                        # the buckets meet each other
    assert 2 * free + delay == pytest.approx(t.alone_us, rel=1e-12)


def test_a_train_job_beside_a_job_on_its_links_is_slowed_never_sped_up(tmp_path, tiny):
    # interleaved on ring:8: every hop of each job crosses a link the other's hops cross
    text = ("topology: ring:8\nprofile: 400g-gen5\njobs:\n" + train_job("t", '"0,2,4,6"', tiny, "ring", 3)
            + coll_job("c", '"1,3,5,7"', "ring", "1M", 4))
    t, c = run_jobs(tmp_path, text)
    assert t["slowdown_vs_alone"] > 1.0 and c["slowdown_vs_alone"] > 1.0
    assert t["emulated_us"] > t["alone_us"] and t["exposed_us"] > t["exposed_alone_us"]
    # a later start leaves the train job alone for longer: it is never faster than alone
    for start in (50.0, 200.0, 1e6):
        late = text.replace("    iterations: 4\n", f"    iterations: 4\n    start_us: {start}\n")
        t2, c2 = run_jobs(tmp_path, late)
        assert t2["emulated_us"] >= t2["alone_us"] and c2["emulated_us"] >= c2["alone_us"]
        if start == 1e6:
            assert t2["slowdown_vs_alone"] == 1.0 and c2["slowdown_vs_alone"] == 1.0


def test_jobs_that_share_nothing_keep_their_alone_times_exactly(tmp_path, tiny):
    text = ("topology: torus:4x4x4\nprofile: 400g-gen5\njobs:\n"
            + train_job("t", '{block: "0-1,0-3,0-3"}', tiny, "directreduce", 2, batch=32)
            + coll_job("c", '{block: "2-3,0-3,0-3"}', "directreduce", "16M", 3))
    t, c = run_jobs(tmp_path, text)
    assert t["slowdown_vs_alone"] == 1.0 and c["slowdown_vs_alone"] == 1.0
    assert t["emulated_us"] == t["alone_us"] == 2 * t["iteration_alone_us"]
    alone_c = run_jobs(tmp_path, "topology: torus:4x4x4\nprofile: 400g-gen5\njobs:\n"
                       + coll_job("c", '{block: "2-3,0-3,0-3"}', "directreduce", "16M", 3))[0]
    assert c["emulated_us"] == alone_c["emulated_us"] == alone_c["alone_us"]


def test_gaps_between_iterations_add_to_the_alone_time(tmp_path, tiny):
    [r] = run_jobs(tmp_path, "topology: ring:8\nprofile: 400g-gen5\njobs:\n"
                   + train_job("t", '"0-7"', tiny, "ring", 3, "    gap_us: 40\n"))
    assert r["alone_us"] == 3 * r["iteration_alone_us"] + 80.0 and r["iteration_us"] == r["iteration_alone_us"]


@pytest.mark.parametrize("change, words", [
    ("    workload: train\n", ["'t'", "'workload' 'training'", "collective, train, serve"]),
    ("    global_batch: 8\n", ["'t'", "global_batch 6", "multiple of 4"]),
    ("    seq_len: 32\n", ["'t'", "'seq_len'"]),
    ("    bucket_mb: 0.25\n", ["'t'", "'bucket_mb'"]),
    ("    algo: ring\n", ["'t'", "omniccl", "dense"]),
])
def test_a_bad_train_job_is_one_line(tmp_path, tiny, change, words):
    bad = {"    workload: train\n": "    workload: training\n", "    global_batch: 8\n": "    global_batch: 6\n",
           "    seq_len: 32\n": "    seq_len: 0\n", "    bucket_mb: 0.25\n": "    bucket_mb: big\n",
           "    algo: ring\n": "    algo: omniccl\n"}[change]
    text = "topology: ring:8\nprofile: 400g-gen5\njobs:\n" + train_job("t", '"0,2,4,6"', tiny).replace(change, bad)
    refused(tmp_path, text, words)


def test_collective_keys_in_a_train_job_are_refused(tmp_path, tiny):
    text = "topology: ring:8\njobs:\n" + train_job("t", '"0-3"', tiny, extra="    size: 1M\n")
    with pytest.raises(UsageError, match="unknown key 'size' for a train job"):
        parse_jobs(text)


def test_a_train_job_never_meets_itself_across_iterations(tiny):
    """Iteration i + 1 starts after iteration i's end: the job alone replays R iterations as R times one."""
    fabric, prof = parse_topology("ring:8"), load_profile("ideal")
    jf = parse_jobs("topology: ring:8\njobs:\n" + train_job("t", '"0-7"', tiny, "ring", 1))
    w = jobs_train.build(jf.jobs[0], fabric, prof).work()
    chains = Chains(fabric, prof)
    one = end_delays(chains, [w])[0]
    four = end_delays(chains, [JobWork(**{**w.__dict__, "iterations": 4})])[0]
    assert four == pytest.approx(4 * one, rel=1e-12, abs=1e-9) and np.isfinite(four)


def test_a_group_too_large_for_the_replay_is_one_line(tmp_path, tiny):
    """Jobs that meet are replayed with every call of every iteration as flows: past the replay's limit the
    run stops with one line before building them."""
    text = ("topology: ring:8\nprofile: 400g-gen5\njobs:\n" + train_job("t", '"0,2,4,6"', tiny, "ring", 100_000)
            + coll_job("c", '"1,3,5,7"'))
    with pytest.raises(CollectiveError) as err:
        run_jobs(tmp_path, text)
    msg = str(err.value)
    assert "\n" not in msg and "jobs t, c make" in msg and "fewer iterations" in msg, msg


def test_an_embedding_model_in_a_train_job_is_one_line(tmp_path):
    text = "topology: ring:8\nprofile: 400g-gen5\njobs:\n" + train_job("t", '"0-3"', "ncf")
    refused(tmp_path, text, ["'t'", "model ncf is an embedding model, which nicemu train runs"])
