"""Data-parallel training iterations (workloads/training.py, nicemu/train.py): buckets as PyTorch DDP forms
them, compute by the roofline, and iteration times checked where they have closed forms."""

from __future__ import annotations

import argparse

import pytest

from nicemu.collectives.model.executor import run_model
from nicemu.nic.profile import load_profile
from nicemu.topologies import ring
from nicemu.train import _bucket_calls, iteration
from nicemu.workloads.accelerators import load_accelerator
from nicemu.workloads.models import find_preset, model_from_config
from nicemu.workloads.training import BACKWARD_FACTOR, FIRST_BUCKET_BYTES, plan, tensors

TINY = model_from_config({"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                          "intermediate_size": 256, "vocab_size": 512, "model_type": "llama"}, "tiny")


@pytest.mark.parametrize("name", ["llama3-8b", "opt-13b", "mixtral-8x7b"])
def test_tensors_add_up_to_the_model(name):
    m = find_preset(name)
    norms = (2 * m.layers + 1) * m.hidden          # not in Model.params: two per layer and a final one
    assert sum(t.elems for t in tensors(m)) == m.params() + norms


@pytest.mark.parametrize("cap_mb", [1, 25, 100])
def test_buckets_follow_ddp(cap_mb):
    m, acc = find_preset("llama3-8b"), load_accelerator("H100-SXM")
    p = plan(m, acc, 2, 512, 4, cap_mb << 20)
    sizes = {t.name: t.elems * 4 for t in tensors(m)}
    names = [n for b in p.buckets for n in b.tensors]
    assert sorted(names) == sorted(sizes) and len(names) == len(set(names))
    assert names == [t.name for t in reversed(tensors(m))]       # reverse registration order
    for b in p.buckets:
        cap = FIRST_BUCKET_BYTES if b.index == 0 else cap_mb << 20
        nbytes = sum(sizes[n] for n in b.tensors)
        assert nbytes == b.elems * 4
        assert nbytes <= cap or len(b.tensors) == 1 or nbytes - sizes[b.tensors[-1]] < cap
    ready = [b.ready_us for b in p.buckets]
    assert ready == sorted(ready) and ready[-1] == p.forward_us + p.backward_us
    assert p.backward_us == BACKWARD_FACTOR * p.forward_us


def test_one_bucket_waits_for_the_whole_backward():
    """A bucket as large as the model is ready when backward ends; the iteration is compute plus its
    AllReduce alone, whichever way the buckets are counted."""
    acc, topo, prof = load_accelerator("H100-SXM"), ring(4), load_profile("400g-gen5")
    p = plan(TINY, acc, 1, 64, 4, 1 << 40, 1 << 40)
    assert len(p.buckets) == 1
    r = iteration("directreduce", p, topo, prof, 4)
    calls, _ = _bucket_calls("directreduce", p.buckets, topo, prof, 4)
    alone = run_model(calls[0].schedule, prof, 4).emulated_us
    assert r["iteration_us"] == p.compute_us + alone
    assert r["iteration_no_sharing_us"] == r["iteration_one_stream_us"] == r["iteration_us"]
    assert r["exposed_us"] == pytest.approx(alone)


def test_overlapping_buckets_cost_more_than_free_links_and_less_than_one_stream():
    acc, topo, prof = load_accelerator("H100-SXM"), ring(4), load_profile("400g-gen5")
    p = plan(TINY, acc, 1, 16, 4, 64 << 10, 16 << 10)
    assert len(p.buckets) > 3
    r = iteration("ring", p, topo, prof, 4)
    assert r["iteration_no_sharing_us"] <= r["iteration_us"] <= r["iteration_one_stream_us"]
    assert r["iteration_us"] >= p.compute_us


def test_bad_train_options_fail_in_one_line():
    from nicemu.errors import UsageError
    from nicemu.train import _check

    class Comm:
        size, rank = 1, 0
    base = dict(tp=1, pp=1, algo="ring", grad_dtype="float32", topology=None, dp=4, global_batch=8, seq_len=16,
                bucket_mb=25.0, executor="model", model="llama3-8b", accelerator="H100-SXM",
                profile="400g-gen5", overrides=[])
    for change, words in ((dict(algo="omniccl"), "dense"), (dict(global_batch=6), "6"),
                          (dict(grad_dtype="int32"), "floating"), (dict(dp=1), "at least 2"),
                          (dict(topology="ring:8"), "--dp 4"), (dict(model="gpt-9"), "gpt-9")):
        with pytest.raises(UsageError) as info:
            _check(argparse.Namespace(**{**base, **change}), Comm())
        assert words in str(info.value) and "\n" not in str(info.value)
