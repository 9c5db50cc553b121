"""``nicemu train --tp --pp`` on one shared fabric (workloads/train_fabric.py): the chain layout keeps the
alone accounting where nothing contends, exactly; sharing only ever adds; the overlap search agrees with
replaying every call; TP AllReduces sit where the buckets' ready times put them."""

from __future__ import annotations

import argparse
import json

import pytest

from nicemu.train_parallel import check, iteration

TINY = {"hidden_size": 64, "num_hidden_layers": 8, "num_attention_heads": 4, "intermediate_size": 256,
        "vocab_size": 512, "model_type": "llama"}
ALONE = ("iteration_alone_us", "pipeline_alone_us")


class Comm:
    size, rank = 1, 0


def setup(tmp_path, **change):
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    base = dict(tp=2, pp=2, dp=None, micro_batches=None, algo="ring", grad_dtype="float32", topology="ring:8",
                global_batch=8, seq_len=32, bucket_mb=0.25, executor="model", model=str(cfg),
                accelerator="H100-SXM", profile="400g-gen5", overrides=[], json=None)
    return check(argparse.Namespace(**{**base, **change}), Comm())[1]


def _parts(rec):
    return (rec["compute_us"] + rec["bubble_us"] + rec["tp_exposed_us"] + rec["pp_exposed_us"]
            + rec["fabric_exposed_us"] + rec["dp_exposed_us"])


@pytest.mark.parametrize("replay_all", [False, True])
@pytest.mark.parametrize("algo", ["ring", "directreduce", "recursive-doubling"])
def test_nothing_shared_keeps_the_alone_accounting_exactly(tmp_path, algo, replay_all):
    """TP 2 x PP 2 on torus:2x2 under ``ideal``: TP groups on dimension 1, transfers on dimension 0, PCIe and
    NIC engines without limit. Every call as flows (``replay_all``) or only the overlapping ones: nothing is
    slowed, and the chain layout gives the alone accounting to the last bit."""
    su = setup(tmp_path, topology="torus:2x2", dp=1, profile="ideal", algo=algo, global_batch=4)
    rec, _ = iteration(algo, su, replay_all)
    assert rec["fabric_flows"] > 0 and rec["fabric_slowed_flows"] == 0
    assert rec["iteration_us"] == rec["iteration_alone_us"] and rec["pipeline_us"] == rec["pipeline_alone_us"]
    assert rec["fabric_exposed_us"] == 0.0
    if replay_all:
        assert rec["fabric_replayed_calls"] == rec["fabric_calls"] > 2 * su.micro_batches


@pytest.mark.parametrize("replay_all", [False, True])
def test_tp_only_on_disjoint_groups_changes_nothing_under_ideal(tmp_path, replay_all):
    """TP 2 x DP 4 on torus:4x2 (P = 1): the TP groups use dimension 1's links, the DP buckets dimension 0's.
    The TP AllReduces keep their times exactly; the buckets share with each other as before (the alone
    accounting replays them with ``run_concurrent``, the chains on their own replay: equal to 1e-12)."""
    su = setup(tmp_path, topology="torus:4x2", pp=1, profile="ideal", global_batch=8)
    assert su.layout.dp == 4
    rec, _ = iteration("ring", su, replay_all)
    assert rec["buckets"] > 1 and rec["fabric_flows"] > 0
    assert rec["fabric_exposed_us"] == 0.0 and rec["pipeline_us"] == rec["pipeline_alone_us"]
    assert rec["iteration_us"] == pytest.approx(rec["iteration_alone_us"], rel=1e-12)


@pytest.mark.parametrize("algo", ["ring", "directreduce", "recursive-doubling"])
@pytest.mark.parametrize("profile", ["400g-gen5", "directreduce-paper"])
def test_a_single_chain_keeps_its_alone_times(tmp_path, algo, profile):
    """One TP group, one stage, one replica: one chain, every call replayed as flows, against itself only (a
    call's own overlaps, as recursive doubling's, are subtracted): the alone iteration exactly."""
    su = setup(tmp_path, topology="ring:2", pp=1, profile=profile, algo=algo, global_batch=2)
    rec, _ = iteration(algo, su, replay_all=True)
    assert rec["fabric_replayed_calls"] == rec["fabric_calls"] > 0
    assert rec["iteration_us"] == rec["iteration_alone_us"]


@pytest.mark.parametrize("algo", ["ring", "directreduce"])
def test_tp_pipeline_and_buckets_on_common_links_take_longer(tmp_path, algo):
    """TP 2 x DP 2 x PP 2 on ring:8: a stage's activations cross the next TP group's links and every DP group
    crosses two TP groups' links; sharing them makes the iteration strictly longer than the alone accounting
    (with sequences of 512 tokens: at 32 the transfers are short enough for the slack to absorb them)."""
    su = setup(tmp_path, algo=algo, seq_len=512)
    rec, _ = iteration(algo, su)
    assert rec["fabric_slowed_flows"] > 0 and rec["fabric_exposed_us"] > 0
    assert rec["iteration_us"] > rec["iteration_alone_us"]
    assert _parts(rec) == pytest.approx(rec["iteration_us"], rel=1e-12)
    assert rec["pipeline_alone_us"] + rec["fabric_exposed_us"] == pytest.approx(rec["pipeline_us"], rel=1e-12)


@pytest.mark.parametrize("change", [dict(), dict(pp=4, dp=1), dict(tp=1, pp=2), dict(tp=4, pp=2, dp=1),
                                    dict(topology="switch:8"), dict(topology="torus:2x4", pp=2)])
@pytest.mark.parametrize("algo", ["ring", "host-best", "directreduce"])
def test_sharing_never_shortens_and_the_search_agrees_with_replaying_everything(tmp_path, change, algo):
    """The pipeline's end never moves earlier. Nor does the iteration, up to the 1e-12 by which the buckets'
    sharing among themselves differs between the two replays that time it (``run_concurrent`` for the
    alone accounting, the chains here)."""
    su = setup(tmp_path, algo=algo, **change)
    rec, _ = iteration(algo, su)
    every, _ = iteration(algo, su, replay_all=True)
    for r in (rec, every):
        assert r["pipeline_us"] >= r["pipeline_alone_us"] and r["fabric_exposed_us"] >= 0
        assert r["iteration_us"] >= r["iteration_alone_us"] * (1 - 1e-12)
        assert r["slowest_bucket_slowdown"] >= 1.0
        assert _parts(r) == pytest.approx(r["iteration_us"], rel=1e-12)
    assert every["fabric_replayed_calls"] == every["fabric_calls"] >= rec["fabric_replayed_calls"]
    assert rec["iteration_us"] == pytest.approx(every["iteration_us"], rel=1e-9)
    assert {k: rec[k] for k in ALONE} == {k: every[k] for k in ALONE}


def test_tp_allreduces_sit_in_issue_order(tmp_path):
    """Forward: the embedding's after the lookup, per layer after the attention block and after the MLP;
    backward the LM head's first, then per layer the MLP's and the attention's. A bucket is ready at the
    end of a layer's second AllReduce, and each operation's last call leaves its trailing compute."""
    su = setup(tmp_path, pp=2, micro_batches=2)
    a = 7.0
    for w in su.work:
        attn, mlp = w.layer_attention_us, w.layer_forward_us - w.layer_attention_us
        assert 0 < attn < w.layer_forward_us
        fwd, bwd = w.tp_offsets("F", a), w.tp_offsets("B", a)
        assert (len(fwd), len(bwd)) == (w.tp_forward, w.tp_backward)
        assert fwd[-1] + a == pytest.approx(w.forward_us(a) - w.lm_head_us, rel=1e-12)
        assert bwd[-1] + a == pytest.approx(w.backward_us(a) - 2 * w.embedding_us, rel=1e-12)
        head = [2 * w.lm_head_us] if w.last else []
        gaps = head + [2 * mlp, 2 * attn] * len(w.layers)
        assert [y - x - a for x, y in zip(bwd, bwd[1:])] == pytest.approx(gaps[1:], rel=1e-12)
        ends = {round(o + a, 6) for o in bwd}
        for b in w.buckets(a, 4):
            assert round(b.ready_us, 6) in ends or b.ready_us == pytest.approx(w.backward_us(a), rel=1e-12)
    assert su.work[0].tp_offsets("F", a)[0] == su.work[0].embedding_us
    assert setup(tmp_path, tp=1, dp=4).work[0].tp_offsets("F", a) == []


def test_a_replay_too_large_is_refused_in_one_line(tmp_path, monkeypatch):
    import nicemu.workloads.train_fabric as train_fabric
    from nicemu.errors import CollectiveError
    monkeypatch.setattr(train_fabric, "MAX_FLOWS", 10)
    su = setup(tmp_path, seq_len=512)
    with pytest.raises(CollectiveError, match="--micro-batches") as info:
        iteration("ring", su)
    assert "\n" not in str(info.value)
