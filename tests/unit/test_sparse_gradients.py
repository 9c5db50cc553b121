"""Sparse embedding gradients in training (workloads/sparse_gradients.py, nicemu/train_sparse.py): the block
masks follow from the rows a rank's tokens touch, and the sparse call is the sparse model's time alone."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

from nicemu.collectives.model.sparse_timing import model_sparse
from nicemu.collectives.registry import sparse_config
from nicemu.errors import UsageError
from nicemu.nic.profile import load_profile
from nicemu.topologies import ring
from nicemu.train import iteration
from nicemu.train_sparse import check, embedding_call
from nicemu.workloads import sparse_gradients as sg
from nicemu.workloads.accelerators import load_accelerator
from nicemu.workloads.models import find_preset, model_from_config
from nicemu.workloads.training import EMBEDDING, plan, tensors

TINY = model_from_config({"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                          "intermediate_size": 256, "vocab_size": 512, "model_type": "llama"}, "tiny")


def _blocks_of_data(g: np.ndarray, block_size: int) -> np.ndarray:
    """Non-zero blocks read from the data itself (an independent reference for block_mask)."""
    pad = np.zeros(-len(g) % block_size, dtype=g.dtype)
    return (np.concatenate([g, pad]).reshape(-1, block_size) != 0).any(axis=1)


def test_rows_and_blocks_exact_on_a_small_vocabulary():
    rows = sg.touched_rows(np.array([0, 3, 3, 9]), 10)
    assert np.flatnonzero(rows).tolist() == [0, 3, 9]
    # rows of 100 elements in blocks of 256: [rows 0-2] [2-5] [5-7] [7-9]; rows 0, 3, 9 touch blocks 0, 1, 3
    mask = sg.block_mask(rows, 100, 256)
    assert mask.tolist() == [True, True, False, True]
    assert mask.mean() == 0.75
    assert mask.tolist() == _blocks_of_data(sg.gradient(0, rows, 100), 256).tolist()
    # rows wider than a block: each row is whole blocks, so block density equals row density
    wide = sg.block_mask(rows, 512, 256)
    assert wide.sum() == 6 and wide.mean() == rows.mean()


@pytest.mark.parametrize("dim,block", [(1, 256), (7, 3), (64, 256), (300, 256), (256, 256)])
def test_block_mask_matches_the_data(dim, block):
    for rank in range(3):
        rows = sg.touched_rows(sg.token_ids(rank, 40, 97), 97)
        g = sg.gradient(rank, rows, dim)
        assert np.all(g.reshape(97, dim)[rows] != 0) and np.all(g.reshape(97, dim)[~rows] == 0)
        assert sg.block_mask(rows, dim, block).tolist() == _blocks_of_data(g, block).tolist()


def test_zipf_tokens_touch_the_expected_number_of_rows():
    vocab, tokens, s = 5000, 2000, 1.0
    p = np.arange(1, vocab + 1, dtype=np.float64) ** -s
    p /= p.sum()
    expect = np.sum(1 - (1 - p) ** tokens)            # expected distinct rows of `tokens` draws
    std = np.sqrt(np.sum((1 - p) ** tokens * (1 - (1 - p) ** tokens)))   # an upper bound (draws anticorrelate)
    for rank in range(4):
        seen = sg.touched_rows(sg.token_ids(rank, tokens, vocab, s), vocab).sum()
        assert abs(seen - expect) < 4 * std
    assert not np.array_equal(sg.token_ids(0, 100, vocab), sg.token_ids(1, 100, vocab))
    assert np.array_equal(sg.token_ids(2, 100, vocab), sg.token_ids(2, 100, vocab))
    # uniform (s = 0): every row is equally likely, so the most frequent row is not row 0 by design
    ids = sg.token_ids(0, 200_000, 10, 0.0)
    assert np.all(np.abs(np.bincount(ids, minlength=10) / 200_000 - 0.1) < 0.005)


def test_embedding_masks_are_per_rank():
    masks, rows = sg.embedding_masks(4, 64, 512, 64, 256)
    assert masks.shape == (4, 512 * 64 // 256)
    for r in range(4):
        want = sg.block_mask(sg.touched_rows(sg.token_ids(r, 64, 512), 512), 64, 256)
        assert masks[r].tolist() == want.tolist()
        assert rows[r] == sg.touched_rows(sg.token_ids(r, 64, 512), 512).mean()


def test_the_embedding_leaves_the_buckets():
    acc = load_accelerator("H100-SXM")
    full = plan(TINY, acc, 1, 64, 4, 64 << 10)
    sparse = plan(TINY, acc, 1, 64, 4, 64 << 10, exclude=(EMBEDDING,))
    names = [n for b in sparse.buckets for n in b.tensors]
    assert EMBEDDING not in names
    assert sparse.grad_elems == full.grad_elems - TINY.vocab * TINY.hidden
    assert names == [t.name for t in reversed(tensors(TINY)) if t.name != EMBEDDING]
    # no bucket waits for the end of backward: the last one is ready when layer 0's backward is done
    assert sparse.buckets[-1].ready_us < sparse.compute_us
    assert full.buckets[-1].ready_us == full.compute_us


@pytest.mark.parametrize("algo", ["omniccl", "omniccl-cpu", "omnireduce"])
def test_sparse_call_is_the_sparse_model_alone_and_shares_the_fabric(algo):
    topo, profile = ring(4), load_profile("400g-gen5")
    tp = plan(TINY, load_accelerator("H100-SXM"), 1, 64, 4, 64 << 10, exclude=(EMBEDDING,))
    emb = embedding_call(algo, TINY, topo, profile, 4, tp.tokens_per_rank, tp.compute_us, 256, 1.0)
    masks, _ = sg.embedding_masks(4, tp.tokens_per_rank, TINY.vocab, TINY.hidden, 256)
    alone = model_sparse(sparse_config(algo, 4, block_size=256), masks, profile, 4).emulated_us
    assert emb.alone_us == alone > 0 and emb.start_us == tp.compute_us
    dense = iteration("ring", tp, topo, profile, 4)
    rec = iteration("ring", tp, topo, profile, 4, emb)
    assert rec["embedding_alone_us"] == alone and rec["embedding_us"] >= alone
    # the accounting with the call alone (as before it shared the fabric)
    assert rec["iteration_embedding_alone_us"] == max(dense["iteration_us"], tp.compute_us + alone)
    assert rec["iteration_us"] >= tp.compute_us + rec["embedding_us"]
    assert rec["iteration_us"] >= rec["iteration_no_sharing_us"] >= tp.compute_us + alone
    assert rec["exposed_us"] == rec["iteration_us"] - tp.compute_us
    assert rec["iteration_one_stream_us"] == dense["iteration_one_stream_us"] + alone
    assert rec["embedding_density"] == masks.mean() and 0 < masks.mean() < 1
    # late buckets are still reducing when backward ends: the call shares their links and is slowed
    assert rec["embedding_contends"] and rec["embedding_us"] > alone
    # here the call only adds load; in general max-min sharing is not monotone (docs/model.md §22.2)
    assert rec["iteration_us"] >= rec["iteration_embedding_alone_us"]


@pytest.mark.parametrize("algo,block,zipf,model,message", [
    ("omnifoo", 256, 1.0, TINY, "omnifoo: not an algorithm"),
    ("directreduce", 256, 1.0, TINY, "directreduce: a dense algorithm"),
    ("omniccl", 0, 1.0, TINY, "--block-size 0 is outside"),
    ("omniccl", 256, -1.0, TINY, "--token-zipf -1.0 is outside"),
    ("omniccl", 256, float("nan"), TINY, "--token-zipf nan is outside"),
    ("omniccl", 256, 1.0, find_preset("opt-13b"), "ties its embedding to the LM head"),
])
def test_check_refuses_with_one_line(algo, block, zipf, model, message):
    args = argparse.Namespace(sparse_embedding=algo, block_size=block, token_zipf=zipf)
    with pytest.raises(UsageError, match=re.escape(message)):
        check(args, model)


def test_check_off_and_on():
    assert check(argparse.Namespace(sparse_embedding=None, block_size=256, token_zipf=1.0), TINY) is None
    assert check(argparse.Namespace(sparse_embedding="omnireduce", block_size=256, token_zipf=0.0), TINY) == "omnireduce"
