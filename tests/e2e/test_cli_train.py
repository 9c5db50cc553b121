"""``nicemu train`` end to end: every gradient bucket really reduced under mpiexec, the same iteration times
as the model executor."""

import json

import pytest
from conftest import run_nicemu

pytestmark = pytest.mark.e2e

CONFIG = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
          "vocab_size": 1024, "model_type": "llama"}
KEYS = ("iteration_us", "compute_us", "exposed_us", "iteration_no_sharing_us", "iteration_one_stream_us",
        "buckets", "chosen", "grad_bytes", "speedup_vs_ring", "slowest_bucket_slowdown")


def test_train_real_data_agrees_with_the_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    args = ["train", "--model", "config.json", "--topology", "ring:4", "--global-batch", "4", "--seq-len", "32",
            "--bucket-mb", "0.25", "--algo", "ring,host-best,directreduce"]
    model = run_nicemu([*args, "--json", "model.json"], tmp_path)
    assert model.returncode == 0, str(model)
    real = run_nicemu([*args, "--executor", "mpi", "--json", "mpi.json"], tmp_path, 4)
    assert real.returncode == 0, str(real)
    assert "out of bounds values : 0 OK" in real.stdout
    m = json.loads((tmp_path / "model.json").read_text())
    r = json.loads((tmp_path / "mpi.json").read_text())
    for a, b in zip(m, r, strict=True):
        assert b["wrong"] == 0 and a["wrong"] is None
        for key in KEYS:
            assert a[key] == b[key], key
        assert a["buckets"] > 3 and a["iteration_us"] >= a["compute_us"]
