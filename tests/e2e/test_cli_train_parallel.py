"""``nicemu train --tp --pp`` end to end: every TP AllReduce, pipeline transfer and DP bucket really moved
under mpiexec, the same records as the model executor; bad splits refused in one line on every rank."""

import json

import pytest
from conftest import TINY_LLAMA, model_and_mpi, run_nicemu

pytestmark = pytest.mark.e2e

ARGS = ["train", "--model", "config.json", "--topology", "ring:8", "--tp", "2", "--pp", "2", "--global-batch", "8",
        "--seq-len", "512", "--bucket-mb", "0.25", "--algo", "ring,host-best,directreduce"]


def test_tp_pp_dp_real_data_agrees_with_the_model(tmp_path):
    """TP 2 x DP 2 x PP 2 on ring:8 hosted by 4 ranks (two nodes each)."""
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    m, r, _ = model_and_mpi(ARGS, tmp_path, 4)
    assert [a["algo"] for a in m] == ["ring", "host-best", "directreduce"]
    for a, b in zip(m, r, strict=True):
        assert b["wrong"] == 0 and a["wrong"] is None
        assert {k: v for k, v in a.items() if k not in ("executor", "wrong")} == \
               {k: v for k, v in b.items() if k not in ("executor", "wrong")}
        assert (a["tp"], a["dp"], a["pp"], a["micro_batches"]) == (2, 2, 2, 4)
        assert a["buckets"] > 3 and a["tp_exposed_us"] > 0 and a["pp_exposed_us"] > 0 and a["bubble_us"] > 0
        parts = (a["compute_us"] + a["bubble_us"] + a["tp_exposed_us"] + a["pp_exposed_us"] + a["fabric_exposed_us"]
                 + a["dp_exposed_us"])
        assert parts == pytest.approx(a["iteration_us"], rel=1e-12)
        # the shared fabric (TP, pipeline and DP traffic on one replay) against the alone accounting
        assert a["fabric_calls"] > a["fabric_replayed_calls"] > 0 and a["fabric_flows"] > 0
        assert a["pipeline_us"] == pytest.approx(a["pipeline_alone_us"] + a["fabric_exposed_us"], rel=1e-12)
        assert a["pipeline_us"] >= a["pipeline_alone_us"]
        assert a["iteration_us"] > a["iteration_alone_us"] and a["fabric_exposed_us"] > 0
        assert a["iteration_alone_us"] - a["pipeline_alone_us"] == a["dp_exposed_alone_us"]


@pytest.mark.parametrize("extra, words", [
    (["--pp", "8", "--tp", "1"], ["4 layers", "--pp"]),
    (["--tp", "8", "--pp", "1"], ["heads", "TP=8"]),
])
def test_bad_splits_fail_once_on_every_rank(tmp_path, extra, words):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    run = run_nicemu([*ARGS, *extra, "--executor", "mpi"], tmp_path, 2)
    assert run.returncode == 2, str(run)
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nicemu: error:"), str(run)
    assert all(w in lines[0] for w in words) and "Traceback" not in run.stderr, str(run)
