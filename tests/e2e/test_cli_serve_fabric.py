"""``serve --fabric shared`` end to end: one instance alone is unchanged; a disaggregated deployment whose
KV transfers cross the instances' rings slows down and re-forms its batches, identically under both
executors."""

import json

import pytest
from conftest import run_nicemu

pytestmark = pytest.mark.e2e

CONFIG = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 8,
          "intermediate_size": 1024, "vocab_size": 4096, "model_type": "llama"}
#: what differs between runs that time the same thing
RUN_KEYS = {"wall_s", "executor", "ranks", "real_data", "real_data_calls", "checked_elements", "wrong"}


def _serve(tmp_path, name, extra, ranks=None):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    args = ["serve", "--model", "config.json", "--algo", "ring,directreduce", "--profile", "400g-gen5",
            "--json", f"{name}.json", *extra]
    run = run_nicemu(args, tmp_path, ranks)
    assert run.returncode == 0, str(run)
    # the text report says what sharing changed, only when the fabric is shared
    assert ("# shared fabric, ring: mean TTFT" in run.stdout) == ("shared" in extra), str(run)
    return {r["algo"]: r for r in json.loads((tmp_path / f"{name}.json").read_text())}


def test_one_instance_on_the_shared_fabric_is_unchanged(tmp_path):
    common = ["--executor", "model", "--tp", "4", "--topology", "ring:4", "--requests", "6", "--rate", "500"]
    alone = _serve(tmp_path, "alone", [*common, "--fabric", "alone"])
    shared = _serve(tmp_path, "shared", [*common, "--fabric", "shared"])
    for algo, a in alone.items():
        s = shared[algo]
        assert s["fabric_replayed_calls"] == 0 and s["fabric_max_delay_ms"] == 0.0
        for key, value in a.items():
            if key not in RUN_KEYS | {"fabric"}:
                assert s[key] == value, key
        assert s["ttft_ms_mean_alone"] == a["ttft_ms_mean"]


def test_kv_transfers_crossing_the_rings_slow_down_alike_on_both_executors(tmp_path):
    # prefill on nodes 0-3, decode on 4-7 of ring:8: every KV shard crosses 4 links, 3 of them the prefill
    # ring's; at 2000 requests/s the next prompts' passes run while earlier KV caches move
    common = ["--tp", "4", "--disaggregated", "1:1", "--topology", "ring:8", "--requests", "8", "--rate", "2000"]
    alone = _serve(tmp_path, "alone", [*common, "--executor", "model"])
    first = _serve(tmp_path, "first", [*common, "--executor", "model", "--fabric", "shared", "--fabric-rounds", "0"])
    model = _serve(tmp_path, "model", [*common, "--executor", "model", "--fabric", "shared"])
    mpi = _serve(tmp_path, "mpi", [*common, "--executor", "mpi", "--fabric", "shared"], ranks=2)
    for algo, m in model.items():
        r = mpi[algo]
        assert r["wrong"] == 0 and r["checked_elements"] > 0
        for key, value in m.items():
            if key not in RUN_KEYS:
                assert r[key] == value, key
        f = first[algo]
        for rec in (f, m):
            assert rec["fabric_slowed_flows"] > 0 and rec["fabric_slowed_passes"] > 0
            assert rec["ttft_ms_mean_alone"] == alone[algo]["ttft_ms_mean"]
            assert rec["kv_transfer_ms_mean"] > alone[algo]["kv_transfer_ms_mean"]
            assert rec["e2e_ms_mean"] >= rec["e2e_ms_mean_alone"]
        # first order: sharing moves times only, the run's totals of calls summed alone stay as they were
        for key in ("p2p_ms", "comm_ms", "compute_ms", "collectives", "layer_wire_bytes", "kv_transfer_bytes"):
            assert f[key] == alone[algo][key], key
        assert f["ttft_ms_mean"] > f["ttft_ms_mean_alone"]
        assert f["fabric_reform_rounds"] == 0 and f["fabric_reform_residual_us"] > 0
        # re-formed: the batches changed (so did the calls they issue), to a fixed point; the first-order
        # metrics it reports are those of the run with --fabric-rounds 0
        assert 1 <= m["fabric_reform_rounds"] <= 4 and m["fabric_reform_converged"], m
        assert m["fabric_reform_residual_us"] <= 1e-3
        # requests queue for other batches than in first order (comm_ms may stay: directreduce's passes cost
        # the same whichever requests they hold)
        assert m["queue_ms_mean"] != f["queue_ms_mean"] and m["fabric_replayed_calls"] != f["fabric_replayed_calls"]
        assert m["kv_transfer_bytes"] == f["kv_transfer_bytes"]
        for key in ("ttft_ms_mean", "tpot_ms_mean", "e2e_ms_mean"):
            assert m[f"{key}_first_order"] == f[key], key


@pytest.mark.parametrize("extra, needle", [
    (["--ranks-per-node", "2", "--topology", "ring:2"], "--fabric shared runs with one rank per node"),
    (["--trace", "t.json"], "--trace draws the idle-fabric timeline"),
    (["--fabric", "both"], "invalid choice"),
    (["--fabric-rounds", "-1"], "--fabric-rounds must be >= 0"),
    (["--fabric", "alone", "--fabric-rounds", "2"], "--fabric-rounds re-forms batches on the shared fabric"),
])
def test_bad_fabric_requests_fail_in_one_line(tmp_path, extra, needle):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    args = ["serve", "--model", "config.json", "--tp", "4", "--requests", "2", "--executor", "model",
            "--fabric", "shared", *extra]
    run = run_nicemu(args, tmp_path)
    assert run.returncode != 0
    assert needle in run.stderr, str(run)
    assert "Traceback" not in run.stderr


def test_sparse_embedding_calls_on_the_shared_fabric_agree_on_both_executors(tmp_path):
    # OmNICCL's embedding AllReduces become the spot protocol's messages on the fabric (docs/model.md §21.7):
    # the records of both executors are identical and the real data is checked
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    common = ["serve", "--model", "config.json", "--algo", "omniccl", "--profile", "400g-gen5", "--tp", "4",
              "--disaggregated", "1:1", "--topology", "ring:8", "--requests", "6", "--rate", "2000",
              "--fabric", "shared"]
    out = {}
    for executor, ranks in (("model", None), ("mpi", 2)):
        run = run_nicemu([*common, "--executor", executor, "--json", f"{executor}.json"], tmp_path, ranks)
        assert run.returncode == 0, str(run)
        (out[executor],) = json.loads((tmp_path / f"{executor}.json").read_text())
    m, r = out["model"], out["mpi"]
    assert r["wrong"] == 0 and r["checked_elements"] > 0
    for key, value in m.items():
        if key not in RUN_KEYS:
            assert r[key] == value, key
    assert m["fabric_slowed_passes"] > 0 and m["ttft_ms_mean"] >= m["ttft_ms_mean_alone"]
