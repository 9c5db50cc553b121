"""Embedding models in training (workloads/embedding_models.py) and their tables' block masks
(workloads/sparse_gradients.py): masks equal to the data's zero blocks, shared ids, the sampled-softmax
rows, DDP's buckets and the presets' shapes from their training scripts."""

import argparse
import json
import re

import numpy as np
import pytest

from nicemu import train
from nicemu.errors import UsageError, WorkloadError
from nicemu.workloads import embedding_models as em
from nicemu.workloads import sparse_gradients as sg
from nicemu.workloads.accelerators import load_accelerator
from nicemu.workloads.compute import gemm, roofline
from nicemu.workloads.sparse_gradients import Table

TINY = em.EmbeddingModel(
    "tiny", (Table("user", 300, 24, zipf=0.0, key="u"), Table("item", 500, 40, zipf=1.2),
             Table("user2", 300, 8, zipf=0.0, key="u"), Table("out", 200, 3, lookups=5, sampled=20, output=True)),
    (em.Dense("mlp.0", 64, 32), em.Dense("mlp.1", 32, 16, steps=3), em.Dense("head", 3, 5, rows=5, weights=False)),
    batch=16, sample="pair")


def _blocks_of_data(g: np.ndarray, block: int) -> np.ndarray:
    pad = np.zeros(-(-len(g) // block) * block, dtype=g.dtype)
    pad[:len(g)] = g
    return (pad.reshape(-1, block) != 0).any(axis=1)


@pytest.mark.parametrize("block", [1, 7, 64, 256, 4096])
def test_tables_mask_is_the_zero_blocks_of_the_data(block):
    for rank in range(3):
        rows = sg.table_rows(rank, TINY.batch, TINY.tables)
        g = sg.tables_gradient(rank, rows, TINY.tables)
        assert len(g) == TINY.embedding_elems
        assert sg.tables_mask(rows, TINY.tables, block).tolist() == _blocks_of_data(g, block).tolist()


def test_one_table_is_the_single_embedding_path():
    rows = sg.touched_rows(sg.token_ids(2, 50, 97, 1.0), 97)
    tab = (Table("t", 97, 33),)
    assert sg.table_rows(2, 50, tab) [0].tolist() == rows.tolist()
    assert sg.tables_mask([rows], tab, 64).tolist() == sg.block_mask(rows, 33, 64).tolist()
    masks, dens = sg.embedding_masks(3, 50, 97, 33, 64)
    m2, d2 = sg.tables_masks(3, 50, tab, 64)
    assert np.array_equal(masks, m2) and np.array_equal(dens, d2)


def test_tables_with_one_key_share_their_rows_and_others_do_not():
    user, item, user2, out = sg.table_rows(0, 40, TINY.tables)
    assert np.array_equal(user, user2)
    assert 0 < user.sum() <= 40 and 0 < item.sum() <= 40
    # an exponent for every table replaces each one's own
    u0 = sg.table_rows(0, 40, TINY.tables, exponent=3.0)
    assert u0[0].sum() < user.sum() and u0[0][0]
    # the ranks draw their own ids
    assert not np.array_equal(user, sg.table_rows(1, 40, TINY.tables)[0])


def test_sampled_rows_are_distinct_the_same_on_every_rank_and_log_uniform():
    ids = sg.log_uniform_rows(8192, 793_471)
    assert len(ids) == 8192 == len(np.unique(ids)) and ids.max() < 793_471
    assert np.array_equal(ids, sg.log_uniform_rows(8192, 793_471))
    assert set(range(50)) <= set(ids.tolist())       # P(k) ~ ln((k+2)/(k+1)) / ln V: the head is always drawn
    # the draw round(exp(u ln V)) - 1 gives k with P = ln((k + 1.5) / (k + 0.5)) / ln V (k = 0: ln 1.5 / ln V);
    # after T draws k is in with 1 - (1 - P)^T: T solves sum = 8192, then the head's share is a closed form
    v = 793_471
    k = np.arange(v, dtype=np.float64)
    prob = (np.log(np.minimum(k + 1.5, v)) - np.log(np.maximum(k + 0.5, 1.0))) / np.log(v)
    lo, hi = 8192.0, 1e7
    for _ in range(100):
        tries = (lo + hi) / 2
        lo, hi = (tries, hi) if (-np.expm1(tries * np.log1p(-prob))).sum() < 8192 else (lo, tries)
    head = (-np.expm1(tries * np.log1p(-prob[:1000]))).sum()
    assert abs((ids < 1000).sum() - head) < 0.03 * head
    out = [sg.table_rows(r, 1, TINY.tables)[3] for r in range(4)]
    common = np.logical_and.reduce(out)
    assert common.sum() >= 20                       # the 20 sampled rows, on every rank
    assert sg.log_uniform_rows(200, 200).tolist() == list(range(200))


def test_uniform_rows_touch_the_closed_form_fraction():
    # n uniform draws over R rows touch R (1 - (1 - 1/R)^n) rows in expectation
    n, rows = 2000, 1000
    tab = (Table("t", rows, 4, zipf=0.0),)
    _, dens = sg.tables_masks(40, n, tab, 256)
    want = 1 - (1 - 1 / rows) ** n
    assert abs(dens.mean() - want) < 0.01


def test_plan_buckets_and_ready_times():
    acc = load_accelerator("H100-SXM")
    p = em.plan(TINY, acc, 16, 4, bucket_bytes=1 << 20)
    ops = [d.steps * gemm(d.name, 16 * d.rows, d.inputs, d.outputs, 2, acc).time_us for d in TINY.dense]
    looked = 16 * (24 + 40 + 8 + 5 * 3) + 20 * 3
    forward = roofline("lookups", 0, 2 * 2 * looked, acc).time_us + sum(ops)
    assert p.forward_us == pytest.approx(forward) and p.backward_us == pytest.approx(2 * forward)
    assert p.grad_elems == TINY.params() == TINY.embedding_elems + 64 * 32 + 32 + 32 * 16 + 16
    # one bucket under the 1 MiB first cap holding every tensor: ready with the input tables, at the end
    assert len(p.buckets) == 1 and p.buckets[0].ready_us == pytest.approx(p.compute_us)
    small = em.plan(TINY, acc, 16, 4, bucket_bytes=256, first_bucket_bytes=256)
    names = [b.tensors for b in small.buckets]
    assert names[0] == ("out",)                      # the output table's gradient comes first
    assert small.buckets[0].ready_us == pytest.approx(forward + 2 * ops[2])
    assert ("mlp.1",) in names and ("user",) in names
    ready = {b.tensors: b.ready_us for b in small.buckets}
    assert ready[("mlp.1",)] == pytest.approx(forward + 2 * (ops[1] + ops[2]))
    assert ready[("user",)] == pytest.approx(p.compute_us)
    kept = em.plan(TINY, acc, 16, 4, exclude=tuple(t.name for t in TINY.tables))
    assert kept.grad_elems == TINY.params() - TINY.embedding_elems


def test_presets_take_the_training_scripts_shapes():
    ncf = em.find("ncf")
    # NeuMF: GMF and MLP embeddings of 498,975 users and 427,888 items, 64 and 128 wide; MLP 256-256-128-64
    assert ncf.params() == (498_975 + 427_888) * (64 + 128) + (256 * 256 + 256) + (256 * 128 + 128) \
        + (128 * 64 + 64) + (128 + 1) == 178_064_769
    lstm = em.find("lstm-gbw")
    assert lstm.params() == 793_471 * (256 + 256 + 1) + (256 + 2048 + 2) * 8192 + 2048 * 256 + 256
    assert lstm.batch * lstm.seq_len == 10_240
    deep = em.find("DeepLight")
    assert len(deep.tables) == 39 and sum(t.rows for t in deep.tables) == 60_747_983
    assert deep.params() == 60_747_983 * 10 + 39 + 10 * 39 + 39 * 39 + (390 * 400 + 400) + 2 * (400 * 400 + 400) + 400
    assert em.find("llama3-8b") is None and em.find("nothing.json") is None


def test_json_models_and_their_one_line_errors(tmp_path):
    spec = {"name": "mine", "batch": 8, "sample": "pair",
            "tables": [{"name": "u", "rows": 10, "dim": 4, "zipf": 0}],
            "dense": [{"name": "fc", "inputs": 4, "outputs": 1}]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    m = em.find(str(path))
    assert m.name == "mine" and m.tables[0].zipf == 0.0 and m.params() == 40 + 5
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    assert em.find(str(tmp_path / "config.json")) is None        # a transformer's config
    for change, message in [
        ({"batch": 0}, "batch >= 1"),
        ({"batch": "8"}, "batch must be of type int"),
        ({"colour": 1}, "unknown key(s) colour"),
        ({"tables": [{"name": "u", "rows": 0, "dim": 4}]}, "table u: rows must be >= 1"),
        ({"tables": [{"name": "u", "dim": 4}]}, "missing 1 required positional argument: 'rows'"),
        ({"dense": [{"name": "fc", "inputs": 4, "outputs": 0}]}, "dense fc: inputs, outputs"),
        ({"dense": "fc"}, "'tables' and 'dense' must be lists"),
    ]:
        path.write_text(json.dumps({**spec, **change}))
        with pytest.raises(WorkloadError, match=re.escape(message)):
            em.find(str(path))
    path.write_text(json.dumps({k: v for k, v in spec.items() if k != "sample"}))
    with pytest.raises(WorkloadError, match="missing key 'sample'"):
        em.find(str(path))


def _args(**kw):
    base = dict(model="ncf", seq_len=None, global_batch=None, tp=1, pp=1, micro_batches=None)
    return argparse.Namespace(**{**base, **kw})


def test_train_defaults_for_embedding_models_and_transformers():
    a = _args()
    assert train.defaults(a).name == "NCF" and a.seq_len == 1 and a.global_batch is None
    t = _args(model="llama3-8b")
    assert train.defaults(t) is None and (t.seq_len, t.global_batch) == (2048, 64)
    with pytest.raises(UsageError, match="drop --seq-len"):
        train.defaults(_args(seq_len=32))
    with pytest.raises(UsageError, match="data parallelism only"):
        train.defaults(_args(tp=2))


@pytest.mark.parametrize("exponent", [0.0, 0.8, 1.3])
def test_fit_zipf_recovers_the_exponent_of_zipf_counts(exponent):
    ranks = np.arange(1, 50_001, dtype=np.float64)
    counts = np.round(1e9 * ranks ** -exponent / np.sum(ranks ** -exponent))
    assert sg.fit_zipf(counts, 2048) == pytest.approx(exponent, abs=2e-3)
    with pytest.raises(WorkloadError, match="non-negative counts"):
        sg.fit_zipf(np.array([1.0, -1.0]), 10)
