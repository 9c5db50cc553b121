"""``nicemu jobs`` end to end: the same report from both executors, every job's data checked under mpiexec,
and the classic placement question answered the way the fabric model says it must be."""

import json

import pytest
from conftest import run_nicemu

pytestmark = pytest.mark.e2e

JOBS = """
topology: ring:4
profile: 400g-gen5
jobs:
  - name: even
    nodes: "0,2"
    algo: directreduce
    size: 256K
    dtype: int32
    iterations: 2
  - name: odd
    nodes: [1, 3]
    collective: allgather
    algo: host-best
    size: 256K
    iterations: 3
    start_us: 5
    gap_us: 2.5
"""


def _jobs(tmp_path, text, n=None, extra=()):
    (tmp_path / "jobs.yml").write_text(text)
    executor = ["--executor", "mpi"] if n else []
    run = run_nicemu(["jobs", "jobs.yml", "--json", "out.json", *executor, *extra], tmp_path, n)
    assert run.returncode == 0, str(run)
    return json.loads((tmp_path / "out.json").read_text()), run


def test_both_executors_report_the_same_jobs(tmp_path):
    model, _ = _jobs(tmp_path, JOBS)
    real, run = _jobs(tmp_path, JOBS, n=4)
    assert "out of bounds values : 0 OK" in run.stdout
    for m, r in zip(model["jobs"], real["jobs"], strict=True):
        assert r["wrong"] == 0 and m["wrong"] is None
        for key in ("alone_us", "emulated_us", "slowdown_vs_alone", "iteration_us", "busbw_GBps", "wire_bytes",
                    "best_host_algo"):
            assert m[key] == r[key], key
    assert model["hot_links"] == real["hot_links"] and model["hot_links"]
    # interleaved on a ring: every hop of one job crosses a link of the other's
    assert all(j["slowdown_vs_alone"] > 1.0 for j in model["jobs"])


def test_contiguous_jobs_on_a_torus_do_not_meet_and_interleaved_ones_do(tmp_path):
    half = "\n".join(f"  - name: {n}\n    nodes: {{block: \"{b},0-3,0-3\"}}\n    algo: directreduce\n    size: 16M"
                     for n, b in (("a", "0-1"), ("b", "2-3")))
    contiguous, _ = _jobs(tmp_path, f"topology: torus:4x4x4\nprofile: 400g-gen5\njobs:\n{half}\n")
    assert [j["slowdown_vs_alone"] for j in contiguous["jobs"]] == [1.0, 1.0]
    even = ",".join(str(v) for v in range(0, 64, 2))
    odd = ",".join(str(v) for v in range(1, 64, 2))
    mixed = (f"topology: torus:4x4x4\nprofile: 400g-gen5\njobs:\n"
             f"  - name: a\n    nodes: \"{even}\"\n    topology: torus:4x4x2\n    algo: directreduce\n    size: 16M\n"
             f"  - name: b\n    nodes: \"{odd}\"\n    topology: torus:4x4x2\n    algo: directreduce\n    size: 16M\n")
    interleaved, _ = _jobs(tmp_path, mixed)
    assert all(j["slowdown_vs_alone"] > 1.0 for j in interleaved["jobs"])


def test_a_bad_job_is_one_line_on_every_rank(tmp_path):
    (tmp_path / "jobs.yml").write_text(JOBS.replace("algo: directreduce", "algo: omniccl"))
    run = run_nicemu(["jobs", "jobs.yml", "--executor", "mpi"], tmp_path, 2)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith("nicemu: error:")]
    assert len(lines) == 1 and "job 'even'" in lines[0] and "omniccl" in lines[0], str(run)


def test_a_job_alone_counts_its_own_messages_meeting_on_links(tmp_path):
    # 32 nodes drawn at random on torus:4x4x4, run as a ring in node order: several of its hops take the same
    # physical link at once. Its time alone counts that (its own topology gives each hop a link of its own),
    # so no link carries more than its capacity over the run
    from nicemu.collectives.api.model import call_schedule
    from nicemu.collectives.model.executor import run_model
    from nicemu.nic.profile import load_profile
    from nicemu.topologies import parse_topology
    text = ("topology: torus:4x4x4\nprofile: 400g-gen5\njobs:\n  - name: a\n    nodes: {random: 32, seed: 1}\n"
            "    algo: directreduce\n    size: 16M\n")
    out, run = _jobs(tmp_path, text)
    prof = load_profile("400g-gen5")
    sched, _ = call_schedule("allreduce", "directreduce", parse_topology("ring:32"), prof, (16 << 20) // 4, 4)
    step_model = run_model(sched, prof, 4).emulated_us
    job = out["jobs"][0]
    assert job["alone_us"] > 1.05 * step_model and job["emulated_us"] == job["alone_us"]
    assert all(h["utilization"] <= 1.0 + 1e-9 for h in out["hot_links"]) and "over 100%" not in run.stdout
    contiguous = text.replace("{random: 32, seed: 1}", '"0-31"')
    out, run = _jobs(tmp_path, contiguous)
    assert all(h["utilization"] <= 1.0 for h in out["hot_links"]) and "over 100%" not in run.stdout


TINY = ('{"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 256, '
        '"vocab_size": 512, "model_type": "llama"}')
TRAIN = """
topology: ring:4
profile: 400g-gen5
jobs:
  - name: t
    nodes: "0,2"
    workload: train
    model: tiny.json
    global_batch: 4
    seq_len: 16
    bucket_mb: 0.0625
    algo: directreduce
    iterations: 2
  - name: c
    nodes: [1, 3]
    algo: ring
    size: 256K
    iterations: 3
"""


def test_a_train_job_beside_a_collective_job_reports_the_same_from_both_executors(tmp_path):
    (tmp_path / "tiny.json").write_text(TINY)
    model, _ = _jobs(tmp_path, TRAIN)
    real, run = _jobs(tmp_path, TRAIN, n=4)
    assert "out of bounds values : 0 OK" in run.stdout and "exposed shared" in run.stdout
    for m, r in zip(model["jobs"], real["jobs"], strict=True):
        assert r["wrong"] == 0 and m["wrong"] is None
        assert {k: v for k, v in m.items() if k not in ("wrong", "executor")} == \
            {k: v for k, v in r.items() if k not in ("wrong", "executor")}
    t, c = model["jobs"]
    assert t["workload"] == "train" and t["buckets"] > 1 and t["slowdown_vs_alone"] > 1.0
    assert c["slowdown_vs_alone"] > 1.0 and model["hot_links"] == real["hot_links"]


SERVE = """
topology: ring:4
profile: 400g-gen5
jobs:
  - name: s
    nodes: [0, 2]
    workload: serve
    model: tiny.json
    requests: 3
    rate: 2000
    algo: ALGO
  - name: c
    nodes: [1, 3]
    algo: ring
    size: 256K
    iterations: 3
"""


@pytest.mark.parametrize("algo", ["directreduce", "omniccl"])
def test_a_serve_job_beside_a_collective_job_reports_the_same_from_both_executors(tmp_path, algo):
    # under mpi the serve job's two ranks serve its requests with real data (omniccl: the sparse embedding
    # AllReduce too); its metrics must be the model's, which the run checks itself
    (tmp_path / "tiny.json").write_text(TINY)
    text = SERVE.replace("ALGO", algo)
    model, _ = _jobs(tmp_path, text)
    real, run = _jobs(tmp_path, text, n=4)
    assert "out of bounds values : 0 OK" in run.stdout
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("# real data, serve job 's'"))
    checked = int(line.split("), ")[1].split(" elements")[0].replace(",", ""))
    assert checked > 0
    for m, r in zip(model["jobs"], real["jobs"], strict=True):
        assert r["wrong"] == 0 and m["wrong"] is None
        assert {k: v for k, v in m.items() if k not in ("wrong", "executor")} == \
            {k: v for k, v in r.items() if k not in ("wrong", "executor")}
    s, c = model["jobs"]
    assert s["workload"] == "serve" and s["requests"] == 3 and s["ttft_ms_mean"] >= s["ttft_ms_mean_alone"]
    assert c["slowdown_vs_alone"] > 1.0 and model["hot_links"] == real["hot_links"]
