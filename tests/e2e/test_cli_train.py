"""``nicemu train`` end to end: every gradient bucket really reduced under mpiexec, the same iteration times
as the model executor."""

import json
from pathlib import Path

import pytest
from conftest import TINY_LLAMA, model_and_mpi, run_nicemu

pytestmark = pytest.mark.e2e

KEYS = ("iteration_us", "compute_us", "exposed_us", "iteration_no_sharing_us", "iteration_one_stream_us",
        "buckets", "chosen", "grad_bytes", "speedup_vs_ring", "slowest_bucket_slowdown")


def test_train_real_data_agrees_with_the_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    args = ["train", "--model", "config.json", "--topology", "ring:4", "--global-batch", "4", "--seq-len", "32",
            "--bucket-mb", "0.25", "--algo", "ring,host-best,directreduce"]
    m, r, _ = model_and_mpi(args, tmp_path, 4)
    for a, b in zip(m, r, strict=True):
        assert b["wrong"] == 0 and a["wrong"] is None
        for key in KEYS:
            assert a[key] == b[key], key
        assert a["buckets"] > 3 and a["iteration_us"] >= a["compute_us"]


SPARSE_KEYS = KEYS + ("embedding_us", "embedding_alone_us", "embedding_slowdown_vs_alone", "embedding_slowed_flows",
                      "embedding_flows", "iteration_embedding_alone_us", "embedding_density", "embedding_contends",
                      "embedding_union_density", "embedding_row_density", "embedding_wire_bytes", "embedding_bytes",
                      "embedding_start_us")


@pytest.mark.parametrize("algo,ranks", [("omnireduce", 4), ("omniccl", 2)])
def test_sparse_embedding_real_data_agrees_with_the_model(tmp_path, algo, ranks):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    args = ["train", "--model", "config.json", "--topology", f"ring:{ranks}", "--global-batch", "4", "--seq-len", "32",
            "--bucket-mb", "0.25", "--algo", "ring,directreduce", "--sparse-embedding", algo]
    m, r, model = model_and_mpi(args, tmp_path, ranks)
    assert f"reduced with {algo} when backward ends" in model.stdout
    assert "# embedding with ring: " in model.stdout
    for a, b in zip(m, r, strict=True):
        assert b["wrong"] == 0 and b["embedding_wrong"] == 0 and a["embedding_wrong"] is None
        for key in SPARSE_KEYS:
            assert a[key] == b[key], key
        assert a["sparse_embedding"] == algo and a["embedding_bytes"] == 1024 * 128 * 4
        assert 0 < a["embedding_density"] < 1
        # the last buckets are still in flight when backward ends: the call shares their fabric
        assert a["embedding_contends"] is True and a["embedding_us"] >= a["embedding_alone_us"]
        assert a["iteration_us"] >= a["compute_us"] + a["embedding_us"]
        assert a["iteration_us"] >= a["iteration_no_sharing_us"] >= a["compute_us"] + a["embedding_alone_us"]


@pytest.mark.parametrize("extra,message", [
    (["--sparse-embedding", "omnifoo"], "--sparse-embedding omnifoo: not an algorithm; use a sparse one"),
    (["--sparse-embedding", "ring"], "--sparse-embedding ring: a dense algorithm; use a sparse one"),
    (["--sparse-embedding", "omniccl", "--model", "opt-13b"], "ties its embedding to the LM head"),
    (["--sparse-embedding", "omniccl", "--tp", "2"], "--sparse-embedding runs with data parallelism only"),
])
def test_sparse_embedding_bad_input(tmp_path, extra, message):
    out = run_nicemu(["train", "--topology", "ring:4", "--global-batch", "4", *extra], tmp_path)
    assert out.returncode == 2, str(out)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nicemu: error: ") and message in lines[0], out.stderr


@pytest.mark.parametrize("sparse", [[], ["--sparse-embedding", "omnireduce"], ["--sparse-embedding", "omniccl"]])
def test_embedding_model_real_data_agrees_with_the_model(tmp_path, sparse):
    """examples/recsys_tiny.json: three tables (two sharing the user ids) and an MLP, every table's gradient
    really reduced, in the buckets or on its own with a sparse algorithm."""
    example = Path(__file__).resolve().parents[2] / "examples" / "recsys_tiny.json"
    args = ["train", "--model", str(example), "--topology", "ring:4", "--bucket-mb", "0.05",
            "--algo", "ring,directreduce", *sparse]
    m, r, model = model_and_mpi(args, tmp_path, 4)
    assert "256 samples (a sample: one user-item pair) per iteration (64 per rank)" in model.stdout
    for a, b in zip(m, r, strict=True):
        assert b["wrong"] == 0 and a["model"] == "recsys-tiny" and a["global_batch"] == 256 and a["seq_len"] == 1
        for key in SPARSE_KEYS if sparse else KEYS:
            assert a[key] == b[key], key
        if sparse:
            assert b["embedding_wrong"] == 0 and a["embedding_bytes"] == (2000 * 33 + 3000 * 32) * 4
            assert 0 < a["embedding_density"] < 1
        else:
            assert a["grad_bytes"] == (2000 * 33 + 3000 * 32 + 64 * 64 + 64 + 64 * 32 + 32 + 33) * 4


@pytest.mark.parametrize("extra,message", [
    (["--model", "ncf", "--seq-len", "8"], "--seq-len: NCF's samples are user-item pairs; drop --seq-len"),
    (["--model", "lstm-gbw", "--pp", "2"], "LSTM-GBW trains with data parallelism only"),
    (["--model", "bad.json"], "bad.json: missing key 'sample'"),
])
def test_embedding_model_bad_input(tmp_path, extra, message):
    (tmp_path / "bad.json").write_text(json.dumps({"name": "b", "batch": 1, "tables": [], "dense": []}))
    out = run_nicemu(["train", "--topology", "ring:4", *extra], tmp_path)
    assert out.returncode == 2, str(out)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nicemu: error: ") and message in lines[0], out.stderr
